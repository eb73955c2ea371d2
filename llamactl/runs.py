"""Run directories: ``runs/<run_name>-<YYYYmmdd_HHMMSS>/`` — create, find, resolve.

Layout::

    config.yaml      the resolved config (secrets removed); `--run-dir` resumes from it
    checkpoints/     Composer checkpoints (ep{e}-ba{b}-rank{r}.pt) and latest-rank0.pt
    metrics.jsonl    one line per logged step (step, tokens, loss, lr, tokens_per_s[, mfu]) and per eval
    train.log        the run's log
    loss.png         loss curve (written at the end)
    summary.json     final numbers and the sample line (written at the end)
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from llamactl.errors import UserInputError

_STAMP = re.compile(r"-(\d{8}_\d{6})(-\d+)?$")


def new_run_dir(runs_dir: str | Path, run_name: str, *, now: datetime | None = None) -> Path:
    """Create a fresh run directory; never reuses one that exists."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+", run_name):
        raise UserInputError(f"run_name {run_name!r} may use only letters, digits, '.', '_' and '-'")
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    base = Path(runs_dir) / f"{run_name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    (path / "checkpoints").mkdir(parents=True)
    return path


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint a resume would load (Composer's latest symlink, else the newest file)."""
    ckpt = Path(run_dir) / "checkpoints"
    latest = ckpt / "latest-rank0.pt"
    if latest.exists():
        return latest.resolve()
    files = sorted(ckpt.glob("ep*-ba*-rank0.pt"), key=lambda p: int(re.search(r"-ba(\d+)-", p.name).group(1)))
    return files[-1] if files else None


def find_resumable(runs_dir: str | Path, run_name: str) -> Path | None:
    """The newest run of ``run_name`` under ``runs_dir`` that has a checkpoint (for ``autoresume``)."""
    root = Path(runs_dir)
    if not root.is_dir():
        return None
    candidates = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(f"{run_name}-")
                  and _STAMP.search(p.name) and p.name[: _STAMP.search(p.name).start()] == run_name]
    for p in sorted(candidates, key=lambda p: p.name, reverse=True):
        if latest_checkpoint(p) is not None:
            return p
    return None


def check_run_dir(run_dir: str | Path) -> Path:
    """An existing run directory (with its config.yaml), or a clear error."""
    path = Path(run_dir)
    if not path.is_dir():
        raise UserInputError(f"run directory {path} does not exist; pass a folder under runs/")
    if not (path / "config.yaml").is_file():
        raise UserInputError(f"{path} is not a llamactl run directory (no config.yaml)")
    return path
