"""Root Typer app: global options, command registration, and the one place errors become lines.

Nothing heavy is imported at module level (no torch, transformers or composer), so ``--help`` and
shell completion answer instantly; each command imports its service inside its body.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

app = typer.Typer(
    name="llamactl",
    help="From raw text to a trained, evaluated, exported Llama-family model on your own GPUs.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# A command is listed here only once it works end to end (see CONTRIBUTING in docs/architecture.md).
COMMANDS = ["prepare_data", "train", "eval", "generate", "convert", "models", "doctor"]

_state = {"debug": False}


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
) -> None:
    """llamactl: prepare data, train (pretrain, full fine-tune, LoRA), evaluate, generate, convert."""
    _state["debug"] = debug


for _name in COMMANDS:
    importlib.import_module(f"llamactl.cli.commands.{_name}").register(app)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app and turn failures into one red line and an exit code."""
    import click

    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("LLAMACTL_DEBUG") == "1"
    try:
        app(args=args, prog_name="llamactl", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.ClickException as e:
        if debug:
            raise
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as e:  # noqa: BLE001 - the one place every failure is turned into a line
        if debug:
            raise
        from llamactl.errors import LlamactlError

        if isinstance(e, LlamactlError):
            _fail(str(e), e.exit_code)
        _fail(f"unexpected error: {type(e).__name__}: {e} (run with --debug for the traceback)", 1)


def _fail(message: str, code: int) -> None:
    from llamactl.cli.render import error

    error(message)
    sys.exit(code)
