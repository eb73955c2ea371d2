"""Instruction data: render prompt/response pairs or chat ``messages``, mask the loss, pack examples.

Each example becomes ``token ids`` and a ``loss mask`` (True where the model is trained to predict
the token: the responses, including the end-of-turn/EOS token that ends them). Examples are then
packed into fixed-length samples without cross-contamination: every sample carries a
``sequence_id`` per token (``-1`` on padding) for a block-diagonal attention mask, and the first
token of each example is never a label (nothing of its own example precedes it).

Masks for chat data are computed on the rendered text: the chat template is rendered for the
conversation up to each assistant turn (with the generation prompt) and up to the end of that turn;
the characters in between are the response, and a token is a response token when it starts inside
that span. The full conversation is tokenized once, so the ids are exactly what
``apply_chat_template(messages, tokenize=True)`` gives. Rendering (Jinja) runs in the parent process;
tokenizing runs in worker processes that import only ``tokenizers``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from llamactl.errors import DataError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class SFTSpec:
    """How records become examples."""

    mode: str  # "chat" (a `messages` list) or "pair" (prompt and response fields)
    messages_field: str = "messages"
    prompt_field: str = "prompt"
    response_field: str = "response"
    chat_template: bool = False  # pairs: render as a user/assistant conversation
    mask_prompt: bool = True


@dataclass(frozen=True)
class Rendered:
    """A record ready to tokenize: chat text with response character spans, or a plain pair."""

    text: str = ""
    spans: tuple[tuple[int, int], ...] = ()
    prompt: str | None = None
    response: str | None = None


def render_chat_text(tok: Any, messages: Any, *, where: str = "") -> Rendered:
    """A conversation rendered with the tokenizer's chat template, and the character spans of its responses."""
    if not getattr(tok, "chat_template", None):
        raise DataError("the tokenizer has no chat template; use a chat tokenizer or `prepare-data sft` with "
                        "prompt/response fields")
    _check_messages(messages, where)
    text = tok.apply_chat_template(messages, tokenize=False)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        upto = tok.apply_chat_template(messages[:i + 1], tokenize=False)
        if not (text.startswith(before) and text.startswith(upto)) or len(upto) < len(before):
            raise DataError("the chat template does not render conversations prefix by prefix, so responses "
                            "cannot be located; use a template whose turns are appended in order")
        spans.append((len(before), len(upto)))
    if not spans:
        raise DataError(f"{where}a conversation has no assistant message; every example needs a response to learn")
    return Rendered(text=text, spans=tuple(spans))


def tokenize_rendered(backend: Any, item: Rendered, *, mask_prompt: bool = True,
                      eos_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and loss mask of a rendered record, with a ``tokenizers.Tokenizer`` backend.

    Chat text is tokenized whole (no special tokens added: the template holds them), exactly as
    ``apply_chat_template(messages, tokenize=True)`` does; a token is a response token when its first
    character lies in a response span. Pairs follow LLM Foundry's finetuning layout:
    ``tokenizer(prompt)`` with the tokenizer's special tokens, ``tokenizer(response)`` without, then EOS.
    """
    if item.prompt is None:
        enc = backend.encode(item.text, add_special_tokens=False)
        ids = np.asarray(enc.ids, dtype=np.int64)
        if not mask_prompt:
            return ids, np.ones(ids.size, dtype=bool)
        starts = np.asarray([o[0] for o in enc.offsets], dtype=np.int64)
        mask = np.zeros(ids.size, dtype=bool)
        for a, b in item.spans:
            mask |= (starts >= a) & (starts < b)
        return ids, mask
    p = backend.encode(item.prompt, add_special_tokens=True).ids
    r = backend.encode(item.response, add_special_tokens=False).ids
    if eos_id is not None:
        r = r + [eos_id]
    ids = np.asarray(p + r, dtype=np.int64)
    mask = np.ones(ids.size, dtype=bool)
    if mask_prompt:
        mask[:len(p)] = False
    return ids, mask


def render_chat(tok: Any, messages: list[dict[str, str]], *, mask_prompt: bool = True,
                where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Token ids of a conversation rendered with the tokenizer's chat template, and its loss mask."""
    return tokenize_rendered(tok._tokenizer, render_chat_text(tok, messages, where=where), mask_prompt=mask_prompt)


def render_pair(tok: Any, prompt: str, response: str, *, chat_template: bool = False,
                mask_prompt: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and loss mask of one prompt/response pair (see :func:`tokenize_rendered`)."""
    if chat_template:
        return render_chat(tok, [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                           mask_prompt=mask_prompt)
    return tokenize_rendered(tok._tokenizer, Rendered(prompt=prompt, response=response), mask_prompt=mask_prompt,
                             eos_id=tok.eos_token_id)


def _check_messages(messages: Any, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}`messages` must be a non-empty list of {{role, content}} objects")
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}each message needs `role` and `content` (got {m!r:.80})")
        if not isinstance(m["content"], str):
            raise DataError(f"{where}message content must be text (got {type(m['content']).__name__})")


def render_record(tok: Any, spec: SFTSpec, record: Any, where: str) -> Rendered:
    """A parsed JSON record rendered for tokenization (runs in the parent: it needs the chat template)."""
    if not isinstance(record, dict):
        raise DataError(f"{where}each line must be a JSON object")
    if spec.mode == "chat":
        if spec.messages_field not in record:
            raise DataError(f"{where}a record has no field {spec.messages_field!r} (it has: "
                            f"{', '.join(sorted(record))}); pass --messages-field with one of those")
        return render_chat_text(tok, record[spec.messages_field], where=where)
    for f, flag in ((spec.prompt_field, "--prompt-field"), (spec.response_field, "--response-field")):
        if f not in record:
            raise DataError(f"{where}a record has no field {f!r} (it has: {', '.join(sorted(record))}); "
                            f"pass {flag} with one of those")
        if not isinstance(record[f], str):
            raise DataError(f"{where}field {f!r} must hold text, not {type(record[f]).__name__}")
    if spec.chat_template:
        return render_chat_text(tok, [{"role": "user", "content": record[spec.prompt_field]},
                                      {"role": "assistant", "content": record[spec.response_field]}], where=where)
    return Rendered(prompt=record[spec.prompt_field], response=record[spec.response_field])


def render_batch(tok: Any, spec: SFTSpec, batch: Any) -> tuple[str, list[Rendered]]:
    """Parse and render one raw batch of JSON lines: ``(split, [Rendered, ...])``."""
    out = []
    for line in batch.items:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{batch.where}: a line is not valid JSON; each line must be one JSON object") from None
        out.append(render_record(tok, spec, record, f"{batch.where}: "))
    return batch.split, out


_WORKER: dict[str, Any] = {}


def init_worker(tokenizer_json: str, mask_prompt: bool, eos_id: int | None) -> None:
    """Load the tokenizer backend once per worker process (tokenizers only: no torch, no transformers)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    _WORKER.update(tok=Tokenizer.from_str(tokenizer_json), mask_prompt=mask_prompt, eos_id=eos_id)


def tokenize_batch(backend: Any, job: tuple[str, list[Rendered]], mask_prompt: bool, eos_id: int | None):
    split, items = job
    return split, [tokenize_rendered(backend, it, mask_prompt=mask_prompt, eos_id=eos_id) for it in items]


def tokenize_in_worker(job: tuple[str, list[Rendered]]):
    return tokenize_batch(_WORKER["tok"], job, _WORKER["mask_prompt"], _WORKER["eos_id"])


class SFTPacker:
    """First-fit packing of examples into ``seq_len`` samples, with a bounded number of open samples.

    Args:
        seq_len: tokens per sample.
        pad_id: token used to fill the rest of a sample (never a label).
        pack: put several examples in one sample; False gives one example per sample.
        open_bins: samples kept open for first-fit; more packs tighter, holds more in memory.
        overflow: ``"truncate"`` examples longer than ``seq_len`` or ``"drop"`` them.
    """

    def __init__(self, seq_len: int, pad_id: int, *, pack: bool = True, open_bins: int = 16,
                 overflow: str = "truncate") -> None:
        if overflow not in ("truncate", "drop"):
            raise ValueError(f"overflow must be truncate or drop, got {overflow!r}")
        self.seq_len, self.pad_id, self.overflow = seq_len, pad_id, overflow
        self.open_bins = open_bins if pack else 1
        self.pack = pack
        self._bins: list[list[tuple[np.ndarray, np.ndarray]]] = []
        self._fill: list[int] = []
        self.examples = self.truncated = self.dropped = self.no_label = 0
        self.tokens = self.label_tokens = 0

    def add(self, ids: np.ndarray, mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Add one example; returns the samples completed (each ``(tokens, labels, sequence_id)``)."""
        if ids.size > self.seq_len:
            if self.overflow == "drop":
                self.dropped += 1
                return []
            self.truncated += 1
            ids, mask = ids[:self.seq_len], mask[:self.seq_len]
        if not mask[1:].any():
            # Nothing to learn from (e.g. the response was cut off): keep it out of the data.
            self.no_label += 1
            return []
        self.examples += 1
        self.tokens += int(ids.size)
        self.label_tokens += int(mask[1:].sum())
        out = []
        if self.pack:
            for i, fill in enumerate(self._fill):
                if fill + ids.size <= self.seq_len:
                    self._bins[i].append((ids, mask))
                    self._fill[i] += int(ids.size)
                    return out
        if len(self._bins) >= self.open_bins:
            i = int(np.argmax(self._fill))  # the fullest sample is the one least likely to take more
            out.append(self._emit(self._bins.pop(i)))
            self._fill.pop(i)
        self._bins.append([(ids, mask)])
        self._fill.append(int(ids.size))
        return out

    def flush(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Emit the samples still open."""
        out = [self._emit(b) for b in self._bins]
        self._bins, self._fill = [], []
        return out

    def _emit(self, examples: list[tuple[np.ndarray, np.ndarray]]):
        T = self.seq_len
        tokens = np.full(T, self.pad_id, dtype=np.int64)
        labels = np.full(T, IGNORE_INDEX, dtype=np.int64)
        seq = np.full(T, -1, dtype=np.int64)
        pos = 0
        for k, (ids, mask) in enumerate(examples):
            n = ids.size
            tokens[pos:pos + n] = ids
            lab = np.where(mask, ids, IGNORE_INDEX)
            lab[0] = IGNORE_INDEX  # its prediction would come from the previous example
            labels[pos:pos + n] = lab
            seq[pos:pos + n] = k
            pos += n
        return tokens, labels, seq
