"""Concatenate tokenized documents and cut them into fixed-length samples (pretraining packing).

The semantics are those of LLM Foundry's ``ConcatTokensDataset`` so that a dataset prepared here and
one prepared by ``convert_dataset_hf`` with the same options hold the same samples:

* every document becomes ``bos_ids + tokenizer(text) + eos_ids``;
* documents are appended to a running buffer and a sample is cut each time it holds ``seq_len`` tokens;
* with ``wrap`` (the default) the remainder of a cut document carries over into the next sample;
  without it (``--no-wrap``) the buffer is dropped after each cut, so no sample starts mid-document
  (except the tail of a document longer than ``seq_len``, which is dropped too).
"""

from __future__ import annotations

import numpy as np


class TokenPacker:
    """Streaming packer: feed encoded documents, get ``(n, seq_len)`` sample arrays back.

    Args:
        seq_len: tokens per sample.
        wrap: carry the remainder of a document over into the next sample.
    """

    def __init__(self, seq_len: int, *, wrap: bool = True) -> None:
        if seq_len <= 0:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        self.seq_len = seq_len
        self.wrap = wrap
        self._carry = np.zeros(0, dtype=np.int64)
        self.docs = 0
        self.tokens = 0  # tokens fed in (documents with their separators)

    def add(self, flat: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Add documents given as one flat token array and the length of each document.

        Returns:
            ``(n, seq_len)`` array of the samples completed by these documents (``n`` may be 0).
        """
        self.docs += int(len(lengths))
        self.tokens += int(flat.size)
        if self.wrap:
            return self._add_wrap(flat)
        return self._add_no_wrap(flat, lengths)

    def _add_wrap(self, flat: np.ndarray) -> np.ndarray:
        # Document boundaries do not matter when wrapping: the stream is one long sequence.
        stream = np.concatenate([self._carry, flat.astype(np.int64, copy=False)]) if self._carry.size else flat
        n = stream.size // self.seq_len
        cut = n * self.seq_len
        self._carry = np.array(stream[cut:], dtype=np.int64)
        return np.asarray(stream[:cut], dtype=np.int64).reshape(n, self.seq_len)  # (n, seq_len)

    def _add_no_wrap(self, flat: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        out: list[np.ndarray] = []
        buf = self._carry
        start = 0
        for length in lengths.tolist():
            doc = flat[start:start + length]
            start += length
            buf = np.concatenate([buf, doc.astype(np.int64, copy=False)])
            if buf.size >= self.seq_len:
                out.append(buf[:self.seq_len])
                buf = np.zeros(0, dtype=np.int64)
        self._carry = buf
        if not out:
            return np.zeros((0, self.seq_len), dtype=np.int64)
        return np.stack(out)  # (n, seq_len)

    @property
    def pending(self) -> int:
        """Tokens held back, waiting for more documents to fill a sample (dropped at the end)."""
        return int(self._carry.size)
