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
