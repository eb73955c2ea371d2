"""``llamactl eval``: in-context-learning accuracy and language-modelling perplexity of a model.

Writes ``results.json`` and ``results.csv`` to ``RUN_DIR/evals/<timestamp>/`` when MODEL is a run
directory, to ``--out`` when given, else to ``./evals/<timestamp>/``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from llamactl.errors import DataError, UserInputError

log = logging.getLogger(__name__)

# (what, done, total): the CLI draws it as a progress bar.
ProgressFn = Callable[[str, int, int], None]

CSV_COLUMNS = ["task", "kind", "shots", "n", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "chance",
               "ce", "ppl", "tokens", "truncated", "seconds"]


@dataclass
class EvalRequest:
    """What to evaluate and how.

    Attributes:
        model: a model folder or a run directory.
        tasks: task names (looked up in ``task_dirs``, default ``$LLAMACTL_TASK_DIR``), ``.json``/``.jsonl``
            task files, or task-set YAMLs.
        num_fewshot: shots for tasks given directly (a task-set YAML sets its own).
        data: perplexity sources: ``.txt``/``.jsonl``/``.jsonl.gz`` files or prepared MDS split folders.
        seq_len: window for both perplexity blocks and ICL prompts (default: min(2048, model context)).
        batch_size: perplexity blocks per forward pass.
        batch_tokens: token budget of one ICL scoring group.
        max_tokens: evaluate perplexity on at most this many tokens per source.
        out: results folder (default: see module docstring).
        write: write results.json / results.csv.
    """

    model: str
    tasks: list[str] = field(default_factory=list)
    num_fewshot: list[int] = field(default_factory=lambda: [0])
    task_dirs: list[Path] = field(default_factory=list)
    data: list[str] = field(default_factory=list)
    seq_len: int | None = None
    batch_size: int = 4
    batch_tokens: int = 8192
    max_tokens: int | None = None
    dtype: str | None = None
    device: str | None = None
    out: str | Path | None = None
    write: bool = True


@dataclass
class PerplexityScore:
    data: str
    ce: float
    ppl: float
    tokens: int
    seq_len: int
    seconds: float


@dataclass
class EvalResult:
    model: str
    source: str
    started: str
    seconds: float
    tasks: list[Any]  # TaskScore
    perplexity: list[PerplexityScore]
    out_dir: Path | None
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "source": self.source, "started": self.started, "seconds": self.seconds,
                "settings": self.settings, "tasks": [t.to_dict() for t in self.tasks],
                "perplexity": [asdict(p) for p in self.perplexity],
                "out_dir": str(self.out_dir) if self.out_dir else None}

    def csv_rows(self) -> list[dict[str, Any]]:
        rows = [{k: v for k, v in t.to_dict().items() if k in CSV_COLUMNS} for t in self.tasks]
        rows += [{"task": f"perplexity:{p.data}", "kind": "perplexity", "ce": p.ce, "ppl": p.ppl,
                  "tokens": p.tokens, "seconds": p.seconds} for p in self.perplexity]
        return rows


def _mds_batches(split_dir: Path, seq_len: int, batch_size: int, max_tokens: int | None):
    from llamactl.data.loaders import build_lm_dataloader  # streaming only, no Composer

    loader = build_lm_dataloader(data_dir=split_dir.parent, split=split_dir.name, micro_batch_size=batch_size,
                                 max_seq_len=seq_len, shuffle=False, seed=0, drop_last=False)
    seen = 0
    for batch in loader:
        yield batch
        seen += batch["input_ids"].numel()
        if max_tokens is not None and seen >= max_tokens:
            return


def _perplexity(im: Any, source: str, req: EvalRequest, seq_len: int, progress: ProgressFn | None
                ) -> PerplexityScore:
    from llamactl.evaluation.perplexity import batch_blocks, evaluate_perplexity, read_documents, token_blocks

    t0 = time.perf_counter()
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "index.json").is_file():
            raise DataError(f"{path} is not a prepared MDS split (no index.json); give the split folder, "
                            f"e.g. datasets/c4_small/val_small, or a .txt/.jsonl file")
        batches = _mds_batches(path, seq_len, req.batch_size, req.max_tokens)
    else:
        blocks = token_blocks(read_documents(path), im.tokenizer, seq_len, max_tokens=req.max_tokens)
        total = len(blocks)

        def counted():
            for i, b in enumerate(batch_blocks(blocks, req.batch_size, im.pad_token_id)):
                yield b
                if progress is not None:
                    progress(f"perplexity {path.name}", min((i + 1) * req.batch_size, total), total)

        batches = counted()
    ce, ppl, tokens = evaluate_perplexity(im.model, batches)
    return PerplexityScore(str(source), ce, ppl, tokens, seq_len, time.perf_counter() - t0)


def write_results(result: EvalResult, out_dir: Path) -> None:
    """``results.json`` (everything) and ``results.csv`` (one row per task x shots / data source)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    with open(out_dir / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for row in result.csv_rows():
            w.writerow(row)


def run_eval(req: EvalRequest, progress: ProgressFn | None = None) -> EvalResult:
    """Evaluate ``req.model`` on the requested tasks and perplexity sources."""
    from llamactl.evaluation.icl import evaluate_task
    from llamactl.evaluation.tasks import resolve_tasks
    from llamactl.interop.sources import check_model_spec
    from llamactl.services.inference_model import eval_output_dir, load_inference_model, timestamp

    if not req.tasks and not req.data:
        raise UserInputError("nothing to evaluate: pass --tasks (ICL tasks) and/or --data (perplexity text)")
    if any(s < 0 for s in req.num_fewshot) or not req.num_fewshot:
        raise UserInputError(f"--num-fewshot must be non-negative integers, got {req.num_fewshot}")
    check_model_spec(req.model)
    # Load tasks before the model, so a typo fails in a second rather than after loading weights.
    task_dirs = [Path(d) for d in req.task_dirs] or [Path(d) for d in os.environ.get("LLAMACTL_TASK_DIR", "").split(
        os.pathsep) if d]
    tasks = resolve_tasks(req.tasks, task_dirs, req.num_fewshot) if req.tasks else []
    for d in req.data:
        if not Path(d).expanduser().exists():
            raise DataError(f"evaluation data {d} does not exist")
    started = timestamp()
    t0 = time.perf_counter()
    im = load_inference_model(req.model, dtype=req.dtype, device=req.device)
    seq_len = req.seq_len or min(2048, im.model.config.max_position_embeddings)
    if seq_len > im.model.config.max_position_embeddings:
        raise UserInputError(f"--seq-len {seq_len} is longer than the model's context "
                             f"({im.model.config.max_position_embeddings})")
    scores = []
    for task in tasks:
        for shots in task.num_fewshot:
            what = f"{task.label} ({shots}-shot)"
            log.info("evaluating %s", what)
            cb = (lambda done, total, what=what: progress(what, done, total)) if progress else None
            scores.append(evaluate_task(im.model, im.tokenizer, task, shots, max_seq_len=seq_len,
                                        batch_tokens=req.batch_tokens, progress=cb))
    ppls = [_perplexity(im, d, req, seq_len, progress) for d in req.data]
    settings = {"num_fewshot": req.num_fewshot, "seq_len": seq_len, "batch_size": req.batch_size,
                "batch_tokens": req.batch_tokens, "max_tokens": req.max_tokens,
                "dtype": str(next(im.model.parameters()).dtype).replace("torch.", ""),
                "device": str(next(im.model.parameters()).device)}
    result = EvalResult(model=req.model, source=im.source, started=started, seconds=time.perf_counter() - t0,
                        tasks=scores, perplexity=ppls, out_dir=None, settings=settings)
    if req.write:
        out_dir = eval_output_dir(im.run_dir, req.out)
        result.out_dir = out_dir
        write_results(result, out_dir)
    return result
