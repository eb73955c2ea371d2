"""Scoring in-context-learning tasks by log-likelihood, batched, with the context computed once.

Scoring rule (the one the reference test re-implements with stock transformers):

1. Trailing whitespace of the context moves to the front of each continuation (``"A: " + "four"``
   is scored as ``"A:"`` then ``" four"``), as lm-evaluation-harness does, so the answer's
   leading space is part of the answer's first token as in natural text.
2. The context is tokenized as the tokenizer does by default (BOS when it adds one), each
   continuation without special tokens; the model sees ``context_ids + continuation_ids``
   (the context is cut from the left when the whole would not fit the context window).
3. Each continuation's score is the sum of the log-probabilities of its tokens. Multiple choice:
   ``acc`` takes the choice with the highest sum, ``acc_norm`` the highest mean per token (the
   length normalisation of LLM Foundry's multiple-choice accuracy); ties go to the first choice.
   Language modelling: correct when greedy decoding reproduces every continuation token.
4. Accuracy is reported with its standard error ``sqrt(acc * (1 - acc) / (n - 1))`` and the
   chance level (mean over examples of correct choices / choices).

Batching: examples are sorted by length and grouped under a token budget. Each example is packed
into one sequence, its context followed by all its continuations, with an attention mask that
lets each continuation see only the context and itself (positions continue from the context for
every continuation). The context is computed once per example instead of once per choice, and
nothing is copied: no per-choice KV cache.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from llamactl.evaluation.tasks import Rendered, Task, render
from llamactl.model.llama import Llama

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (examples done, examples total)


@dataclass
class Request:
    """One example as token ids: a context and candidate continuations."""

    context: list[int]
    continuations: list[list[int]]


@dataclass
class ChoiceScore:
    logprob: float  # sum over the continuation's tokens
    num_tokens: int
    greedy: bool  # every continuation token is the argmax of its position


@dataclass
class TaskScore:
    """Accuracy of one task at one number of shots."""

    task: str
    kind: str
    shots: int
    n: int
    acc: float
    acc_stderr: float
    acc_norm: float | None
    acc_norm_stderr: float | None
    chance: float | None
    truncated: int  # examples whose context was cut to fit the window
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def split_whitespace(context: str, continuation: str) -> tuple[str, str]:
    """Move the context's trailing whitespace to the front of the continuation."""
    stripped = context.rstrip()
    return stripped, context[len(stripped):] + continuation


def tokenize(rendered: list[Rendered], tokenizer: Any, max_seq_len: int) -> tuple[list[Request], int]:
    """Token ids for rendered examples; returns the requests and how many contexts were cut."""
    requests, truncated = [], 0
    for r in rendered:
        pairs = [split_whitespace(r.context, c) for c in r.continuations]
        ctx_text = pairs[0][0]
        ctx = list(tokenizer(ctx_text)["input_ids"])
        conts = [list(tokenizer(c, add_special_tokens=False)["input_ids"]) for _, c in pairs]
        if not ctx:  # the first continuation token needs something to be predicted from
            fallback = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
            ctx = [fallback]
        longest = max(len(c) for c in conts)
        if longest >= max_seq_len:
            raise ValueError(f"a continuation of {longest} tokens does not fit the {max_seq_len}-token window")
        if len(ctx) + longest > max_seq_len:
            ctx = ctx[len(ctx) + longest - max_seq_len:]
            truncated += 1
        requests.append(Request(ctx, conts))
    return requests, truncated


def _token_logprobs(model: Llama, hidden: torch.Tensor, targets: torch.Tensor, chunk: int = 1024
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of ``targets`` (M,) and whether each is the argmax, from hidden (M, d)."""
    lps, greedy = [], []
    for s in range(0, hidden.shape[0], chunk):
        logits = model.lm_head(hidden[s:s + chunk]).float()  # (C, V)
        logp = logits.log_softmax(dim=-1)
        tgt = targets[s:s + chunk]
        lps.append(logp.gather(1, tgt[:, None]).squeeze(1))
        greedy.append(logits.argmax(dim=-1) == tgt)
    return torch.cat(lps), torch.cat(greedy)


def pack(request: Request) -> tuple[list[int], list[int], list[int], list[tuple[int, int]]]:
    """One sequence holding the context followed by every continuation.

    Returns ids, rotary positions, a segment id per token (-1 = context, k = continuation k)
    and, per continuation, its (start, length) in the sequence. Each continuation is placed at
    the positions it would have right after the context.
    """
    ids, pos, seg = list(request.context), list(range(len(request.context))), [-1] * len(request.context)
    spans = []
    c = len(request.context)
    for k, cont in enumerate(request.continuations):
        spans.append((len(ids), len(cont)))
        ids += cont
        pos += range(c, c + len(cont))
        seg += [k] * len(cont)
    return ids, pos, seg, spans


@torch.no_grad()
def _score_group(model: Llama, group: list[Request]) -> list[list[ChoiceScore]]:
    """Score a group of requests in one forward pass.

    Each example is one right-padded row: its context, then all its continuations side by side.
    The boolean mask lets context tokens attend causally within the context, and a continuation's
    tokens attend to the whole context and causally to their own continuation only, so every
    continuation sees exactly ``context + itself`` while the context is computed once.
    """
    dev = next(model.parameters()).device
    packed = [pack(r) for r in group]
    b, length = len(group), max(len(p[0]) for p in packed)
    ids = torch.zeros((b, length), dtype=torch.long)
    pos = torch.zeros((b, length), dtype=torch.long)
    seg = torch.full((b, length), -2, dtype=torch.long)  # -2 = padding
    for i, (x, p, sg, _) in enumerate(packed):
        ids[i, :len(x)] = torch.tensor(x)
        pos[i, :len(x)] = torch.tensor(p)
        seg[i, :len(x)] = torch.tensor(sg)
    causal = torch.ones((length, length), dtype=torch.bool).tril()  # (T, T)
    q_seg, k_seg = seg[:, :, None], seg[:, None, :]  # (B, T, 1), (B, 1, T)
    visible = (k_seg == -1) | ((k_seg == q_seg) & (q_seg >= 0))  # context keys, or own continuation
    eye = torch.eye(length, dtype=torch.bool)[None]  # padding queries see themselves: no empty rows
    mask = ((visible & causal[None]) | eye)[:, None]  # (B, 1, T, T)
    hidden = model.forward_hidden(ids.to(dev), position_ids=pos.to(dev), attn_mask=mask.to(dev))  # (B, T, d)

    # Which hidden state predicts which target: the last context token predicts each
    # continuation's first token; continuation token j predicts token j + 1.
    rows, src, tgt, owner = [], [], [], []
    n = 0
    for i, (r, (x, _, _, spans)) in enumerate(zip(group, packed)):
        c = len(r.context)
        for start, size in spans:
            for j in range(size):
                rows.append(i)
                src.append(c - 1 if j == 0 else start + j - 1)
                tgt.append(x[start + j])
                owner.append(n)
            n += 1
    row_t = torch.tensor(rows, device=dev)
    src_t = torch.tensor(src, device=dev)
    lp, gr = _token_logprobs(model, hidden[row_t, src_t], torch.tensor(tgt, device=dev))
    owner_t = torch.tensor(owner, device=dev)
    total = torch.zeros(n, dtype=torch.float64, device=dev).index_add_(0, owner_t, lp.double())
    misses = torch.zeros(n, dtype=torch.long, device=dev).index_add_(0, owner_t, (~gr).long())
    totals, greedy = total.tolist(), (misses == 0).tolist()
    out: list[list[ChoiceScore]] = []
    j = 0
    for r in group:
        out.append([ChoiceScore(totals[j + k], len(r.continuations[k]), greedy[j + k])
                    for k in range(len(r.continuations))])
        j += len(r.continuations)
    return out


def score_requests(model: Llama, requests: list[Request], *, batch_tokens: int = 8192,
                   progress: Progress | None = None) -> list[list[ChoiceScore]]:
    """Scores of every continuation of every request, in request order.

    Args:
        batch_tokens: budget per forward pass, in padded tokens (examples x longest packed
            example); it bounds the activations and the (B, T, T) attention mask.
    """
    def packed_len(r: Request) -> int:
        return len(r.context) + sum(len(c) for c in r.continuations)

    order = sorted(range(len(requests)), key=lambda i: -packed_len(requests[i]))
    results: list[list[ChoiceScore] | None] = [None] * len(requests)
    done = 0
    group: list[int] = []

    def cost(members: list[int]) -> int:
        return len(members) * max(packed_len(requests[i]) for i in members)  # padded tokens

    def flush() -> None:
        nonlocal done, group
        if not group:
            return
        for i, s in zip(group, _score_group(model, [requests[i] for i in group])):
            results[i] = s
        done += len(group)
        if progress is not None:
            progress(done, len(requests))
        group = []

    for i in order:
        if group and cost(group + [i]) > batch_tokens:
            flush()
        group.append(i)
    flush()
    return results  # type: ignore[return-value]


def _stderr(correct: list[bool]) -> float:
    n = len(correct)
    if n < 2:
        return float("nan")
    p = sum(correct) / n
    return math.sqrt(p * (1 - p) / (n - 1))


def accuracy(task: Task, rendered: list[Rendered], scores: list[list[ChoiceScore]], shots: int,
             truncated: int = 0) -> TaskScore:
    """Accuracy (raw and length-normalised for multiple choice) with standard errors."""
    if task.kind == "multiple_choice":
        raw, norm = [], []
        for r, s in zip(rendered, scores):
            pick_raw = max(range(len(s)), key=lambda k: (s[k].logprob, -k))
            pick_norm = max(range(len(s)), key=lambda k: (s[k].logprob / s[k].num_tokens, -k))
            raw.append(pick_raw in r.gold)
            norm.append(pick_norm in r.gold)
        n = len(raw)
        return TaskScore(task.label, task.kind, shots, n, sum(raw) / n, _stderr(raw), sum(norm) / n,
                         _stderr(norm), task.chance, truncated)
    hits = [s[0].greedy for s in scores]
    n = len(hits)
    return TaskScore(task.label, task.kind, shots, n, sum(hits) / n, _stderr(hits), None, None, None, truncated)


def evaluate_task(model: Llama, tokenizer: Any, task: Task, shots: int, *, max_seq_len: int,
                  batch_tokens: int = 8192, progress: Progress | None = None) -> TaskScore:
    """Render, tokenize, score and grade one task at one number of shots."""
    import time

    t0 = time.perf_counter()
    rendered = render(task, shots)
    requests, truncated = tokenize(rendered, tokenizer, max_seq_len)
    if truncated:
        log.warning("%s (%d-shot): %d contexts cut from the left to fit %d tokens",
                    task.label, shots, truncated, max_seq_len)
    scores = score_requests(model, requests, batch_tokens=batch_tokens, progress=progress)
    result = accuracy(task, rendered, scores, shots, truncated)
    result.seconds = time.perf_counter() - t0
    return result
