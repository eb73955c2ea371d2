"""Running the CLI in-process in tests: exit code, stdout and stderr."""

from __future__ import annotations

from llamactl.cli import main


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err
