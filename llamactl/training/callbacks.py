"""Composer callbacks that record a run: metrics.jsonl, train.log lines, progress events, plot.

Services never print: :class:`RunRecorder` hands each step to an ``on_event`` callable that the
CLI turns into a rich live display (or plain lines in a non-TTY log).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from composer.core import Callback, State
from composer.loggers import Logger

log = logging.getLogger("llamactl.train")

# Dense bf16/fp16 tensor-core peaks (FLOP/s) by device-name fragment, for MFU.
PEAK_FLOPS = [("H200", 989.5e12), ("H100", 989.5e12), ("GH200", 989.5e12), ("A100", 312e12),
              ("L40S", 362e12), ("A10G", 125e12), ("L4", 121e12), ("4090", 165e12), ("3090", 71e12),
              ("V100", 125e12), ("A6000", 155e12)]


def peak_flops(device_name: str | None) -> float | None:
    if not device_name:
        return None
    for fragment, value in PEAK_FLOPS:
        if fragment in device_name:
            return value
    return None


@dataclass
class ProgressEvent:
    """One thing worth showing: a logged training step, an eval result, or the start/end of a fit."""

    kind: str  # "start" | "step" | "eval" | "end"
    step: int = 0
    total_steps: int | None = None
    tokens: int = 0
    loss: float | None = None
    lr: float | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None
    eval: dict[str, float] = field(default_factory=dict)
    resumed_from: int | None = None


class RunRecorder(Callback):
    """Writes ``metrics.jsonl`` (one line per logged step and per eval) and emits progress events."""

    def __init__(self, run_dir: Path, *, log_every: int = 1, on_event: Callable[[ProgressEvent], None] | None = None,
                 flops_per_token: float | None = None, window: int = 10) -> None:
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.log_every = max(1, log_every)
        self.on_event = on_event or (lambda e: None)
        self.flops_per_token = flops_per_token
        self.window = window
        self._times: list[tuple[float, int]] = []
        self._t0 = 0.0
        self._peak: float | None = None
        self._n_gpus = 1
        self.total_steps: int | None = None
        self.history: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ helpers
    def _write(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def _rank0(self) -> bool:
        from composer.utils import dist

        return dist.get_global_rank() == 0

    def _total_steps(self, state: State) -> int | None:
        from composer.core import TimeUnit

        md = state.max_duration
        if md is None:
            return None
        if md.unit == TimeUnit.BATCH:
            return int(md.value)
        if md.unit == TimeUnit.EPOCH and state.dataloader_len is not None:
            return int(md.value) * int(state.dataloader_len)
        return None

    # ------------------------------------------------------------------ events
    def fit_start(self, state: State, logger: Logger) -> None:
        from composer.utils import dist

        self._n_gpus = max(1, dist.get_world_size())
        self.total_steps = self._total_steps(state)
        step = int(state.timestamp.batch.value)
        if torch.cuda.is_available():
            self._peak = peak_flops(torch.cuda.get_device_name())
        if self._rank0() and self.metrics_path.exists():
            # A resumed run re-does the steps after its checkpoint: drop their old lines.
            kept = [ln for ln in self.metrics_path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= step]
            self.metrics_path.write_text("".join(k + "\n" for k in kept))
        self._t0 = time.perf_counter()
        self._times = [(self._t0, int(state.timestamp.token.value))]
        if self._rank0():
            self.on_event(ProgressEvent("start", step=step, total_steps=self.total_steps,
                                        resumed_from=step or None))

    def batch_end(self, state: State, logger: Logger) -> None:
        step = int(state.timestamp.batch.value)
        tokens = int(state.timestamp.token.value)
        now = time.perf_counter()
        loss = state.loss
        if isinstance(loss, dict):
            loss = loss.get("total", next(iter(loss.values())))
        loss_value = float(loss.detach().float().item()) if torch.is_tensor(loss) else float(loss)  # syncs the GPU
        self._times.append((now, tokens))
        self._times = self._times[-(self.window + 1):]
        (t_a, tok_a), (t_b, tok_b) = self._times[0], self._times[-1]
        tps = (tok_b - tok_a) / (t_b - t_a) if t_b > t_a and tok_b > tok_a else None
        mfu = None
        if tps and self._peak and self.flops_per_token:
            mfu = tps * self.flops_per_token / (self._peak * self._n_gpus)
        lr = state.optimizers[0].param_groups[0]["lr"] if state.optimizers else None
        elapsed = now - self._t0
        eta = None
        if self.total_steps and len(self._times) > 1:
            steps_in_window = len(self._times) - 1
            eta = (t_b - t_a) / steps_in_window * max(0, self.total_steps - step)
        if not math.isfinite(loss_value):
            log.warning("step %d: loss is %s", step, loss_value)
        if step % self.log_every == 0 or step == self.total_steps:
            rec = {"step": step, "tokens": tokens, "loss": loss_value, "lr": lr,
                   "tokens_per_s": round(tps, 2) if tps else None, "elapsed_s": round(elapsed, 3)}
            if mfu is not None:
                rec["mfu"] = round(mfu, 4)
            self.history.append(rec)
            if self._rank0():
                self._write(rec)
                log.info("step %d/%s loss %.4f lr %.3g tok/s %s%s", step, self.total_steps or "?", loss_value,
                         lr or 0.0, f"{tps:,.0f}" if tps else "-", f" MFU {mfu:.1%}" if mfu is not None else "")
                self.on_event(ProgressEvent("step", step=step, total_steps=self.total_steps, tokens=tokens,
                                            loss=loss_value, lr=lr, tokens_per_s=tps, mfu=mfu,
                                            elapsed_s=elapsed, eta_s=eta))

    def eval_end(self, state: State, logger: Logger) -> None:
        step = int(state.timestamp.batch.value)
        values: dict[str, float] = {}
        for label, metrics in state.eval_metrics.items():
            for name, metric in metrics.items():
                values[f"{label}/{name}"] = float(metric.compute().item())
        rec = {"step": step, "eval": values}
        self.evals.append(rec)
        if self._rank0():
            self._write(rec)
            log.info("eval at step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
            self.on_event(ProgressEvent("eval", step=step, total_steps=self.total_steps, eval=values,
                                        elapsed_s=time.perf_counter() - self._t0))

    def fit_end(self, state: State, logger: Logger) -> None:
        if self._rank0():
            self.on_event(ProgressEvent("end", step=int(state.timestamp.batch.value), total_steps=self.total_steps,
                                        tokens=int(state.timestamp.token.value),
                                        elapsed_s=time.perf_counter() - self._t0))


def read_metrics(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(step records, eval records) from a run's metrics.jsonl."""
    steps, evals = [], []
    path = Path(run_dir) / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            (evals if "eval" in rec else steps).append(rec)
    return steps, evals


def plot_loss(run_dir: Path) -> Path | None:
    """Draw ``loss.png`` (train loss per step, eval cross-entropy as points) from metrics.jsonl."""
    steps, evals = read_metrics(run_dir)
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], label="train loss", lw=1.2)
    ev = [(r["step"], v) for r in evals for k, v in r["eval"].items() if k.endswith("TokenCrossEntropy")]
    if ev:
        ax.plot([s for s, _ in ev], [v for _, v in ev], "o-", label="eval cross-entropy", ms=4)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(Path(run_dir).name, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(run_dir) / "loss.png"
    fig.savefig(out)
    plt.close(fig)
    return out


def event_dict(e: ProgressEvent) -> dict[str, Any]:
    return asdict(e)
