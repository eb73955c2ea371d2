"""MDS splits on disk: atomic writing, the dataset manifest, and reading what was done.

Layout of a prepared dataset (LLM Foundry's, plus one file of ours)::

    DIR/
      llamactl-data.json        manifest: tokenizer, seq_len, and one record per COMPLETE split
      train_small/index.json    mosaicml-streaming index + shard.00000.mds ... (a `tokens` column)
      val_small/...

A split is written into ``DIR/.partial-<split>/`` and renamed to ``DIR/<split>/`` only when every
shard and its index are on disk; the manifest is then updated atomically (temp file + rename). A
split directory therefore either is complete and recorded in the manifest, or does not exist; an
interrupted run leaves only a ``.partial-*`` folder that the next run deletes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llamactl.errors import DataError

MANIFEST = "llamactl-data.json"
FORMAT = "llamactl-mds/1"
PARTIAL_PREFIX = ".partial-"
COMPRESSIONS = ("zstd", "gz", "bz2", "br", "snappy")


@dataclass
class SplitRecord:
    """What the manifest records about one complete split."""

    name: str
    kind: str  # "lm" (tokens only) or "sft" (tokens, labels, sequence_id)
    num_samples: int
    num_tokens: int  # tokens stored (num_samples * seq_len for packed data)
    seq_len: int
    documents: int
    fingerprint: str
    columns: dict[str, str]
    source: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def fingerprint(settings: dict[str, Any]) -> str:
    """A short stable hash of the settings that determine a split's contents."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def read_manifest(data_dir: str | Path) -> dict[str, Any] | None:
    """The manifest of a prepared dataset, or None when the folder has none."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise DataError(f"{path} is unreadable or corrupt; delete the folder and prepare the data again") from None
    if data.get("format") != FORMAT:
        raise DataError(f"{path} was written by an incompatible version ({data.get('format')}); prepare the data again")
    return data


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def claim_output_dir(data_dir: str | Path, dataset: dict[str, Any]) -> dict[str, Any]:
    """Make ``data_dir`` ours (create it, or check it already is) and return its manifest.

    Args:
        data_dir: output folder.
        dataset: dataset-level facts (tokenizer, seq_len, kind); must match an existing manifest's
            tokenizer, since all splits of one dataset are read with one tokenizer.

    Raises:
        DataError: the folder exists, is not empty, and holds no llamactl manifest.
    """
    root = Path(data_dir)
    if root.exists() and not root.is_dir():
        raise DataError(f"output {root} is a file; pass a folder path")
    manifest = read_manifest(root) if root.exists() else None
    if manifest is None:
        if root.exists() and any(p for p in root.iterdir() if not p.name.startswith(PARTIAL_PREFIX)):
            raise DataError(f"output folder {root} exists and was not made by llamactl prepare-data; "
                            f"choose another --out or empty it")
        manifest = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "splits": {}, **dataset}
    else:
        for key in ("tokenizer", "vocab_size"):
            if key in dataset and manifest.get(key) not in (None, dataset[key]):
                raise DataError(f"{root} holds splits tokenized with {manifest.get(key)!r}, not {dataset[key]!r}; "
                                f"choose another --out or delete it")
        manifest.update({k: v for k, v in dataset.items() if k not in manifest})
    root.mkdir(parents=True, exist_ok=True)
    # Leftovers of an interrupted run: never complete, never read.
    for p in root.glob(f"{PARTIAL_PREFIX}*"):
        shutil.rmtree(p, ignore_errors=True)
    _write_json_atomic(root / MANIFEST, manifest)
    return manifest


def completed_split(data_dir: str | Path, name: str, fp: str) -> SplitRecord | None:
    """The record of split ``name`` if it is complete and was made with settings ``fp``.

    Raises:
        DataError: the split exists but was made with other settings.
    """
    manifest = read_manifest(data_dir) or {"splits": {}}
    rec = manifest["splits"].get(name)
    if rec is None:
        if (Path(data_dir) / name).exists():
            raise DataError(f"{Path(data_dir) / name} exists but is not a recorded split; "
                            f"delete it or pass --overwrite")
        return None
    if rec["fingerprint"] != fp:
        return None
    if not (Path(data_dir) / name / "index.json").is_file():
        return None
    return SplitRecord(**rec)


class SplitWriter:
    """Write one split's samples into ``.partial-<split>`` and publish it atomically on :meth:`commit`.

    Args:
        data_dir: dataset folder (already claimed with :func:`claim_output_dir`).
        name: split name (``train_small``, ``val``...).
        columns: MDS column encodings, e.g. ``{"tokens": "ndarray:uint16"}``.
        compression: None or one of :data:`COMPRESSIONS`.
        shard_size: bytes per shard before compression.
    """

    def __init__(self, data_dir: str | Path, name: str, columns: dict[str, str], *,
                 compression: str | None = None, shard_size: int = 1 << 26) -> None:
        from streaming import MDSWriter

        if compression and compression not in COMPRESSIONS:
            raise DataError(f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}")
        self.root = Path(data_dir)
        self.name = name
        self.columns = columns
        self.partial = self.root / f"{PARTIAL_PREFIX}{name}"
        shutil.rmtree(self.partial, ignore_errors=True)
        self._dtypes = {k: np.dtype(v.split(":")[1]) for k, v in columns.items()}
        self._writer = MDSWriter(columns=columns, out=str(self.partial), compression=compression,
                                 size_limit=shard_size)
        self.num_samples = 0
        self.num_tokens = 0
        self._closed = False

    def write(self, **arrays: np.ndarray) -> None:
        """Write samples: each keyword is a column and holds a ``(n, T)`` array (n samples)."""
        first = arrays["tokens"]
        w = self._writer
        cast = {k: np.ascontiguousarray(v, dtype=self._dtypes[k]) for k, v in arrays.items()}
        for i in range(first.shape[0]):
            w.write({k: v[i] for k, v in cast.items()})
        self.num_samples += int(first.shape[0])
        self.num_tokens += int(first.size)

    def commit(self, record: SplitRecord) -> SplitRecord:
        """Finish the shards, move the split into place and record it in the manifest."""
        self._writer.finish()
        self._closed = True
        final = self.root / self.name
        if final.exists():
            shutil.rmtree(final)
        os.replace(self.partial, final)
        manifest = read_manifest(self.root) or {"format": FORMAT, "splits": {}}
        manifest["splits"][self.name] = asdict(record)
        _write_json_atomic(self.root / MANIFEST, manifest)
        return record

    def abort(self) -> None:
        """Drop everything written so far."""
        if not self._closed:
            try:
                self._writer.cancel_future_jobs()  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - best effort, the folder goes anyway
                pass
            self._closed = True
        shutil.rmtree(self.partial, ignore_errors=True)


def remove_split(data_dir: str | Path, name: str) -> None:
    """Delete a split and its manifest record (used by ``--overwrite``)."""
    root = Path(data_dir)
    manifest = read_manifest(root)
    if manifest and name in manifest["splits"]:
        del manifest["splits"][name]
        _write_json_atomic(root / MANIFEST, manifest)
    shutil.rmtree(root / name, ignore_errors=True)


def remove_if_empty(data_dir: str | Path) -> None:
    """Delete an output folder that holds nothing but an empty manifest (a run that failed at once)."""
    root = Path(data_dir)
    manifest = read_manifest(root) if root.is_dir() else None
    if manifest is not None and not manifest["splits"]:
        leftovers = [p for p in root.iterdir() if p.name != MANIFEST and not p.name.startswith(PARTIAL_PREFIX)]
        if not leftovers:
            shutil.rmtree(root, ignore_errors=True)


def index_num_samples(split_dir: str | Path) -> tuple[int, list[dict[str, Any]]]:
    """Number of samples and the shard entries of an MDS split's ``index.json``."""
    path = Path(split_dir) / "index.json"
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise DataError(f"{path} is missing or unreadable; prepare the split again") from None
    shards = index.get("shards", [])
    return sum(int(s.get("samples", 0)) for s in shards), shards
