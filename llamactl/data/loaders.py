"""Training/eval data loaders over prepared MDS splits (ours or LLM Foundry's ``tokens`` shards).

The dataset is a ``streaming.StreamingDataset`` subclass, and the loader a plain
``torch.utils.data.DataLoader`` over it, so Composer finds the dataset behind the loader and
checkpoints its position (``state_dict(num_samples, from_beginning=True)``) with every checkpoint;
on resume it calls ``load_state_dict`` and the next epoch iterator starts at the saved sample in
the same (seeded) order. Shuffling is deterministic given ``seed``.

Batches are dicts of ``torch.int64`` tensors of shape ``(B, T)``:

* ``input_ids``;
* ``labels`` aligned with ``input_ids`` (the model shifts them): a copy of ``input_ids`` for plain
  language-model data, ``-100`` on masked (prompt, padding) positions for SFT data;
* SFT data only: ``sequence_id`` (which packed example each token belongs to; ``-1`` on padding)
  and ``position_ids`` (restarting at 0 at each packed example), so attention can be made block
  diagonal and every example sees the positions it would see alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from streaming import StreamingDataset
from torch.utils.data import DataLoader

from llamactl.data.mds import MANIFEST, index_num_samples, read_manifest
from llamactl.errors import ConfigError, DataError

IGNORE_INDEX = -100


@dataclass
class SplitInfo:
    """What a prepared split holds."""

    name: str
    num_samples: int
    seq_len: int | None
    tokenizer: str | None
    kind: str  # "lm" or "sft"
    num_tokens: int | None
    columns: dict[str, str]


def available_splits(data_dir: str | Path) -> list[str]:
    """Names of the sub-folders of ``data_dir`` that hold an MDS ``index.json``."""
    root = Path(data_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "index.json").is_file() and not p.name.startswith("."))


def _check_split(data_dir: str | Path, split: str) -> Path:
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist; run `llamactl prepare-data` first")
    split_dir = root / split
    if not (split_dir / "index.json").is_file():
        found = available_splits(root)
        if not found:
            raise DataError(f"{root} holds no prepared split (no */index.json); run `llamactl prepare-data` first")
        raise DataError(f"{root} has no split {split!r}; it has: {', '.join(found)}")
    return split_dir


def _columns(split_dir: Path) -> dict[str, str]:
    index = json.loads((split_dir / "index.json").read_text())
    shards = index.get("shards") or []
    if not shards:
        return {}
    s = shards[0]
    return dict(zip(s.get("column_names", []), s.get("column_encodings", [])))


def split_info(data_dir: str | Path, split: str) -> SplitInfo:
    """Samples, sequence length and tokenizer of a prepared split.

    Works on LLM Foundry datasets too (no manifest): the sequence length is then read from the first
    sample and the tokenizer is unknown (None).
    """
    split_dir = _check_split(data_dir, split)
    num_samples, _ = index_num_samples(split_dir)
    columns = _columns(split_dir)
    manifest = read_manifest(data_dir) or {}
    rec = manifest.get("splits", {}).get(split)
    if rec is not None:
        return SplitInfo(name=split, num_samples=num_samples, seq_len=rec["seq_len"],
                         tokenizer=manifest.get("tokenizer"), kind=rec["kind"], num_tokens=rec["num_tokens"],
                         columns=columns)
    seq_len = None
    if "tokens" not in columns:
        raise DataError(f"{split_dir} has no `tokens` column (it has: {', '.join(columns) or 'none'}); "
                        f"prepare it with `llamactl prepare-data`")
    if num_samples:
        seq_len = int(_first_sample_len(split_dir))
    kind = "sft" if "labels" in columns else "lm"
    return SplitInfo(name=split, num_samples=num_samples, seq_len=seq_len, tokenizer=None, kind=kind,
                     num_tokens=None if seq_len is None else seq_len * num_samples, columns=columns)


def _first_sample_len(split_dir: Path) -> int:
    from streaming.base.format import reader_from_json

    index = json.loads((split_dir / "index.json").read_text())
    shard = reader_from_json(str(split_dir.parent), split_dir.name, index["shards"][0])
    if index["shards"][0].get("compression"):
        # Reading a compressed shard needs it decompressed first; the dataset does that.
        ds = StreamingDataset(local=str(split_dir.parent), split=split_dir.name, batch_size=1)
        return len(ds[0]["tokens"])
    return len(shard.get_item(0)["tokens"])


class PackedTokenDataset(StreamingDataset):
    """A ``StreamingDataset`` of fixed-length token samples that yields model-ready tensors.

    Args:
        data_dir: the dataset folder (holding ``<split>/index.json``).
        split: split name.
        max_seq_len: samples are cut to this many tokens.
        token_encoding_type: dtype of legacy ``bytes`` token columns (numpy columns carry their own).
        **kwargs: passed to ``StreamingDataset`` (``shuffle``, ``shuffle_seed``, ``batch_size``...).
    """

    def __init__(self, *, data_dir: str | Path, split: str, max_seq_len: int,
                 token_encoding_type: str = "int64", **kwargs: Any) -> None:
        super().__init__(local=str(Path(data_dir).expanduser()), remote=None, split=split, **kwargs)
        self.max_seq_len = max_seq_len
        self.token_dtype = np.dtype(token_encoding_type)

    def _column(self, sample: dict[str, Any], key: str) -> np.ndarray:
        value = sample[key]
        if not isinstance(value, np.ndarray):  # LLM Foundry's older `bytes` encoding
            value = np.frombuffer(value, dtype=self.token_dtype)
        return value[:self.max_seq_len]

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        sample = super().__getitem__(idx)
        ids = torch.from_numpy(self._column(sample, "tokens").astype(np.int64))  # (T,)
        out = {"input_ids": ids}
        if "labels" in sample:
            out["labels"] = torch.from_numpy(self._column(sample, "labels").astype(np.int64))
        else:
            out["labels"] = ids.clone()
        if "sequence_id" in sample:
            seq = self._column(sample, "sequence_id").astype(np.int64)
            out["sequence_id"] = torch.from_numpy(seq)
            out["position_ids"] = torch.from_numpy(positions_from_sequence_id(seq))
        return out


def positions_from_sequence_id(seq: np.ndarray) -> np.ndarray:
    """Position of each token inside its packed example: ``[0,0,1,1,1,-1] -> [0,1,0,1,2,0]``."""
    idx = np.arange(seq.size, dtype=np.int64)
    starts = np.ones(seq.size, dtype=bool)
    starts[1:] = seq[1:] != seq[:-1]
    seg_start = np.maximum.accumulate(np.where(starts, idx, 0))
    return idx - seg_start


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack equal-length samples into ``(B, T)`` tensors."""
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def build_lm_dataset(*, data_dir: str | Path, split: str, micro_batch_size: int, max_seq_len: int,
                     shuffle: bool, seed: int) -> PackedTokenDataset:
    """The :class:`PackedTokenDataset` behind :func:`build_lm_dataloader`."""
    if max_seq_len <= 0:
        raise ConfigError(f"max_seq_len must be positive, got {max_seq_len}")
    if micro_batch_size <= 0:
        raise ConfigError(f"the micro batch size must be positive, got {micro_batch_size}")
    split_dir = _check_split(data_dir, split)
    num_samples, _ = index_num_samples(split_dir)
    if num_samples == 0:
        raise DataError(f"split {split!r} in {data_dir} holds no samples; prepare it with more data")
    if "tokens" not in _columns(split_dir):
        raise DataError(f"{split_dir} has no `tokens` column; prepare it with `llamactl prepare-data`")
    return PackedTokenDataset(data_dir=data_dir, split=split, max_seq_len=max_seq_len, shuffle=shuffle,
                              shuffle_seed=seed, batch_size=micro_batch_size)


def build_lm_dataloader(*, data_dir: str | Path, split: str, micro_batch_size: int, max_seq_len: int,
                        shuffle: bool, seed: int, num_workers: int = 0, drop_last: bool = True) -> DataLoader:
    """A deterministic, Composer-resumable loader of ``(B, T)`` batches from a prepared split.

    Args:
        data_dir: dataset folder (``DIR/<split>/index.json``), e.g. ``datasets/c4_small``.
        split: split name, e.g. ``train_small``.
        micro_batch_size: samples per batch (per device).
        max_seq_len: samples longer than this are truncated.
        shuffle: shuffle samples (deterministically from ``seed``).
        seed: shuffle seed.
        num_workers: DataLoader worker processes.
        drop_last: drop a last incomplete batch.

    Returns:
        A ``DataLoader`` whose ``dataset`` is a ``StreamingDataset`` (Composer checkpoints its state).

    Raises:
        DataError: the folder, the split or its ``tokens`` column is missing.
    """
    dataset = build_lm_dataset(data_dir=data_dir, split=split, micro_batch_size=micro_batch_size,
                               max_seq_len=max_seq_len, shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_size=micro_batch_size, num_workers=num_workers, drop_last=drop_last,
                      collate_fn=collate, persistent_workers=num_workers > 0)


__all__ = ["IGNORE_INDEX", "MANIFEST", "PackedTokenDataset", "SplitInfo", "available_splits", "build_lm_dataloader",
           "build_lm_dataset", "collate", "positions_from_sequence_id", "split_info"]
