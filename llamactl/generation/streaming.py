"""Token ids to text, one token at a time, with stop strings.

Decoding a growing sequence token by token is not "decode each token and concatenate": byte-level
BPE splits multi-byte characters across tokens, and SentencePiece-style tokenizers drop or add a
leading space depending on the neighbour. :class:`TextStream` decodes a short sliding window
(the offsets technique of text-generation-inference), holds back text that ends in an incomplete
character, and holds back text that could be the start of a stop string, so what reaches the
terminal is never taken back.
"""

from __future__ import annotations

from typing import Callable

Decode = Callable[[list[int]], str]


class TextStream:
    """Incremental detokenizer for one sequence.

    Args:
        decode: ids -> text (e.g. ``lambda ids: tok.decode(ids, skip_special_tokens=True)``).
        stop: strings that end the completion; the text is cut before the first one.
    """

    def __init__(self, decode: Decode, stop: list[str] | tuple[str, ...] = ()) -> None:
        self._decode = decode
        self._stop = [s for s in stop if s]
        self._max_stop = max((len(s) for s in self._stop), default=0)
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self.text = ""  # everything decoded so far (may run past a stop string)
        self._emitted = 0  # characters of ``text`` handed out
        self.stopped = False
        self._cut: int | None = None

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now final (possibly empty)."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        prefix = self._decode(self._ids[self._prefix_offset:self._read_offset])
        full = self._decode(self._ids[self._prefix_offset:])
        if full.endswith("\ufffd") or len(full) < len(prefix):
            return ""  # an incomplete UTF-8 sequence: wait for the next token
        self.text += full[len(prefix):]
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return self._release()

    def _release(self) -> str:
        if self._stop:
            start = max(0, self._emitted - self._max_stop)
            hits = [i for i in (self.text.find(s, start) for s in self._stop) if i >= 0]
            if hits:
                self._cut = min(hits)
                self.stopped = True
                piece = self.text[self._emitted:self._cut]
                self._emitted = self._cut
                return piece
        end = len(self.text) - self._held_back()
        if end <= self._emitted:
            return ""
        piece = self.text[self._emitted:end]
        self._emitted = end
        return piece

    def _held_back(self) -> int:
        """Length of the longest tail of ``text`` that is a proper prefix of some stop string."""
        best = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best

    def finish(self) -> str:
        """Flush what is left at the end of generation (held-back text that never became a stop)."""
        if self.stopped:
            return ""
        piece = self.text[self._emitted:]
        self._emitted = len(self.text)
        return piece

    @property
    def final_text(self) -> str:
        """The completion: all text, cut before the stop string if one was hit."""
        return self.text if self._cut is None else self.text[:self._cut]

    @property
    def num_tokens(self) -> int:
        return len(self._ids)
