"""The ``llamactl`` command line. ``main()`` is the console-script entry point."""

from llamactl.cli.app import app, main

__all__ = ["app", "main"]
