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

    def add(self, flat: np.ndarray, lengths: np.ndarray, max_samples: int | None = None) -> np.ndarray:
        """Add documents given as one flat token array and the length of each document.

        Args:
            flat: the documents' tokens, separators included, one after the other.
            lengths: tokens per document.
            max_samples: return at most this many samples; the documents after the last of them
                are then not consumed (nor counted in :attr:`docs` and :attr:`tokens`).

        Returns:
            ``(n, seq_len)`` array of the samples completed by these documents (``n`` may be 0).
        """
        if self.wrap:
            return self._add_wrap(flat, lengths, max_samples)
        return self._add_no_wrap(flat, lengths, max_samples)

    def _add_wrap(self, flat: np.ndarray, lengths: np.ndarray, max_samples: int | None) -> np.ndarray:
        # Document boundaries do not matter when wrapping: the stream is one long sequence.
        carried = self._carry.size
        stream = np.concatenate([self._carry, flat.astype(np.int64, copy=False)]) if carried else flat
        n = stream.size // self.seq_len
        if max_samples is not None and n > max_samples:
            n = max_samples
            # Count only the documents that started before the end of the last sample.
            used = n * self.seq_len - carried
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            k = int(np.searchsorted(starts, used, side="left"))
            self.docs += k
            self.tokens += int(min(used, flat.size))
        else:
            self.docs += int(len(lengths))
            self.tokens += int(flat.size)
        cut = n * self.seq_len
        self._carry = np.array(stream[cut:], dtype=np.int64)
        return np.asarray(stream[:cut], dtype=np.int64).reshape(n, self.seq_len)  # (n, seq_len)

    def _add_no_wrap(self, flat: np.ndarray, lengths: np.ndarray, max_samples: int | None) -> np.ndarray:
        out: list[np.ndarray] = []
        buf = self._carry
        start = 0
        for length in lengths.tolist():
            if max_samples is not None and len(out) >= max_samples:
                break
            doc = flat[start:start + length]
            start += length
            self.docs += 1
            self.tokens += int(length)
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
