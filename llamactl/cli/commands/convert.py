"""``llamactl convert``: runs, checkpoints, LoRA adapters, HF folders and GGUF files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def convert(
    source: str = typer.Argument(..., help="Run dir, Composer .pt, PEFT adapter folder, HF folder, hub id or .gguf."),
    out: Path = typer.Argument(..., help="Output folder (HF model / PEFT adapter) or a .gguf file."),
    to: str = typer.Option("auto", "--to", help="hf | peft | gguf. auto: gguf for a .gguf OUT, peft for a LoRA "
                                                "source, else hf."),
    merge: bool = typer.Option(False, "--merge", help="Merge a LoRA adapter into its base: a full HF folder."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="HF/PEFT: fp32, bf16, fp16 (default: the source's). "
                                        "GGUF: f32, f16 (default), bf16, q8_0, q5_1, q5_0, q4_1, q4_0."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model of a LoRA run/adapter (default: the one "
                                       "it names)."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer folder to ship (default: the "
                                            "source's)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
    push_to_hub: Optional[str] = typer.Option(None, "--push-to-hub", metavar="REPO",
                                              help="Upload the result to this hub repo (token from HF_TOKEN)."),
    public: bool = typer.Option(False, "--public", help="With --push-to-hub: create the repo public (default "
                                "private)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Export a run as an HF folder or PEFT adapter, merge LoRA, write or read GGUF, push to the hub."""
    from dataclasses import asdict

    from llamactl.cli import render
    from llamactl.services.convert import ConvertRequest, convert as run_convert

    from llamactl.errors import UserInputError

    if to not in ("auto", "hf", "peft", "gguf"):
        raise UserInputError(f"--to {to!r} is not one of auto, hf, peft, gguf")
    req = ConvertRequest(source=source, out=out, to=to, merge=merge, dtype=dtype, base=base, tokenizer=tokenizer,
                         overwrite=overwrite, push_to_hub=push_to_hub, private=not public)
    with render.stage_progress("convert") as progress:
        result = run_convert(req, progress=progress)
    if json_out:
        render.print_json(asdict(result))
    else:
        render.convert_result(result)


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
