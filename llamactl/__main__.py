from llamactl.cli import main

main()
