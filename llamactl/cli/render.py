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


# ------------------------------------------------------------------ eval and generate
_stream = {"open": False}


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return "nan" if x != x else f"{x:.{digits}f}"
    return str(x)


class _ProgressReporter:
    """A rich progress bar fed by ``(what, done, total)`` callbacks; one task row per ``what``."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar = None
        self._rows: dict[str, Any] = {}

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=err_console, transient=True)
            self._bar.__enter__()
        return self if self.enabled else None

    def __call__(self, what: str, done: int, total: int) -> None:
        if self._bar is None:
            return
        if what not in self._rows:
            self._rows[what] = self._bar.add_task(what, total=total)
        self._bar.update(self._rows[what], completed=done, total=total)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def progress_reporter(enabled: bool = True) -> _ProgressReporter:
    """Context manager yielding a ``(what, done, total)`` callback (None when disabled)."""
    return _ProgressReporter(enabled)


def eval_results(result) -> None:
    """Draw an :class:`~llamactl.services.evaluate.EvalResult`: accuracy table, perplexity table, paths."""
    if result.tasks:
        t = Table(title=f"llamactl eval · {result.source}", title_justify="left")
        for c, j in (("task", "left"), ("shots", "right"), ("n", "right"), ("accuracy (len-norm)", "right"),
                     ("accuracy (raw)", "right"), ("chance", "right")):
            t.add_column(c, justify=j)
        for s in result.tasks:
            norm = "–" if s.acc_norm is None else f"{s.acc_norm:.3f} ± {_fmt(s.acc_norm_stderr)}"
            t.add_row(s.task, str(s.shots), str(s.n), norm, f"{s.acc:.3f} ± {_fmt(s.acc_stderr)}",
                      _fmt(s.chance))
        console.print(t)
        if any(s.truncated for s in result.tasks):
            console.print("[yellow]some contexts were cut from the left to fit the window (see results.json)[/]")
    if result.perplexity:
        t = Table(title="perplexity", title_justify="left")
        for c, j in (("data", "left"), ("tokens", "right"), ("cross-entropy", "right"), ("perplexity", "right")):
            t.add_column(c, justify=j)
        for p in result.perplexity:
            t.add_row(p.data, f"{p.tokens:,}", f"{p.ce:.4f}", f"{p.ppl:.3f}")
        console.print(t)
    if result.out_dir is not None:
        console.print(f"results: {result.out_dir}/results.json, results.csv  ({result.seconds:.1f} s)",
                      soft_wrap=True, markup=False)


def prompt_header(index: int, prompt: str) -> None:
    """Show a prompt before its streamed completion."""
    if _stream["open"]:
        stream_end()
    console.print(prompt, style="dim", end="", soft_wrap=True, markup=False)
    _stream["open"] = True


def stream_text(piece: str) -> None:
    """Write generated text as it arrives."""
    console.file.write(piece)
    console.file.flush()
    _stream["open"] = True


def stream_end() -> None:
    if _stream["open"]:
        console.file.write("\n")
        console.file.flush()
    _stream["open"] = False


def generation_stats(prompt_tokens: int, new_tokens: int, seconds: float) -> None:
    """The closing line: prompt and generated tokens and speed."""
    speed = new_tokens / seconds if seconds > 0 else 0.0
    console.print(f"[dim]prompt {prompt_tokens} tokens · generated {new_tokens} tokens · "
                  f"{speed:.1f} tokens/s[/]", soft_wrap=True)


def completions(result, *, streamed: bool) -> None:
    """Completions of a :class:`~llamactl.services.generate.GenerateResult` and the stats line."""
    if streamed:
        stream_end()
    else:
        for c in result.completions:
            console.print(c.prompt, style="dim", end="", soft_wrap=True, markup=False)
            console.print(c.text, soft_wrap=True, markup=False)
    generation_stats(result.prompt_tokens, result.new_tokens, result.seconds)


def chat_banner(source: str) -> None:
    console.print(f"[bold]chat[/] with {source} · /exit or Ctrl-D to leave", soft_wrap=True)


def chat_input() -> str | None:
    """One line from the user (None at end of input)."""
    try:
        return console.input("[bold cyan]you>[/] ")
    except EOFError:
        console.print()
        return None


def chat_reply_prefix() -> None:
    console.print("[bold green]assistant>[/] ", end="")
    _stream["open"] = True
