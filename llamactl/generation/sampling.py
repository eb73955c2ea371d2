"""Turning next-token logits into tokens: repetition penalty, temperature, top-k, top-p, then
greedy argmax or a seeded multinomial draw.

Semantics follow transformers' logits processors (same order: repetition penalty first, then
temperature, top-k, top-p), so a user moving from ``model.generate`` gets the behaviour they know.
Imports torch and the standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llamactl.errors import UserInputError


@dataclass
class SamplingConfig:
    """How to pick tokens and when to stop.

    Attributes:
        max_new_tokens: tokens to generate per prompt at most.
        temperature: 0 means greedy (argmax); > 0 divides the logits before sampling.
        top_k: keep only the k most likely tokens (0 = off).
        top_p: keep the smallest set of tokens whose probability reaches p (1.0 = off).
        repetition_penalty: > 1 discourages tokens already in the prompt or the output
            (CTRL-style: positive logits divided, negative multiplied; 1.0 = off).
        stop: strings that end a completion; the completion's text is cut before them.
        seed: seeds the sampling generator, so a seeded run is reproducible.
        ignore_eos: keep going past end-of-sequence tokens (benchmarks use it).
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise UserInputError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise UserInputError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise UserInputError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise UserInputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise UserInputError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if any(not s for s in self.stop):
            raise UserInputError("stop strings must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Penalise tokens already seen: logits (B, V) float, seen (B, V) bool."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Mask everything below the k-th largest logit of each row with -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: drop the least likely tokens whose total probability is <= 1 - p."""
    if p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, descending=False, dim=-1)  # ascending, (B, V)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cum <= (1 - p)
    remove[:, -1] = False  # always keep the most likely token
    mask = remove.scatter(1, sorted_idx, remove)
    return logits.masked_fill(mask, float("-inf"))


def next_tokens(logits: torch.Tensor, config: SamplingConfig, *, seen: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row from last-position logits (B, V); returns (B,) int64.

    Args:
        logits: (B, V) logits of the last position, any float dtype (computed in fp32).
        config: sampling settings.
        seen: (B, V) bool, tokens of the prompt and output so far (for the repetition penalty).
        generator: the seeded generator to draw with (on the logits' device).
    """
    if config.greedy and (seen is None or config.repetition_penalty == 1.0):
        return logits.argmax(dim=-1)  # the fp32 upcast cannot change which entry is largest
    scores = logits.float()
    if seen is not None:
        scores = apply_repetition_penalty(scores, seen, config.repetition_penalty)
    if config.greedy:
        return scores.argmax(dim=-1)
    scores = scores / config.temperature
    scores = apply_top_k(scores, config.top_k)
    scores = apply_top_p(scores, config.top_p)
    probs = scores.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
