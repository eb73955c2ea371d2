"""The pretraining pipeline: raw batches → tokenizer workers → packer → MDS split writers.

One pass can fill several splits (a corpus routed into train/val by fraction); each split stops
at its own sample target and is published atomically when done (see :mod:`llamactl.data.mds`).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from llamactl.data.mds import SplitRecord, SplitWriter
from llamactl.data.packing import TokenPacker
from llamactl.data.tokenize import EncodeSpec, RawBatch, encode_stream
from llamactl.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class ProgressEvent:
    """A progress report of a preparation (the CLI turns these into a progress bar)."""

    split: str
    docs: int
    tokens: int
    samples: int
    target_samples: int | None
    fraction: float | None  # of the input read, when the sample target does not bound the work
    elapsed: float
    done: bool = False


ProgressFn = Callable[[ProgressEvent], None]


@dataclass
class SplitTarget:
    """One output split: its name, how many samples to stop at (None = all), its settings hash."""

    name: str
    max_samples: int | None
    fingerprint: str
    source: str = ""


@contextmanager
def _split_writers(data_dir: str | Path, targets: list[SplitTarget], columns: dict[str, str],
                   compression: str | None, writers: dict[str, SplitWriter], records: dict[str, SplitRecord],
                   commit: Callable[[str], None]) -> Iterator[None]:
    """Open a writer per split into ``writers``; when the body ends, ``commit`` every split not yet
    in ``records``; on any error (a failed commit too), abort the uncommitted ones, so no
    half-written split is left behind."""
    try:
        for t in targets:
            writers[t.name] = SplitWriter(data_dir, t.name, columns, compression=compression)
        yield
        for t in targets:
            if t.name not in records:
                commit(t.name)
    except BaseException:
        for name, w in writers.items():
            if name not in records:
                w.abort()
        raise


def pack_lm_splits(*, data_dir: str | Path, batches: Iterable[RawBatch], targets: list[SplitTarget],
                   spec: EncodeSpec, seq_len: int, wrap: bool, token_dtype: str, compression: str | None,
                   workers: int, progress: ProgressFn | None = None,
                   fraction: Callable[[], float | None] | None = None) -> dict[str, SplitRecord]:
    """Tokenize, pack and write pretraining splits in one pass over ``batches``.

    Returns:
        The record of each split written.

    Raises:
        DataError: a split would hold no sample (input shorter than one sequence).
    """
    if seq_len <= 0:
        raise DataError(f"the sequence length must be positive, got {seq_len}")
    t0 = time.monotonic()
    packers = {t.name: TokenPacker(seq_len, wrap=wrap) for t in targets}
    by_name = {t.name: t for t in targets}
    writers: dict[str, SplitWriter] = {}
    records: dict[str, SplitRecord] = {}
    columns = {"tokens": f"ndarray:{token_dtype}"}
    last_report = [0.0]

    def remaining(name: str) -> int | None:
        m = by_name[name].max_samples
        return None if m is None else m - (writers[name].num_samples if name in writers else 0)

    def all_full() -> bool:
        return all((r := remaining(n)) is not None and r <= 0 for n in by_name) or \
            all(n in records for n in by_name)

    def report(name: str, done: bool = False) -> None:
        now = time.monotonic()
        if progress is None or (not done and now - last_report[0] < 0.25):
            return
        last_report[0] = now
        p, w = packers[name], writers.get(name)
        progress(ProgressEvent(split=name, docs=p.docs, tokens=p.tokens, samples=w.num_samples if w else 0,
                               target_samples=by_name[name].max_samples, fraction=fraction() if fraction else None,
                               elapsed=now - t0, done=done))

    def commit(name: str) -> None:
        w, p = writers[name], packers[name]
        if w.num_samples == 0:
            raise DataError(f"split {name!r} got no complete sample: its input holds {p.tokens} tokens, fewer than "
                            f"one sequence of {seq_len}; use more data or a smaller --concat-tokens")
        t = by_name[name]
        records[name] = w.commit(SplitRecord(
            name=name, kind="lm", num_samples=w.num_samples, num_tokens=w.num_tokens, seq_len=seq_len,
            documents=p.docs, fingerprint=t.fingerprint, columns=columns, source=t.source,
            seconds=round(time.monotonic() - t0, 3),
            extra={"dropped_tail_tokens": p.pending, "max_samples": t.max_samples, "engine": spec.engine,
                   "short": t.max_samples is not None and w.num_samples < t.max_samples}))
        report(name, done=True)
        log.info("split %s: %d samples of %d tokens from %d documents", name, w.num_samples, seq_len, p.docs)

    with _split_writers(data_dir, targets, columns, compression, writers, records, commit):
        for enc in encode_stream(batches, spec, workers=workers, should_stop=all_full):
            name = enc.split
            if name not in by_name or name in records:
                continue
            left = remaining(name)
            samples = packers[name].add(enc.flat, enc.lengths, max_samples=left)
            if len(samples):
                writers[name].write(tokens=samples)
            if left is not None and remaining(name) <= 0:
                commit(name)
            else:
                report(name)
            if all_full():
                break
    return records


def pack_sft_splits(*, data_dir: str | Path, batches: Iterable[RawBatch], targets: list[SplitTarget],
                    tok, spec, seq_len: int, pad_id: int, pack: bool, overflow: str, token_dtype: str,
                    compression: str | None, workers: int, progress: ProgressFn | None = None,
                    fraction: Callable[[], float | None] | None = None) -> dict[str, SplitRecord]:
    """Render, mask, pack and write instruction splits (columns ``tokens``, ``labels``, ``sequence_id``)."""
    from llamactl.data import sft
    from llamactl.data.tokenize import ordered_map, pool_map

    if seq_len <= 0:
        raise DataError(f"the sequence length must be positive, got {seq_len}")
    t0 = time.monotonic()
    columns = {"tokens": f"ndarray:{token_dtype}", "labels": "ndarray:int32", "sequence_id": "ndarray:int32"}
    by_name = {t.name: t for t in targets}
    packers = {t.name: sft.SFTPacker(seq_len, pad_id, pack=pack, overflow=overflow) for t in targets}
    writers: dict[str, SplitWriter] = {}
    records: dict[str, SplitRecord] = {}
    last = [0.0]

    def full(name: str) -> bool:
        m = by_name[name].max_samples
        return m is not None and writers[name].num_samples >= m

    def write(name: str, samples: list) -> None:
        m = by_name[name].max_samples
        if m is not None:
            samples = samples[:max(m - writers[name].num_samples, 0)]
        if samples:
            writers[name].write(tokens=np.stack([s[0] for s in samples]), labels=np.stack([s[1] for s in samples]),
                                sequence_id=np.stack([s[2] for s in samples]))

    def report(name: str, done: bool = False) -> None:
        now = time.monotonic()
        if progress is None or (not done and now - last[0] < 0.25):
            return
        last[0] = now
        p = packers[name]
        progress(ProgressEvent(split=name, docs=p.examples, tokens=p.tokens, samples=writers[name].num_samples,
                               target_samples=by_name[name].max_samples, fraction=fraction() if fraction else None,
                               elapsed=now - t0, done=done))

    def commit(name: str) -> None:
        w, p = writers[name], packers[name]
        if not full(name):
            write(name, p.flush())
        if w.num_samples == 0:
            raise DataError(f"split {name!r} got no example with a response token to learn; check the input")
        t = by_name[name]
        records[name] = w.commit(SplitRecord(
            name=name, kind="sft", num_samples=w.num_samples, num_tokens=w.num_tokens, seq_len=seq_len,
            documents=p.examples, fingerprint=t.fingerprint, columns=columns, source=t.source,
            seconds=round(time.monotonic() - t0, 3),
            extra={"examples": p.examples, "truncated": p.truncated, "dropped": p.dropped,
                   "without_labels": p.no_label, "example_tokens": p.tokens, "label_tokens": p.label_tokens,
                   "packing_efficiency": round(p.tokens / max(w.num_tokens, 1), 4), "packed": pack}))
        report(name, done=True)

    def all_done() -> bool:
        return all(n in records or full(n) for n in by_name)

    with _split_writers(data_dir, targets, columns, compression, writers, records, commit):
        rendered = (sft.render_batch(tok, spec, b) for b in batches)  # chat templates: parent process
        backend_json = tok._tokenizer.to_str()
        if workers <= 1:
            backend = tok._tokenizer
            results = ordered_map(lambda job: sft.tokenize_batch(backend, job, spec.mask_prompt, tok.eos_token_id),
                                  rendered, should_stop=all_done)
        else:
            results = pool_map(sft.tokenize_in_worker, rendered, workers=workers, initializer=sft.init_worker,
                               initargs=(backend_json, spec.mask_prompt, tok.eos_token_id), should_stop=all_done)
        for name, examples in results:
            if name not in by_name or name in records:
                continue
            for ids, mask in examples:
                write(name, packers[name].add(ids, mask))
                if full(name):
                    break
            if full(name):
                commit(name)
            else:
                report(name)
            if all_done():
                break
    return records


def with_engine_fallback(spec: EncodeSpec, run: Callable[[EncodeSpec], Any]) -> Any:
    """``run(spec)``; if tiktoken ever disagrees with tokenizers, redo it with tokenizers alone."""
    from dataclasses import replace

    from llamactl.data.fast_bpe import EngineMismatch

    try:
        return run(spec)
    except EngineMismatch as e:
        if spec.fast is None:
            raise
        log.warning("%s; preparing again with the tokenizers engine", e)
        return run(replace(spec, fast=None))
