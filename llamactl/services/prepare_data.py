"""``llamactl prepare-data``: C4 and local corpora to packed MDS shards; chat/SFT data; dataset info.

One public function per sub-command. Each takes an options dataclass, returns a
:class:`PrepareResult`, never prints, and reports progress through an optional callback.
Inputs are checked before anything is written; a failure leaves no output folder behind that
this run created, and never a split that looks complete but is not.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from dataclasses import field as dc_field
from itertools import chain
from pathlib import Path
from typing import Any, Iterable

from llamactl.data.mds import (
    SplitRecord, claim_output_dir, completed_split, fingerprint, read_manifest, remove_if_empty, remove_split,
)
from llamactl.data.pipeline import ProgressFn, SplitTarget, pack_lm_splits, with_engine_fallback
from llamactl.data.tokenize import make_encode_spec
from llamactl.errors import DataError, LlamactlError, UserInputError

log = logging.getLogger(__name__)

DEFAULT_TOKENIZER = "meta-llama/Llama-3.2-1B"
DEFAULT_C4_OUT = "datasets/c4_small"


@dataclass
class C4Options:
    """Options of ``prepare-data c4`` (defaults: the seed's ``c4_small``)."""

    out: str = DEFAULT_C4_OUT
    tokenizer: str = DEFAULT_TOKENIZER
    source: str | None = None  # local folder laid out like allenai/c4; None streams from the hub
    subset: str = "en"
    splits: tuple[str, ...] = ("train_small", "val_small")
    train_samples: int | None = 100_000  # None: every document of the C4 split
    val_samples: int | None = 10_000
    concat_tokens: int = 2048
    bos_text: str = ""
    eos_text: str | None = None  # None: the tokenizer's EOS unless it marks documents itself
    no_wrap: bool = False
    add_special_tokens: bool = True
    compression: str | None = None
    workers: int | None = None  # None: one per CPU core
    overwrite: bool = False
    engine: str = "auto"  # tokenizer engine: auto (tiktoken where proven equal), tiktoken, tokenizers


@dataclass
class CorpusOptions:
    """Options of ``prepare-data text|jsonl|parquet``."""

    kind: str  # "text", "jsonl" or "parquet"
    paths: list[str]
    out: str
    tokenizer: str = DEFAULT_TOKENIZER
    field: str = "text"
    unit: str = "file"  # text: one document per file, line or paragraph
    val_fraction: float = 0.0
    val_paths: list[str] = dc_field(default_factory=list)
    train_split: str = "train"
    val_split: str = "val"
    train_samples: int | None = None
    val_samples: int | None = None
    concat_tokens: int = 2048
    bos_text: str = ""
    eos_text: str | None = None
    no_wrap: bool = False
    add_special_tokens: bool = True
    compression: str | None = None
    workers: int | None = None
    overwrite: bool = False
    engine: str = "auto"


@dataclass
class PrepareResult:
    """What a preparation wrote (or found already done)."""

    out: str
    tokenizer: str
    seq_len: int
    splits: list[SplitRecord]
    reused: list[str]
    seconds: float
    tokens_per_second: float | None = None
    documents_per_second: float | None = None
    extra: dict[str, Any] = dc_field(default_factory=dict)


def default_workers() -> int:
    """One tokenizer process per CPU core available to this process."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# Below this much input, starting worker processes costs more than it saves: tokenize in-process
# (the Rust tokenizer still uses every core through its own threads).
SMALL_INPUT_BYTES = 16 << 20


def _effective_workers(requested: int | None, input_bytes: int | None) -> int:
    if requested is not None:
        return requested
    if input_bytes is not None and 0 < input_bytes < SMALL_INPUT_BYTES:
        return 0
    return default_workers()


def _check_common(concat_tokens: int, workers: int | None, compression: str | None) -> int | None:
    from llamactl.data.mds import COMPRESSIONS

    if concat_tokens <= 0:
        raise UserInputError(f"--concat-tokens must be a positive number of tokens, got {concat_tokens}")
    if workers is not None and workers < 0:
        raise UserInputError(f"--workers must be 0 or more, got {workers}")
    if compression and compression not in COMPRESSIONS:
        raise UserInputError(f"unknown --compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}")
    return workers  # type: ignore[return-value]


def _tokenizer_facts(name: str, tok: Any, spec: Any) -> dict[str, Any]:
    import hashlib

    from llamactl.data.tokenizer import tokenizer_ref, vocab_size_of

    return {"tokenizer": tokenizer_ref(name), "vocab_size": vocab_size_of(tok),
            "tokenizer_sha": hashlib.sha256(spec.tokenizer_json.encode()).hexdigest()[:16]}


def _plan_targets(out: Path, wanted: list[tuple[str, int | None, dict[str, Any], str]], overwrite: bool,
                  ) -> tuple[list[SplitTarget], list[SplitRecord]]:
    """Split targets still to write, and the complete splits (same settings) that are reused."""
    todo, reused = [], []
    for name, max_samples, settings, source in wanted:
        fp = fingerprint(settings)
        if overwrite:
            remove_split(out, name)
            todo.append(SplitTarget(name, max_samples, fp, source))
            continue
        rec = completed_split(out, name, fp)
        if rec is not None:
            reused.append(rec)
            continue
        manifest = read_manifest(out) or {"splits": {}}
        if name in manifest["splits"]:
            raise DataError(f"split {name!r} in {out} was prepared with other settings; pass --overwrite to "
                            f"replace it or choose another --out")
        todo.append(SplitTarget(name, max_samples, fp, source))
    return todo, reused


def _run(out: Path, dataset: dict[str, Any], wanted, overwrite: bool, write) -> tuple[list[SplitRecord], list[str]]:
    """Claim ``out``, skip what is done, run ``write(targets)``; on failure remove what this run created."""
    existed = out.exists()
    claim_output_dir(out, dataset)
    try:
        todo, reused = _plan_targets(out, wanted, overwrite)
        written = write(todo) if todo else {}
    except BaseException:
        if not existed:
            remove_if_empty(out)
        raise
    by_name = {r.name: r for r in reused} | written
    return [by_name[name] for name, *_ in wanted], [r.name for r in reused]


def _result(out: Path, tokenizer: str, seq_len: int, records: list[SplitRecord], reused: list[str],
            t0: float) -> PrepareResult:
    seconds = time.monotonic() - t0
    fresh = [r for r in records if r.name not in reused]
    tokens = sum(r.num_tokens for r in fresh)
    docs = sum(r.documents for r in fresh)
    return PrepareResult(out=str(out), tokenizer=tokenizer, seq_len=seq_len, splits=records, reused=reused,
                         seconds=seconds, tokens_per_second=tokens / seconds if fresh and seconds > 0 else None,
                         documents_per_second=docs / seconds if fresh and seconds > 0 else None)


def prepare_c4(opts: C4Options, progress: ProgressFn | None = None) -> PrepareResult:
    """Stream C4 (hub or ``--source`` folder), tokenize, pack to ``concat_tokens`` and write MDS splits.

    Split names ending in ``train``/``train_small`` read C4's train files and stop at
    ``train_samples``; ``val``/``val_small``/``validation`` read the validation files and stop at
    ``val_samples``. Splits already complete with the same settings are kept (resume).
    """
    from llamactl.data.sources import C4_SPLITS, c4_files, json_line_batches
    from llamactl.data.tokenizer import load_tokenizer, token_dtype

    t0 = time.monotonic()
    workers = _check_common(opts.concat_tokens, opts.workers, opts.compression)
    unknown = [s for s in opts.splits if s not in C4_SPLITS]
    if unknown or not opts.splits:
        raise UserInputError(f"unknown C4 split {', '.join(unknown) or '(none)'}; choose from {', '.join(C4_SPLITS)}")
    for n in (opts.train_samples, opts.val_samples):
        if n is not None and n <= 0:
            raise UserInputError(f"sample counts must be positive (omit them for all), got {n}")
    # Files are listed before anything is written, so a wrong --source fails cleanly.
    filesets = {s: c4_files(C4_SPLITS[s], source=opts.source, subset=opts.subset) for s in opts.splits}
    workers = _effective_workers(workers, sum(f.total_bytes for f in filesets.values()) if opts.source else None)
    tok = load_tokenizer(opts.tokenizer)
    spec, seps = make_encode_spec(tok, bos_text=opts.bos_text, eos_text=opts.eos_text,
                                  add_special_tokens=opts.add_special_tokens, engine=opts.engine)
    facts = _tokenizer_facts(opts.tokenizer, tok, spec)
    dtype = token_dtype(facts["vocab_size"])
    where = opts.source or "hf://datasets/allenai/c4"
    wanted = []
    for s in opts.splits:
        max_samples = opts.train_samples if C4_SPLITS[s] == "train" else opts.val_samples
        source = f"c4 {opts.subset}/{C4_SPLITS[s]} from {where}"
        settings = {"kind": "lm", "source": source, **facts, "seq_len": opts.concat_tokens, **seps,
                    "add_special_tokens": opts.add_special_tokens, "wrap": not opts.no_wrap,
                    "max_samples": max_samples, "dtype": dtype, "compression": opts.compression}
        wanted.append((s, max_samples, settings, source))
    out = Path(opts.out).expanduser()

    def write(todo: list[SplitTarget]) -> dict[str, SplitRecord]:
        records = {}
        for t in todo:  # one C4 split after the other: each reads its own files
            fs = filesets[t.name]

            def run(sp, t=t, fs=fs):
                fs.done_bytes = 0
                return pack_lm_splits(
                    data_dir=out, batches=json_line_batches(fs, field="text", route=lambda _i, n=t.name: n),
                    targets=[t], spec=sp, seq_len=opts.concat_tokens, wrap=not opts.no_wrap, token_dtype=dtype,
                    compression=opts.compression, workers=workers, progress=progress, fraction=fs.fraction)

            records |= with_engine_fallback(spec, run)
        return records

    dataset = {**facts, "seq_len": opts.concat_tokens, "kind": "lm", **seps}
    records, reused = _run(out, dataset, wanted, opts.overwrite, write)
    return _result(out, opts.tokenizer, opts.concat_tokens, records, reused, t0)


def prepare_corpus(opts: CorpusOptions, progress: ProgressFn | None = None) -> PrepareResult:
    """Tokenize and pack local text/JSON-lines/parquet files into a train split (and a validation split).

    The validation split takes an evenly spread ``val_fraction`` of the documents, or the files in
    ``val_paths``; without either only the train split is written.
    """
    from llamactl.data import sources as src
    from llamactl.data.tokenizer import load_tokenizer, token_dtype

    t0 = time.monotonic()
    workers = _check_common(opts.concat_tokens, opts.workers, opts.compression)
    suffixes = {"text": src.TEXT_SUFFIXES, "jsonl": src.JSON_SUFFIXES, "parquet": src.PARQUET_SUFFIXES}
    if opts.kind not in suffixes:
        raise UserInputError(f"unknown corpus kind {opts.kind!r}; choose text, jsonl or parquet")
    if opts.val_paths and opts.val_fraction:
        raise UserInputError("pass either --val-fraction or --val-file, not both")
    if opts.train_split == opts.val_split:
        raise UserInputError(f"the train and validation splits need different names (both are {opts.train_split!r})")
    route = src.fraction_router(opts.val_fraction, opts.train_split, opts.val_split)
    train_files = src.local_files(opts.paths, suffixes[opts.kind], opts.kind)
    val_files = src.local_files(opts.val_paths, suffixes[opts.kind], opts.kind) if opts.val_paths else None
    workers = _effective_workers(workers, train_files.total_bytes + (val_files.total_bytes if val_files else 0))
    if opts.kind == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserInputError("reading parquet needs pyarrow; install it with `pip install pyarrow`") from None
    tok = load_tokenizer(opts.tokenizer)
    spec, seps = make_encode_spec(tok, bos_text=opts.bos_text, eos_text=opts.eos_text,
                                  add_special_tokens=opts.add_special_tokens, engine=opts.engine)
    facts = _tokenizer_facts(opts.tokenizer, tok, spec)
    dtype = token_dtype(facts["vocab_size"])

    def batches(fs: src.FileSet, route_fn) -> Iterable:
        if opts.kind == "jsonl":
            return src.json_line_batches(fs, field=opts.field, route=route_fn)
        if opts.kind == "parquet":
            return src.parquet_batches(fs, field=opts.field, route=route_fn)
        return src.text_batches(fs, route=route_fn, unit=opts.unit)

    splits: list[tuple[str, int | None]] = [(opts.train_split, opts.train_samples)]
    if opts.val_fraction or val_files is not None:
        splits.append((opts.val_split, opts.val_samples))
    common = {"kind": "lm", "corpus": opts.kind, "files": sorted(train_files.files),
              "val_files": sorted(val_files.files) if val_files else [], "field": opts.field, "unit": opts.unit,
              "val_fraction": opts.val_fraction, **facts, "seq_len": opts.concat_tokens, **seps,
              "add_special_tokens": opts.add_special_tokens, "wrap": not opts.no_wrap, "dtype": dtype,
              "compression": opts.compression,
              "mtimes": [os.stat(f).st_mtime_ns for f in train_files.files + (val_files.files if val_files else [])]}
    desc = f"{opts.kind}: {len(train_files.files)} file(s)"
    wanted = [(name, n, {**common, "split": name, "max_samples": n}, desc) for name, n in splits]
    out = Path(opts.out).expanduser()

    def write(todo: list[SplitTarget]) -> dict[str, SplitRecord]:
        def run(sp):
            train_files.done_bytes = 0
            if val_files is None:
                stream = batches(train_files, route)
                fraction = train_files.fraction
            else:
                val_files.done_bytes = 0
                train_name = opts.train_split
                stream = chain(batches(train_files, lambda _i: train_name),
                               batches(val_files, lambda _i: opts.val_split))
                total = train_files.total_bytes + val_files.total_bytes

                def fraction() -> float | None:
                    done = (train_files.fraction() or 0) * train_files.total_bytes + \
                        (val_files.fraction() or 0) * val_files.total_bytes
                    return done / total if total else None
            return pack_lm_splits(data_dir=out, batches=stream, targets=todo, spec=sp, seq_len=opts.concat_tokens,
                                  wrap=not opts.no_wrap, token_dtype=dtype, compression=opts.compression,
                                  workers=workers, progress=progress, fraction=fraction)

        return with_engine_fallback(spec, run)

    dataset = {**facts, "seq_len": opts.concat_tokens, "kind": "lm", **seps}
    records, reused = _run(out, dataset, wanted, opts.overwrite, write)
    return _result(out, opts.tokenizer, opts.concat_tokens, records, reused, t0)


@dataclass
class SFTOptions:
    """Options of ``prepare-data chat|sft``."""

    mode: str  # "chat" (messages lists) or "sft" (prompt/response pairs)
    paths: list[str]
    out: str
    tokenizer: str = DEFAULT_TOKENIZER
    messages_field: str = "messages"
    prompt_field: str = "prompt"
    response_field: str = "response"
    chat_template: bool = False  # sft pairs: render with the tokenizer's chat template
    mask_prompt: bool = True
    pack: bool = True
    overflow: str = "truncate"
    val_fraction: float = 0.0
    val_paths: list[str] = dc_field(default_factory=list)
    train_split: str = "train"
    val_split: str = "val"
    train_samples: int | None = None
    val_samples: int | None = None
    seq_len: int = 2048
    compression: str | None = None
    workers: int | None = None
    overwrite: bool = False


def prepare_sft(opts: SFTOptions, progress: ProgressFn | None = None) -> PrepareResult:
    """Render instruction data (chat ``messages`` or prompt/response pairs), mask prompts, pack, write MDS.

    The splits hold ``tokens``, ``labels`` (``-100`` where no loss is taken) and ``sequence_id``
    columns; :func:`llamactl.data.loaders.build_lm_dataloader` reads them as SFT batches.
    """
    from llamactl.data import sources as src
    from llamactl.data.pipeline import pack_sft_splits
    from llamactl.data.sft import SFTSpec
    from llamactl.data.tokenizer import load_tokenizer, token_dtype, tokenizer_ref, vocab_size_of

    t0 = time.monotonic()
    workers = _check_common(opts.seq_len, opts.workers, opts.compression)
    if opts.mode not in ("chat", "sft"):
        raise UserInputError(f"unknown instruction format {opts.mode!r}; choose chat or sft")
    if opts.overflow not in ("truncate", "drop"):
        raise UserInputError(f"--overflow must be truncate or drop, got {opts.overflow!r}")
    if opts.val_paths and opts.val_fraction:
        raise UserInputError("pass either --val-fraction or --val-file, not both")
    route = src.fraction_router(opts.val_fraction, opts.train_split, opts.val_split)
    train_files = src.local_files(opts.paths, src.JSON_SUFFIXES, "JSON lines")
    val_files = src.local_files(opts.val_paths, src.JSON_SUFFIXES, "JSON lines") if opts.val_paths else None
    workers = _effective_workers(workers, train_files.total_bytes + (val_files.total_bytes if val_files else 0))
    tok = load_tokenizer(opts.tokenizer)
    if (opts.mode == "chat" or opts.chat_template) and not getattr(tok, "chat_template", None):
        raise DataError(f"tokenizer {opts.tokenizer!r} has no chat template; use a chat model's tokenizer"
                        + (" or `prepare-data sft` without --chat-template" if opts.mode == "sft" else ""))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    vocab = vocab_size_of(tok)
    dtype = token_dtype(vocab)
    import hashlib

    facts = {"tokenizer": tokenizer_ref(opts.tokenizer), "vocab_size": vocab,
             "tokenizer_sha": hashlib.sha256(tok._tokenizer.to_str().encode()).hexdigest()[:16]}
    splits: list[tuple[str, int | None]] = [(opts.train_split, opts.train_samples)]
    if opts.val_fraction or val_files is not None:
        splits.append((opts.val_split, opts.val_samples))
    all_files = train_files.files + (val_files.files if val_files else [])
    common = {"kind": "sft", "mode": opts.mode, "files": train_files.files,
              "val_files": val_files.files if val_files else [], "val_fraction": opts.val_fraction, **facts,
              "seq_len": opts.seq_len, "fields": [opts.messages_field, opts.prompt_field, opts.response_field],
              "chat_template": opts.chat_template, "template": getattr(tok, "chat_template", None),
              "mask_prompt": opts.mask_prompt, "pack": opts.pack, "overflow": opts.overflow, "dtype": dtype,
              "compression": opts.compression, "mtimes": [os.stat(f).st_mtime_ns for f in all_files]}
    desc = f"{opts.mode}: {len(train_files.files)} file(s)"
    wanted = [(name, n, {**common, "split": name, "max_samples": n}, desc) for name, n in splits]
    out = Path(opts.out).expanduser()
    field_name = opts.messages_field if opts.mode == "chat" else opts.prompt_field

    def write(todo: list[SplitTarget]) -> dict[str, SplitRecord]:
        spec = SFTSpec(mode="chat" if opts.mode == "chat" else "pair", messages_field=opts.messages_field,
                       prompt_field=opts.prompt_field, response_field=opts.response_field,
                       chat_template=opts.chat_template, mask_prompt=opts.mask_prompt)
        if val_files is None:
            stream = src.json_line_batches(train_files, field=field_name, route=route, batch_bytes=1 << 18)
        else:
            stream = chain(
                src.json_line_batches(train_files, field=field_name, route=lambda _i: opts.train_split,
                                      batch_bytes=1 << 18),
                src.json_line_batches(val_files, field=field_name, route=lambda _i: opts.val_split,
                                      batch_bytes=1 << 18))
        return pack_sft_splits(data_dir=out, batches=stream, targets=todo, tok=tok, spec=spec, seq_len=opts.seq_len,
                               pad_id=pad_id, pack=opts.pack, overflow=opts.overflow, token_dtype=dtype,
                               compression=opts.compression, workers=workers, progress=progress,
                               fraction=train_files.fraction)

    dataset = {**facts, "seq_len": opts.seq_len, "kind": "sft", "pad_id": pad_id}
    records, reused = _run(out, dataset, wanted, opts.overwrite, write)
    return _result(out, opts.tokenizer, opts.seq_len, records, reused, t0)


@dataclass
class DatasetInfo:
    """What ``prepare-data info`` shows."""

    path: str
    tokenizer: str | None
    vocab_size: int | None
    seq_len: int | None
    splits: list[Any]  # SplitInfo
    records: dict[str, Any]
    sample_split: str | None = None
    sample_index: int = 0
    sample_text: str | None = None
    sample_tokens: list[int] | None = None
    sample_labels_text: str | None = None
    note: str | None = None


def dataset_info(data_dir: str, *, split: str | None = None, sample: int = 0, decode: bool = True,
                 tokenizer: str | None = None, max_chars: int = 600) -> DatasetInfo:
    """Splits, sample and token counts, tokenizer and sequence length of a prepared dataset, with one
    sample decoded (from ``split``, default the first split)."""
    from llamactl.data.loaders import available_splits, build_lm_dataset, split_info

    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist; run `llamactl prepare-data` first")
    names = available_splits(root)
    if not names:
        raise DataError(f"{root} holds no prepared split (no */index.json); run `llamactl prepare-data` first")
    infos = [split_info(root, n) for n in names]
    manifest = read_manifest(root) or {}
    info = DatasetInfo(path=str(root), tokenizer=manifest.get("tokenizer"), vocab_size=manifest.get("vocab_size"),
                       seq_len=manifest.get("seq_len") or infos[0].seq_len, splits=infos,
                       records=manifest.get("splits", {}))
    if not manifest:
        info.note = "no llamactl manifest: an LLM Foundry (or other MDS) dataset; tokenizer unknown"
    pick = split or names[0]
    if pick not in names:
        raise DataError(f"{root} has no split {pick!r}; it has: {', '.join(names)}")
    ds = build_lm_dataset(data_dir=root, split=pick, micro_batch_size=1, max_seq_len=1 << 30, shuffle=False, seed=0)
    if not 0 <= sample < ds.num_samples:
        raise UserInputError(f"--sample must be in [0, {ds.num_samples}), got {sample}")
    item = ds[sample]
    ids = item["input_ids"].tolist()
    info.sample_split, info.sample_index, info.sample_tokens = pick, sample, ids
    tok_name = tokenizer or info.tokenizer
    if decode and tok_name:
        from llamactl.data.tokenizer import load_tokenizer

        try:
            tok = load_tokenizer(tok_name)
        except LlamactlError as e:
            info.note = f"sample not decoded: {e}"
        else:
            info.sample_text = tok.decode(ids)[:max_chars]
            labels = item["labels"].tolist()
            if any(x == -100 for x in labels):
                kept = [t if lab != -100 else None for t, lab in zip(ids, labels)]
                # Show only what is trained on, with the masked runs collapsed to one marker.
                parts, run = [], []
                for t in kept:
                    if t is None:
                        if run:
                            parts.append(tok.decode(run))
                            run = []
                        if not parts or parts[-1] != " ⟨masked⟩ ":
                            parts.append(" ⟨masked⟩ ")
                    else:
                        run.append(t)
                if run:
                    parts.append(tok.decode(run))
                info.sample_labels_text = "".join(parts)[:max_chars]
    elif decode and not tok_name:
        info.note = (info.note or "") + "; pass --tokenizer to decode the sample"
    return info
