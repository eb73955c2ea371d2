"""``llamactl models``: list and import the pretrained models reachable offline."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

models_app = typer.Typer(help="Pretrained models llamactl can materialise as HF folders.", no_args_is_help=True)


@models_app.command("list")
def list_cmd(json_out: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Show the importable models and where each is imported."""
    from dataclasses import asdict

    from llamactl.cli import render
    from llamactl.services.models import list_models

    entries = list_models()
    if json_out:
        render.print_json([asdict(e) for e in entries])
    else:
        render.models_list(entries)


@models_app.command("import")
def import_cmd(
    name: str = typer.Argument(..., help="Model name, e.g. smollm2-135m (see `llamactl models list`)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder to write (default: llamactl's cache)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing folder."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Download a known model and write it as a Hugging Face folder (safetensors + tokenizer)."""
    from dataclasses import asdict

    from llamactl.cli import render
    from llamactl.services.models import import_model

    with render.stage_progress(f"importing {name}"):
        result = import_model(name, out, overwrite=overwrite)
    if json_out:
        render.print_json(asdict(result))
    else:
        render.model_imported(result)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
