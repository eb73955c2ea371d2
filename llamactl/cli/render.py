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


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class TrainProgress:
    """Live training display: a rich bar with loss, lr, tokens/s, MFU, elapsed and ETA on a terminal;
    one plain line per logged step (at most every 2 s) in a non-TTY log."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.live = console.is_terminal and not quiet
        self._progress = None
        self._task = None
        self._last_line = 0.0

    def __enter__(self) -> "TrainProgress":
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[stats]}"), console=console, transient=False)
            self._progress.__enter__()
            self._task = self._progress.add_task("train", total=None, stats="starting…")
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def on_event(self, e) -> None:
        if self.quiet:
            return
        import time

        if e.kind == "start":
            msg = f"resuming at step {e.resumed_from}" if e.resumed_from else "training started"
            self._print(f"[cyan]{msg}[/] ({e.total_steps or '?'} steps)")
            if self._progress is not None:
                self._progress.update(self._task, total=e.total_steps, completed=e.step)
        elif e.kind == "step":
            stats = (f"loss {e.loss:.4f}  lr {e.lr:.2e}  "
                     f"{(f'{e.tokens_per_s:,.0f} tok/s' if e.tokens_per_s else '- tok/s')}"
                     f"{f'  MFU {e.mfu:.1%}' if e.mfu is not None else ''}"
                     f"  elapsed {_fmt_s(e.elapsed_s)}  ETA {_fmt_s(e.eta_s)}")
            if self._progress is not None:
                self._progress.update(self._task, completed=e.step, total=e.total_steps, stats=stats)
            else:
                now = time.monotonic()
                if now - self._last_line >= 2.0 or e.step == e.total_steps:
                    self._last_line = now
                    console.print(f"step {e.step}/{e.total_steps or '?'}  {stats}", soft_wrap=True)
        elif e.kind == "eval":
            vals = "  ".join(f"{k.split('/')[-1]} {v:.4f}" for k, v in e.eval.items())
            self._print(f"[magenta]eval @ step {e.step}[/]  {vals}")

    def _print(self, text: str) -> None:
        (self._progress.console if self._progress is not None else console).print(text, soft_wrap=True)


def train_summary(result) -> None:
    """The table at the end of a run, then the sample line."""
    t = Table(title=f"run {result.run_dir}", title_justify="left", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value")
    t.add_row("steps", f"{result.steps}" + (f" (resumed at {result.resumed_from_step})" if result.resumed_from_step else ""))
    t.add_row("tokens", f"{result.tokens:,}")
    if result.first_loss is not None:
        t.add_row("loss", f"{result.first_loss:.4f} → {result.final_loss:.4f}")
    for k, v in result.eval.items():
        t.add_row(k, f"{v:.4f}")
    t.add_row("time", _fmt_s(result.elapsed_s))
    if result.tokens_per_s:
        t.add_row("tokens/s", f"{result.tokens_per_s:,.0f}")
    if result.mfu is not None:
        t.add_row("MFU", f"{result.mfu:.1%}")
    t.add_row("checkpoint", str(result.checkpoint) if result.checkpoint else "-")
    if result.loss_plot:
        t.add_row("loss curve", str(result.loss_plot))
    console.print(t)
    if result.sample is not None:
        console.print(f"[bold]sample[/] [dim]{result.sample_prompt}[/]{result.sample}", soft_wrap=True)


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
