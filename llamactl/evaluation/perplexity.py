"""Language-modelling cross-entropy and perplexity.

Definition (shared with the training-time eval metrics): the **token-weighted** mean next-token
cross-entropy over every target that is not ignored (label ``-100``), pooled over the whole
evaluation set, not averaged per batch or per sequence; ``perplexity = exp(cross_entropy)``.
Labels are aligned with ``input_ids`` and shifted inside, as in transformers: position ``t``
predicts token ``t + 1``, so a block of ``T`` tokens gives ``T - 1`` targets.

Text sources: a ``.txt`` file is one document; ``.jsonl`` / ``.jsonl.gz`` / ``.json.gz`` (C4 layout)
give one document per line (field ``text``). Documents are tokenized as the tokenizer does by
default (BOS when it adds one), joined with the EOS token between them, and the token stream is
cut into consecutive blocks of ``seq_len`` tokens (the last one may be shorter).
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, NamedTuple

import torch

from llamactl.errors import DataError
from llamactl.model.kv_cache import cache_attention_mask
from llamactl.model.llama import Llama
from llamactl.model.loss import IGNORE_INDEX

Batch = torch.Tensor | Mapping[str, torch.Tensor]


class Perplexity(NamedTuple):
    """``(cross_entropy, perplexity, tokens)``: mean CE in nats, exp of it, targets counted."""

    ce: float
    ppl: float
    tokens: int


def _prepare(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(input_ids, labels, extra forward kwargs) for one batch."""
    if isinstance(batch, torch.Tensor):
        ids = batch.to(device)
        return ids, ids, {}
    ids = batch["input_ids"].to(device)
    labels = batch["labels"].to(device) if "labels" in batch else ids.clone()
    extra: dict[str, torch.Tensor] = {}
    if "sequence_id" in batch:  # packed documents: attention stays inside each (as in training)
        extra["sequence_id"] = batch["sequence_id"].to(device)
    if "position_ids" in batch:
        extra["position_ids"] = batch["position_ids"].to(device)
    am = batch.get("attention_mask")
    if am is None:
        return ids, labels, extra
    am = am.to(device).bool()
    labels = labels.masked_fill(~am, IGNORE_INDEX)
    # A target predicted from a padding position (the first real token after left padding) is not
    # a prediction the model makes on real text: ignore it too.
    labels[:, 1:] = labels[:, 1:].masked_fill(~am[:, :-1], IGNORE_INDEX)
    if bool(am.all()):
        return ids, labels, extra
    # Padding anywhere (left or right): real tokens see only real tokens, positions count real ones.
    t = ids.shape[1]
    mask = cache_attention_mask(torch.arange(t, device=device), t, am)  # (B, 1, T, T)
    if "sequence_id" in extra:
        seq = extra.pop("sequence_id")
        mask = mask & (seq[:, :, None] == seq[:, None, :])[:, None]
    extra["attn_mask"] = mask
    extra.setdefault("position_ids", (am.long().cumsum(-1) - 1).clamp_min(0))  # (B, T)
    return ids, labels, extra


@torch.no_grad()
def evaluate_perplexity(model: Llama, batches: Iterable[Batch]) -> Perplexity:
    """Token-weighted cross-entropy and perplexity of ``model`` over ``batches``.

    Args:
        model: our inner model (evaluated in its current dtype/device; put in eval mode here).
        batches: ``(B, T)`` id tensors, or dicts with ``input_ids`` and optionally ``labels``
            (aligned with the inputs, ``-100`` ignored), ``attention_mask`` (0 = padding, which
            is neither attended to nor scored) and, for packed data, ``sequence_id`` /
            ``position_ids`` (attention kept inside each packed document, as in training).

    Returns:
        ``Perplexity(ce, ppl, tokens)``; ``ce`` is the sum of per-target losses divided by the
        number of targets over all batches.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = 0.0
    count = 0
    try:
        for batch in batches:
            ids, labels, extra = _prepare(batch, device)
            n = int((labels[:, 1:] != IGNORE_INDEX).sum())
            if n == 0:
                continue
            loss = model(ids, labels=labels, **extra).loss  # mean over the n targets
            total += float(loss.double()) * n
            count += n
    finally:
        model.train(was_training)
    if count == 0:
        raise DataError("no tokens to evaluate: every target was ignored or the data is empty")
    ce = total / count
    return Perplexity(ce, math.exp(ce), count)


# ------------------------------------------------------------------------------ text to blocks
def read_documents(path: str | Path, *, text_field: str = "text") -> list[str]:
    """Documents of a ``.txt`` (one), ``.jsonl``, ``.jsonl.gz`` or ``.json.gz`` (one per line) file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"evaluation data {path} does not exist")
    name = path.name.lower()
    if name.endswith(".txt"):
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise DataError(f"{path} is empty")
        return [text]
    if not name.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
        raise DataError(f"{path}: unknown text format; use .txt, .jsonl, .jsonl.gz or .json.gz (C4 layout)")
    opener = gzip.open if name.endswith(".gz") else open
    docs = []
    with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
                raise DataError(f"{path}:{n}: expected an object with a string field {text_field!r}")
            if row[text_field]:
                docs.append(row[text_field])
    if not docs:
        raise DataError(f"{path} has no documents with text in field {text_field!r}")
    return docs


def token_blocks(docs: list[str], tokenizer: Any, seq_len: int, *, max_tokens: int | None = None) -> list[list[int]]:
    """Tokenize ``docs``, join them with EOS, cut into blocks of ``seq_len`` tokens.

    Args:
        max_tokens: stop after this many tokens (the stream is cut, then blocked).
    """
    if seq_len < 2:
        raise DataError(f"seq_len must be at least 2, got {seq_len}")
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for i, doc in enumerate(docs):
        if i and eos is not None:
            stream.append(eos)
        stream.extend(tokenizer(doc)["input_ids"])
        if max_tokens is not None and len(stream) >= max_tokens:
            stream = stream[:max_tokens]
            break
    blocks = [stream[s:s + seq_len] for s in range(0, len(stream), seq_len)]
    blocks = [b for b in blocks if len(b) >= 2]
    if not blocks:
        raise DataError("the evaluation text gives fewer than 2 tokens")
    return blocks


def batch_blocks(blocks: list[list[int]], batch_size: int, pad_id: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Right-padded ``(B, T)`` batches of blocks, with ``attention_mask`` marking real tokens."""
    for s in range(0, len(blocks), batch_size):
        chunk = blocks[s:s + batch_size]
        t = max(len(b) for b in chunk)
        ids = torch.full((len(chunk), t), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), t), dtype=torch.long)
        for i, b in enumerate(chunk):
            ids[i, :len(b)] = torch.tensor(b)
            mask[i, :len(b)] = 1
        yield {"input_ids": ids, "attention_mask": mask}
