"""Batched, multiprocess tokenization of raw documents.

Worker processes import only numpy, json and ``tokenizers`` (never torch or transformers), receive
the serialized fast tokenizer once, and turn a batch of raw JSON lines or texts into one flat token
array plus per-document lengths: the cheapest thing to send back through a pipe. The parent keeps a
bounded number of batches in flight and consumes results in submission order, so the output is
deterministic and identical for any ``--workers``.
"""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from llamactl.errors import DataError


@dataclass(frozen=True)
class EncodeSpec:
    """How each document becomes tokens: ``bos_ids + tokenizer(text) + eos_ids``."""

    tokenizer_json: str
    add_special_tokens: bool = True
    bos_ids: tuple[int, ...] = ()
    eos_ids: tuple[int, ...] = ()


@dataclass
class RawBatch:
    """Documents as read from a source, before parsing/tokenizing.

    ``items`` are raw JSON lines (bytes) when ``field`` is set, else document texts.
    """

    items: list[Any]
    split: str
    field: str | None = None
    where: str = ""  # file the batch came from, for error messages
    nbytes: int = 0


@dataclass
class EncodedBatch:
    """One batch of tokenized documents for one split."""

    split: str
    flat: np.ndarray  # (sum(lengths),) int32/int64 token ids, separators included
    lengths: np.ndarray  # (n_docs,) int64
    chars: int = 0
    nbytes: int = 0
    skipped: int = 0  # lines without the text field... never silently: counted and reported
    extra: dict[str, Any] = field(default_factory=dict)


_WORKER: dict[str, Any] = {}


def _init_worker(spec: EncodeSpec) -> None:
    # One thread per worker: parallelism comes from the processes.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    _WORKER["tok"] = Tokenizer.from_str(spec.tokenizer_json)
    _WORKER["spec"] = spec


def texts_of(batch: RawBatch) -> list[str]:
    """Document texts of a raw batch; raises :class:`DataError` on malformed JSON or a missing field."""
    if batch.field is None:
        return batch.items
    texts: list[str] = []
    for line in batch.items:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{batch.where}: a line is not valid JSON; each line must be one JSON object") from None
        if not isinstance(obj, dict) or batch.field not in obj:
            keys = ", ".join(sorted(obj)) if isinstance(obj, dict) else type(obj).__name__
            raise DataError(f"{batch.where}: a record has no field {batch.field!r} (it has: {keys}); "
                            f"pass --field with one of those")
        value = obj[batch.field]
        if not isinstance(value, str):
            raise DataError(f"{batch.where}: field {batch.field!r} holds {type(value).__name__}, not text; "
                            f"pass --field naming a text field")
        texts.append(value)
    return texts


def encode_batch(tok: Any, spec: EncodeSpec, batch: RawBatch) -> EncodedBatch:
    """Tokenize one raw batch with a ``tokenizers.Tokenizer``: ``bos + ids + eos`` per document."""
    texts = texts_of(batch)
    encs = tok.encode_batch_fast(texts, add_special_tokens=spec.add_special_tokens)
    bos, eos = list(spec.bos_ids), list(spec.eos_ids)
    if bos or eos:
        docs = [bos + e.ids + eos for e in encs]
    else:
        docs = [e.ids for e in encs]
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    flat = np.fromiter((t for d in docs for t in d), dtype=np.int32, count=int(lengths.sum()))
    return EncodedBatch(split=batch.split, flat=flat, lengths=lengths, chars=sum(map(len, texts)),
                        nbytes=batch.nbytes)


def _encode_in_worker(batch: RawBatch) -> EncodedBatch:
    return encode_batch(_WORKER["tok"], _WORKER["spec"], batch)


def encode_stream(batches: Iterable[RawBatch], spec: EncodeSpec, *, workers: int,
                  should_stop: Callable[[], bool] | None = None) -> Iterator[EncodedBatch]:
    """Tokenize batches, in order, with ``workers`` processes (``<= 1``: in this process).

    Args:
        batches: raw batches in source order.
        spec: tokenizer and separators.
        workers: number of tokenizer processes; 0 or 1 tokenizes here (the Rust tokenizer may still
            use several threads).
        should_stop: polled between batches; when it returns True no more input is read.
    """
    if workers <= 1:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(spec.tokenizer_json)
        yield from ordered_map(lambda b: encode_batch(tok, spec, b), batches, should_stop=should_stop)
        return
    yield from pool_map(_encode_in_worker, batches, workers=workers, initializer=_init_worker, initargs=(spec,),
                        should_stop=should_stop)


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], *,
                should_stop: Callable[[], bool] | None = None) -> Iterator[Any]:
    """``map`` in this process that stops reading input once ``should_stop()`` is True."""
    stop = should_stop or (lambda: False)
    for item in items:
        if stop():
            return
        yield fn(item)


def pool_map(fn: Callable[[Any], Any], items: Iterable[Any], *, workers: int, initializer: Callable[..., None],
             initargs: tuple, should_stop: Callable[[], bool] | None = None) -> Iterator[Any]:
    """Ordered map over ``workers`` spawned processes with at most ``2 * workers`` items in flight.

    ``multiprocessing.Pool.imap`` would read the whole input ahead; this keeps memory flat however
    large the source. Results come back in input order, so the output does not depend on ``workers``.
    """
    import multiprocessing as mp

    stop = should_stop or (lambda: False)
    # spawn, not fork: the parent may hold torch/rayon threads, and fork after threads is unsafe.
    ctx = mp.get_context("spawn")
    pool = ctx.Pool(workers, initializer=initializer, initargs=initargs)
    pending: deque = deque()
    try:
        it = iter(items)
        exhausted = False
        while True:
            while not exhausted and len(pending) < 2 * workers and not stop():
                try:
                    item = next(it)
                except StopIteration:
                    exhausted = True
                    break
                pending.append(pool.apply_async(fn, (item,)))
            if not pending:
                break
            yield pending.popleft().get()
            if stop():
                break
    finally:
        pool.terminate()
        pool.join()
