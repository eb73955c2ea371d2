"""The only module that talks to the terminal (rich). Services return data; this draws it."""

from __future__ import annotations

from typing import Any, Iterable

from rich.console import Console
from rich.table import Table

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def error(message: str) -> None:
    """One red line on stderr (the message is escaped: paths like [/x] are not markup)."""
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


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

# ---- prepare-data --------------------------------------------------------------------------------

def _si(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}"


class _PrepareProgress:
    """Progress of a data preparation: a rich bar on a terminal, a plain line every 10 s in logs."""

    def __init__(self) -> None:
        self.live = console.is_terminal
        self._tasks: dict[str, Any] = {}
        self._last_line = 0.0
        self._progress = None

    def __enter__(self) -> "_PrepareProgress":
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]{task.fields[split]}"), BarColumn(), TextColumn("{task.fields[samples]}"),
                TextColumn("{task.fields[rates]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=console, transient=False)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def __call__(self, ev: Any) -> None:
        import time

        el = max(ev.elapsed, 1e-9)
        rates = f"{_si(ev.docs / el)} docs/s  {_si(ev.tokens / el)} tok/s"
        if ev.target_samples:
            total, done = float(ev.target_samples), float(ev.samples)
            samples = f"{ev.samples:,}/{ev.target_samples:,} samples"
        else:
            total, done = 1000.0, 1000.0 * (ev.fraction or 0.0)
            samples = f"{ev.samples:,} samples"
        if ev.done:
            done = total
        if self._progress is not None:
            if ev.split not in self._tasks:
                self._tasks[ev.split] = self._progress.add_task(ev.split, total=total, split=ev.split,
                                                                samples=samples, rates=rates)
            self._progress.update(self._tasks[ev.split], completed=done, samples=samples, rates=rates)
            return
        now = time.monotonic()
        if ev.done or now - self._last_line >= 10:
            self._last_line = now
            frac = done / total if total else 0.0
            eta = f"{(el / frac - el):.0f}s" if 0 < frac < 1 else "-"
            console.print(f"{ev.split}: {frac:6.1%}  {samples}  {ev.docs:,} docs  {rates}  "
                          f"elapsed {el:.0f}s  ETA {eta}{'  done' if ev.done else ''}", soft_wrap=True)


def prepare_progress() -> _PrepareProgress:
    """A progress callback for prepare-data services, usable as a context manager."""
    return _PrepareProgress()


def prepare_result(result: Any) -> None:
    """Draw a :class:`~llamactl.services.prepare_data.PrepareResult`."""
    t = Table(title=f"prepared {result.out}", title_justify="left")
    for c in ("split", "samples", "tokens", "documents", "seq len", "status"):
        t.add_column(c, justify="left" if c in ("split", "status") else "right")
    for r in result.splits:
        status = "kept (already done)" if r.name in result.reused else "written"
        if r.extra.get("short"):
            status += f", input ran out before {r.extra['max_samples']:,}"
        if r.kind == "sft":
            status += f", packing {r.extra.get('packing_efficiency', 0):.0%}"
            if r.extra.get("truncated"):
                status += f", {r.extra['truncated']} truncated"
        t.add_row(r.name, f"{r.num_samples:,}", f"{r.num_tokens:,}", f"{r.documents:,}", str(r.seq_len), status)
    console.print(t)
    line = f"tokenizer {result.tokenizer}; {result.seconds:.1f} s"
    if result.tokens_per_second:
        line += f"; {_si(result.tokens_per_second)} tokens/s, {_si(result.documents_per_second or 0)} documents/s"
    console.print(line, soft_wrap=True)


def dataset_info(info: Any) -> None:
    """Draw a :class:`~llamactl.services.prepare_data.DatasetInfo`."""
    from rich.panel import Panel
    from rich.text import Text

    head = Table(title=f"dataset {info.path}", title_justify="left", show_header=False)
    head.add_column("what", style="bold")
    head.add_column("value")
    head.add_row("tokenizer", str(info.tokenizer or "unknown"))
    head.add_row("vocab size", str(info.vocab_size or "unknown"))
    head.add_row("sequence length", str(info.seq_len or "unknown"))
    console.print(head)
    t = Table(show_header=True)
    for c in ("split", "kind", "samples", "tokens", "columns"):
        t.add_column(c)
    for s in info.splits:
        t.add_row(s.name, s.kind, f"{s.num_samples:,}", f"{s.num_tokens:,}" if s.num_tokens else "?",
                  ", ".join(f"{k} {v.split(':', 1)[-1]}" for k, v in s.columns.items()))
    console.print(t)
    if info.sample_text is not None:
        console.print(Panel(Text(info.sample_text), title=f"{info.sample_split}[{info.sample_index}] decoded",
                            title_align="left"))
        if info.sample_labels_text is not None:
            console.print(Panel(Text(info.sample_labels_text), title="trained on (labels)", title_align="left"))
    elif info.sample_tokens is not None:
        console.print(f"{info.sample_split}[{info.sample_index}] tokens: {info.sample_tokens[:32]} ...")
    if info.note:
        console.print(f"[yellow]note:[/] {info.note}", soft_wrap=True)


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
            from pathlib import Path

            where = Path(p.data)
            name = f"{where.parent.name}/{where.name}" if where.is_dir() else where.name  # full path in results.json
            t.add_row(name, f"{p.tokens:,}", f"{p.ce:.4f}", f"{p.ppl:.3f}")
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


def train_plan(plan) -> None:
    """The ``train --dry-run`` table."""
    t = Table(title="train --dry-run", title_justify="left", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value")
    t.add_row("parameters", f"{plan.params_total:,} ({plan.params_trainable:,} trainable)")
    t.add_row("GPUs", f"{plan.gpus} ({plan.device})")
    t.add_row("tokens per step", f"{plan.tokens_per_step:,}")
    t.add_row("steps", str(plan.steps) if plan.steps else "-")
    mem = plan.memory_gib
    t.add_row("memory per GPU", f"{mem['total']:.1f} GiB  (weights {mem['weights']:.1f}, gradients "
                                f"{mem['gradients']:.1f}, optimizer {mem['optimizer']:.1f}, activations "
                                f"{mem['activations']:.1f}, loss {mem['loss']:.1f})")
    t.add_row("FLOPs per token", f"{plan.flops_per_token / 1e9:.2f} GFLOP")
    if plan.expected_tokens_per_s:
        t.add_row("expected speed", f"{plan.expected_tokens_per_s:,.0f} tokens/s (MFU {plan.expected_mfu:.0%})")
    if plan.expected_wall_s:
        t.add_row("expected wall time", _fmt_s(plan.expected_wall_s))
    console.print(t)
    for n in plan.notes:
        console.print(f"[dim]note: {n}[/]", soft_wrap=True)
