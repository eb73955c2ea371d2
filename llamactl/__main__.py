"""``python -m llamactl``: the same as the ``llamactl`` console script."""

from llamactl.cli import main

main()
