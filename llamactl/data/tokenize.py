"""Batched, multiprocess tokenization of raw documents.

Worker processes import only numpy, json and ``tokenizers`` (never torch or transformers), receive
the serialized fast tokenizer once, and turn a batch of raw JSON lines or texts into one flat token
array plus per-document lengths: the cheapest thing to send back through a pipe. The parent keeps a
bounded number of batches in flight and consumes results in submission order, so the output is
deterministic and identical for any ``--workers``.
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from llamactl.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodeSpec:
    """How each document becomes tokens: ``bos_ids + tokenizer(text) + eos_ids``.

    With ``fast`` set (see :mod:`llamactl.data.fast_bpe`), tiktoken produces ``tokenizer(text)``
    as ``template[0] + ids + template[1]``, and every ``verify_every``-th document is re-tokenized
    with Hugging Face tokenizers to prove it is the same.
    """

    tokenizer_json: str
    add_special_tokens: bool = True
    bos_ids: tuple[int, ...] = ()
    eos_ids: tuple[int, ...] = ()
    fast: dict | None = None
    template: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())
    verify_every: int = 128

    @property
    def engine(self) -> str:
        return "tiktoken" if self.fast is not None else "tokenizers"


class DocEncoder:
    """Tokenizes document texts as ``spec`` says, in whichever process it is built."""

    def __init__(self, spec: EncodeSpec) -> None:
        from tokenizers import Tokenizer

        self.spec = spec
        self.hf = Tokenizer.from_str(spec.tokenizer_json)
        self.fast = None
        self.seen = 0
        if spec.fast is not None:
            from llamactl.data.fast_bpe import build_encoding

            self.fast = build_encoding(spec.fast)
            pre, post = spec.template if spec.add_special_tokens else ((), ())
            self.pre, self.post = list(pre), list(post)
            import re

            self.needs_hf = re.compile(spec.fast["fallback_chars"]).search if spec.fast["fallback_chars"] else None

    def __call__(self, texts: list[str]) -> list[list[int]]:
        spec = self.spec
        if self.fast is None:
            return [e.ids for e in self.hf.encode_batch_fast(texts, add_special_tokens=spec.add_special_tokens)]
        enc, hf, add = self.fast.encode, self.hf.encode, spec.add_special_tokens
        if self.needs_hf is None:
            out = [self.pre + enc(t, allowed_special="all") + self.post for t in texts]
        else:  # characters tiktoken has no bytes for: those documents go through tokenizers
            out = [hf(t, add_special_tokens=add).ids if self.needs_hf(t) else
                   self.pre + enc(t, allowed_special="all") + self.post for t in texts]
        # Keep proving equality: a document out of every `verify_every` goes through tokenizers too.
        k = spec.verify_every
        first = (-self.seen) % k
        for i in range(first, len(texts), k):
            ref = self.hf.encode(texts[i], add_special_tokens=spec.add_special_tokens).ids
            if ref != out[i]:
                from llamactl.data.fast_bpe import EngineMismatch

                raise EngineMismatch(f"tiktoken and tokenizers differ on a document starting {texts[i][:40]!r}")
        self.seen += len(texts)
        return out


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
    _WORKER["enc"] = DocEncoder(spec)


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


def encode_batch(encoder: DocEncoder, batch: RawBatch) -> EncodedBatch:
    """Tokenize one raw batch: ``bos + ids + eos`` per document, as one flat array plus lengths."""
    from itertools import chain

    spec = encoder.spec
    texts = texts_of(batch)
    docs = encoder(texts)
    bos, eos = list(spec.bos_ids), list(spec.eos_ids)
    if bos or eos:
        docs = [bos + d + eos for d in docs]
    lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
    flat = np.fromiter(chain.from_iterable(docs), dtype=np.int32, count=int(lengths.sum()))
    return EncodedBatch(split=batch.split, flat=flat, lengths=lengths, chars=sum(map(len, texts)),
                        nbytes=batch.nbytes)


def _encode_in_worker(batch: RawBatch) -> EncodedBatch:
    return encode_batch(_WORKER["enc"], batch)


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
        encoder = DocEncoder(spec)
        yield from ordered_map(lambda b: encode_batch(encoder, b), batches, should_stop=should_stop)
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

    ``Pool.imap`` would read the whole input ahead, and ``Pool`` waits forever for the result of a
    worker that died (killed for memory); ``ProcessPoolExecutor`` reports that, and the bounded
    queue keeps memory flat however large the source. Results come back in input order, so the
    output does not depend on ``workers``.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from llamactl.errors import RunError

    stop = should_stop or (lambda: False)
    # spawn, not fork: the parent may hold torch/rayon threads, and fork after threads is unsafe.
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=initializer,
                               initargs=initargs)
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
                pending.append(pool.submit(fn, item))
            if not pending:
                break
            try:
                result = pending.popleft().result()
            except BrokenProcessPool:
                raise RunError(f"a tokenizer worker process died (out of memory?); run again with fewer --workers "
                               f"(now {workers})") from None
            yield result
            if stop():
                break
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


ENGINES = ("auto", "tiktoken", "tokenizers")


def make_encode_spec(tok: Any, *, bos_text: str, eos_text: str | None, add_special_tokens: bool,
                     engine: str = "auto") -> tuple[EncodeSpec, dict[str, Any]]:
    """Separators, tokenizer and engine of the workers, and the separator facts for the manifest.

    ``eos_text=None`` picks a separator automatically: nothing if the tokenizer marks documents with a
    BOS/EOS itself, else its EOS token.
    """
    from llamactl.data import fast_bpe
    from llamactl.data.tokenizer import token_ids_of
    from llamactl.errors import UserInputError

    if engine not in ENGINES:
        raise UserInputError(f"unknown --engine {engine!r}; choose one of {', '.join(ENGINES)}")
    probe = tok("a", add_special_tokens=add_special_tokens)["input_ids"]
    marks_docs = add_special_tokens and len(probe) > 0 and (
        probe[0] == tok.bos_token_id or probe[-1] == tok.eos_token_id)
    if eos_text is None:
        # Documents must be told apart in the packed stream: if the tokenizer adds no BOS/EOS by
        # itself (e.g. the bare Llama 3 tokenizer.json), append its EOS token.
        eos_text = "" if marks_docs or bos_text else (tok.eos_token or "")
    bos_ids, eos_ids = token_ids_of(tok, bos_text), token_ids_of(tok, eos_text)
    if not (marks_docs or bos_ids or eos_ids):
        raise UserInputError("this tokenizer adds no BOS/EOS token and has none to append, so documents would run "
                             "together; pass --eos-text (e.g. '<|endoftext|>') or --bos-text")
    tokenizer_json = tok._tokenizer.to_str()
    fast, template = None, ((), ())
    if engine != "tokenizers":
        params, why = fast_bpe.tiktoken_params(tokenizer_json)
        tmpl = fast_bpe.template_ids(tok._tokenizer) if params else None
        if params and tmpl is None:
            why = "its post-processor does more than add fixed tokens"
        if params and tmpl is not None:
            fast, template = params, (tuple(tmpl[0]), tuple(tmpl[1]))
        elif engine == "tiktoken":
            raise UserInputError(f"--engine tiktoken cannot reproduce this tokenizer ({why}); use --engine auto")
        else:
            log.info("tokenizer engine: tokenizers (tiktoken not usable: %s)", why)
    spec = EncodeSpec(tokenizer_json=tokenizer_json, add_special_tokens=add_special_tokens,
                      bos_ids=tuple(bos_ids), eos_ids=tuple(eos_ids), fast=fast, template=template)
    return spec, {"bos_text": bos_text, "eos_text": eos_text, "bos_ids": bos_ids, "eos_ids": eos_ids}
