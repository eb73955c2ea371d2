"""``llamactl eval``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def eval_cmd(
    model: str = typer.Argument(..., help="Model folder (Hugging Face layout) or run directory."),
    tasks: Optional[list[str]] = typer.Option(
        None, "--tasks", "-t", help="ICL tasks: names in --task-dir, .json (BIG-bench) / .jsonl (LLM Foundry) "
        "files, or a task-set .yaml; repeatable or comma-separated."),
    num_fewshot: str = typer.Option("0", "--num-fewshot", help="Shots, e.g. 0 or 0,5 (task-set YAMLs set their own)."),
    task_dir: Optional[list[Path]] = typer.Option(None, "--task-dir", help="Where task names are looked up."),
    data: Optional[list[str]] = typer.Option(
        None, "--data", help="Perplexity text: .txt/.jsonl/.jsonl.gz file or prepared MDS split folder; repeatable."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Window in tokens (default min(2048, context))."),
    batch_size: int = typer.Option(4, "--batch-size", help="Perplexity sequences per forward pass."),
    batch_tokens: int = typer.Option(8192, "--batch-tokens", help="Token budget of one ICL scoring batch."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Perplexity on at most this many tokens."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32, bf16 or fp16 (default bf16 on GPU, else fp32)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: cuda if available)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Results folder (default RUN_DIR/evals/<ts> or ./evals/<ts>)."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Accuracy on in-context-learning tasks and perplexity on text; writes results.json and results.csv."""
    from llamactl.cli import render
    from llamactl.errors import UserInputError
    from llamactl.services.evaluate import EvalRequest, run_eval

    try:
        shots = [int(s) for s in _split([num_fewshot])]
    except ValueError as e:
        raise UserInputError(f"--num-fewshot must be integers like 0 or 0,5, got {num_fewshot!r}") from e
    req = EvalRequest(model=model, tasks=_split(tasks), num_fewshot=shots, task_dirs=list(task_dir or []),
                      data=list(data or []), seq_len=seq_len, batch_size=batch_size, batch_tokens=batch_tokens,
                      max_tokens=max_tokens, dtype=dtype, device=device, out=out)
    with render.progress_reporter(enabled=not json_out) as progress:
        result = run_eval(req, progress=progress)
    if json_out:
        render.print_json(result.to_dict())
    else:
        render.eval_results(result)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
