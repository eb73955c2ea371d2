"""``llamactl generate``: completions for prompts, or a multi-turn chat, streamed as they appear."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from llamactl.errors import DataError, UserInputError
from llamactl.generation.sampling import SamplingConfig

log = logging.getLogger(__name__)

OnText = Callable[[int, str], None]  # (index of the prompt, new text)


@dataclass
class GenerateRequest:
    """Attributes:
        model: a model folder or a run directory.
        prompts: the prompts (``--prompt``, repeatable).
        prompts_file: a file with one prompt per line (``.txt``) or ``{"prompt": ...}`` per line (``.jsonl``).
        sampling: sampling and stopping settings.
        batch_size: prompts generated together (streaming shows text as it appears when 1).
        mode: decode mode (``auto``: CUDA graph on a GPU, eager on the CPU).
        system: system message for ``--chat``.
    """

    model: str
    prompts: list[str] = field(default_factory=list)
    prompts_file: str | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    batch_size: int = 1
    mode: str = "auto"
    dtype: str | None = None
    device: str | None = None
    system: str | None = None


@dataclass
class Completion:
    prompt: str
    text: str
    prompt_tokens: int
    new_tokens: int
    finish_reason: str


@dataclass
class GenerateResult:
    model: str
    completions: list[Completion]
    seconds: float  # prefill + decode, all batches
    decode_mode: str

    @property
    def prompt_tokens(self) -> int:
        return sum(c.prompt_tokens for c in self.completions)

    @property
    def new_tokens(self) -> int:
        return sum(c.new_tokens for c in self.completions)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"model": self.model, "decode_mode": self.decode_mode,
                "completions": [asdict(c) for c in self.completions], "prompt_tokens": self.prompt_tokens,
                "new_tokens": self.new_tokens, "seconds": self.seconds, "tokens_per_s": self.tokens_per_s}


def read_prompts(path: str) -> list[str]:
    """Prompts from a ``.txt`` file (one per non-empty line) or ``.jsonl`` (``{"prompt": ...}`` per line)."""
    import json
    from pathlib import Path

    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"prompts file {p} does not exist")
    lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if p.suffix == ".jsonl":
        prompts = []
        for n, ln in enumerate(lines, 1):
            try:
                row = json.loads(ln)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{n}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise DataError(f"{p}:{n}: expected an object with a string field 'prompt'")
            prompts.append(row["prompt"])
        lines = prompts
    if not lines:
        raise DataError(f"prompts file {p} has no prompts")
    return lines


def _load(req: GenerateRequest):
    from llamactl.generation.engine import Generator
    from llamactl.services.inference_model import load_inference_model

    if req.mode not in ("auto", "eager", "graph", "compile"):
        raise UserInputError(f"unknown decode mode {req.mode!r}; use auto, eager, graph or compile")
    im = load_inference_model(req.model, dtype=req.dtype, device=req.device)
    return im, Generator(im.model, mode=req.mode)  # type: ignore[arg-type]


def _decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


def run_generate(req: GenerateRequest, on_text: OnText | None = None,
                 on_start: Callable[[int, str], None] | None = None) -> GenerateResult:
    """Complete every prompt; ``on_start(i, prompt)`` then ``on_text(i, piece)`` stream the output."""
    prompts = list(req.prompts) + (read_prompts(req.prompts_file) if req.prompts_file else [])
    if not prompts:
        raise UserInputError("no prompt given: pass --prompt TEXT (repeatable), --prompts-file FILE or --chat")
    if req.batch_size < 1:
        raise UserInputError(f"--batch-size must be at least 1, got {req.batch_size}")
    im, gen = _load(req)
    tok = im.tokenizer
    encoded = [list(tok(p)["input_ids"]) for p in prompts]
    empty = [i for i, e in enumerate(encoded) if not e]
    if empty:
        raise UserInputError(f"prompt {empty[0] + 1} is empty after tokenization; give it some text")
    completions: list[Completion] = []
    seconds = 0.0
    for s in range(0, len(prompts), req.batch_size):
        idx = list(range(s, min(s + req.batch_size, len(prompts))))
        if on_start is not None:
            for i in idx:
                on_start(i, prompts[i])
        cb = (lambda row, piece, idx=idx: on_text(idx[row], piece)) if on_text is not None else None
        out = gen.generate([encoded[i] for i in idx], req.sampling, eos_token_ids=im.eos_token_ids,
                           pad_token_id=im.pad_token_id, decode=_decoder(tok), on_text=cb)
        seconds += out.prefill_s + out.decode_s
        for row, i in enumerate(idx):
            completions.append(Completion(prompts[i], out.texts[row], out.prompt_tokens[row],  # type: ignore[index]
                                          len(out.tokens[row]), out.finish_reasons[row]))
    return GenerateResult(model=req.model, completions=completions, seconds=seconds, decode_mode=gen.mode)


class ChatSession:
    """A multi-turn conversation through the tokenizer's chat template; the history is kept."""

    def __init__(self, req: GenerateRequest) -> None:
        self.request = req
        self.im, self.generator = _load(req)
        tok = self.im.tokenizer
        if not getattr(tok, "chat_template", None):
            raise UserInputError(f"the tokenizer of {req.model} has no chat template; "
                                 f"run without --chat to complete plain prompts")
        self.messages: list[dict[str, str]] = []
        if req.system:
            self.messages.append({"role": "system", "content": req.system})
        self._turn = 0

    def send(self, text: str, on_text: Callable[[str], None] | None = None) -> Completion:
        """Add a user message, generate the assistant's reply (streamed through ``on_text``)."""
        tok = self.im.tokenizer
        messages = self.messages + [{"role": "user", "content": text}]
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = list(tok(prompt, add_special_tokens=False)["input_ids"])
        cfg = self.request.sampling
        if cfg.seed is not None:  # a different but reproducible draw each turn
            from dataclasses import replace

            cfg = replace(cfg, seed=cfg.seed + self._turn)
        t0 = time.perf_counter()
        out = self.generator.generate([ids], cfg, eos_token_ids=self.im.eos_token_ids,
                                      pad_token_id=self.im.pad_token_id, decode=_decoder(tok),
                                      on_text=(lambda _row, piece: on_text(piece)) if on_text else None)
        log.debug("chat turn %d: %.2fs", self._turn, time.perf_counter() - t0)
        reply = out.texts[0]  # type: ignore[index]
        self.messages = messages + [{"role": "assistant", "content": reply}]
        self._turn += 1
        self.last_seconds = out.prefill_s + out.decode_s
        return Completion(text, reply, len(ids), len(out.tokens[0]), out.finish_reasons[0])


def start_chat(req: GenerateRequest) -> ChatSession:
    """Load the model and open a chat session (``llamactl generate --chat``)."""
    return ChatSession(req)
