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


def _click_exceptions():
    """Click's exception module(s): typer >= 0.24 vendors its own click as ``typer._click``."""
    mods = []
    try:
        import typer._click.exceptions as vendored

        mods.append(vendored)
    except ImportError:
        pass
    import click.exceptions as plain

    mods.append(plain)
    return mods


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app and turn failures into one red line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("LLAMACTL_DEBUG") == "1"
    mods = _click_exceptions()

    def types_named(name: str, *extra: type) -> tuple[type, ...]:
        return tuple({*extra, *(getattr(m, name) for m in mods if hasattr(m, name))})

    exit_types = types_named("Exit", typer.Exit)
    abort_types = types_named("Abort", typer.Abort)
    no_args_types = types_named("NoArgsIsHelpError")
    usage_types = types_named("ClickException")
    try:
        app(args=args, prog_name="llamactl", standalone_mode=False)
    except exit_types as e:
        sys.exit(e.exit_code)
    except abort_types:
        _fail("aborted", 130)
    except no_args_types:
        sys.exit(0)  # the help was shown
    except usage_types as e:
        if debug:
            raise
        hint = f" (see llamactl {e.ctx.command_path.split(' ', 1)[1]} --help)" if getattr(e, "ctx", None) and \
            " " in e.ctx.command_path else " (see llamactl --help)"
        _fail(f"{e.format_message()}{hint}", 2)
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
