"""The only module that talks to the terminal (rich). Services return data; this draws it."""

from __future__ import annotations

from typing import Any, Iterable

from rich.console import Console
from rich.table import Table

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def error(message: str) -> None:
    """One red line on stderr."""
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)


def info(message: str) -> None:
    console.print(message, soft_wrap=True)


def table(title: str, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(str(c))
    for r in rows:
        t.add_row(*(str(x) for x in r))
    console.print(t)


def print_json(data: Any) -> None:
    import json

    print(json.dumps(data, indent=2, default=str))


def doctor(report) -> None:
    """Draw a :class:`~llamactl.services.doctor.DoctorReport`."""
    t = Table(title="llamactl doctor", title_justify="left", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value")
    t.add_row("python", report.python)
    for name, version in report.packages.items():
        t.add_row(name, version or "[red]not installed[/]")
    t.add_row("CUDA", report.cuda or "not available (CPU only)")
    t.add_row("GPUs", ", ".join(report.gpus) if report.gpus else "none")
    for name, present in report.optional.items():
        t.add_row(name, "present" if present else "absent (optional)")
    t.add_row("Hugging Face token", f"set (via {report.hf_token_set})" if report.hf_token_set else "not set")
    console.print(t)
    if report.problems:
        for p in report.problems:
            console.print(f"[bold red]problem:[/] {p}", soft_wrap=True)
    else:
        console.print("[green]no known problems[/]")


# ------------------------------------------------------------------ convert / models
from contextlib import contextmanager  # noqa: E402


@contextmanager
def stage_progress(title: str):
    """A transient spinner + bar on stderr; yields ``update(stage, done, total)`` for services."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task(title, total=None)

        def update(stage: str, done: int = 0, total: int = 0) -> None:
            bar.update(task, description=stage, completed=done, total=total or None)

        yield update


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def convert_result(result) -> None:
    """Draw a :class:`~llamactl.services.convert.ConvertResult`."""
    kinds = {"hf": "Hugging Face folder", "peft": "PEFT adapter folder", "gguf": "GGUF file"}
    t = Table(title="llamactl convert", title_justify="left", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value")
    t.add_row("source", f"{result.source} ({result.source_kind.replace('_', ' ')})")
    t.add_row("output", f"{result.out}  [dim]{kinds.get(result.to, result.to)}[/]")
    t.add_row("dtype", result.dtype)
    if result.base:
        t.add_row("base model", result.base)
    if result.lora_b_nonzero is not None:
        nz, n = result.lora_b_nonzero
        t.add_row("LoRA", f"{'merged, ' if result.merged else ''}{nz}/{n} lora_B matrices non-zero")
    t.add_row("files", ", ".join(result.files))
    t.add_row("size", _human_bytes(result.size_bytes))
    if result.hub_url:
        t.add_row("hub", result.hub_url)
    console.print(t)
    for w in result.warnings:
        console.print(f"[bold yellow]warning:[/] {w}", soft_wrap=True)


def models_list(entries) -> None:
    table("importable models", ["name", "description", "from", "imported at"],
          [(e.name, e.description, e.origin, e.imported_at or "-") for e in entries])


def model_imported(result) -> None:
    state = "already imported" if result.reused else "imported"
    console.print(f"[green]{result.name}[/] {state} at {result.out} "
                  f"({result.num_params / 1e6:.1f}M parameters; {', '.join(result.files)})", soft_wrap=True)
