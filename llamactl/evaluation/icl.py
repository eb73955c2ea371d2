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

Batching: examples are sorted by length and grouped under a token budget. A group's contexts run
once, left-padded, into a static KV cache; the cache rows are then repeated per choice and all
continuations of the group run as one batch on top. Compared with scoring ``context + choice``
sequences this does the context work once per example instead of once per choice.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from llamactl.evaluation.tasks import Rendered, Task, render
from llamactl.model.kv_cache import KVCache, cache_attention_mask
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


def _repeat_rows(cache: KVCache, rows: torch.Tensor) -> KVCache:
    """A cache whose row i is ``cache`` row ``rows[i]`` (copies; the source stays untouched)."""
    out = object.__new__(KVCache)
    out.keys = [k.index_select(0, rows) for k in cache.keys]
    out.values = [v.index_select(0, rows) for v in cache.values]
    out.max_len, out.batch_size = cache.max_len, int(rows.numel())
    return out


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


@torch.no_grad()
def _score_group(model: Llama, group: list[Request]) -> list[list[ChoiceScore]]:
    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    e = len(group)
    c_len = max(len(r.context) for r in group)
    t_len = max(len(c) for r in group for c in r.continuations)
    slots = c_len + t_len
    # Contexts, left-padded: (E, C).
    ids = torch.zeros((e, c_len), dtype=torch.long)
    mask = torch.zeros((e, c_len), dtype=torch.bool)
    for i, r in enumerate(group):
        ids[i, c_len - len(r.context):] = torch.tensor(r.context)
        mask[i, c_len - len(r.context):] = True
    ids, mask = ids.to(dev), mask.to(dev)
    key_padding = torch.ones((e, slots), dtype=torch.bool, device=dev)
    key_padding[:, :c_len] = mask
    pos = (mask.long().cumsum(-1) - 1).clamp_min(0)  # (E, C)
    cache = KVCache.for_config(model.config, e, slots, dtype=dtype, device=dev)
    cache_position = torch.arange(c_len, device=dev)
    hidden = model.forward_hidden(ids, position_ids=pos, kv_cache=cache, cache_position=cache_position,
                                  attn_mask=cache_attention_mask(cache_position, slots, key_padding))
    last = hidden[:, -1]  # (E, d): predicts every continuation's first token

    # One row per (example, choice): continuations right-padded to T.
    rows, conts = [], []
    for i, r in enumerate(group):
        for c in r.continuations:
            rows.append(i)
            conts.append(c)
    n = len(conts)
    row_idx = torch.tensor(rows, device=dev)
    cont = torch.zeros((n, t_len), dtype=torch.long)
    lens = torch.tensor([len(c) for c in conts])
    for j, c in enumerate(conts):
        cont[j, :len(c)] = torch.tensor(c)
    cont = cont.to(dev)
    first_lp, first_greedy = _token_logprobs(model, last.index_select(0, row_idx), cont[:, 0])
    total = first_lp.double()
    all_greedy = first_greedy.clone()
    if t_len > 1:
        pair_cache = _repeat_rows(cache, row_idx)
        cpos = torch.arange(c_len, slots, device=dev)  # (T,)
        ctx_lens = mask.long().sum(-1).index_select(0, row_idx)  # (N,)
        cont_pos = ctx_lens[:, None] + torch.arange(t_len, device=dev)[None, :]  # (N, T): real positions
        attn = cache_attention_mask(cpos, slots, key_padding.index_select(0, row_idx))  # (N, 1, T, S)
        h = model.forward_hidden(cont, position_ids=cont_pos, kv_cache=pair_cache, cache_position=cpos,
                                 attn_mask=attn)  # (N, T, d)
        # Position t predicts token t + 1; keep the ones inside each continuation.
        valid = torch.arange(t_len - 1)[None, :] < (lens[:, None] - 1)  # (N, T-1)
        valid = valid.to(dev)
        sel_h = h[:, :-1][valid]  # (M, d)
        sel_t = cont[:, 1:][valid]  # (M,)
        lp, gr = _token_logprobs(model, sel_h, sel_t)
        owner = torch.arange(n, device=dev)[:, None].expand(n, t_len - 1)[valid]  # (M,)
        total = total.index_add(0, owner, lp.double())
        bad = torch.zeros(n, dtype=torch.long, device=dev).index_add(0, owner, (~gr).long())
        all_greedy &= bad == 0
    totals, greedys = total.tolist(), all_greedy.tolist()
    out: list[list[ChoiceScore]] = []
    j = 0
    for r in group:
        out.append([ChoiceScore(totals[j + k], len(r.continuations[k]), greedys[j + k])
                    for k in range(len(r.continuations))])
        j += len(r.continuations)
    return out


def score_requests(model: Llama, requests: list[Request], *, batch_tokens: int = 8192,
                   progress: Progress | None = None) -> list[list[ChoiceScore]]:
    """Scores of every continuation of every request, in request order.

    Args:
        batch_tokens: budget per group, counted as (examples + choices) x padded length; it bounds
            the activations and the repeated KV cache of a group.
    """
    order = sorted(range(len(requests)), key=lambda i: -(len(requests[i].context)
                                                          + max(len(c) for c in requests[i].continuations)))
    results: list[list[ChoiceScore] | None] = [None] * len(requests)
    done = 0
    group: list[int] = []

    def cost(members: list[int]) -> int:
        rs = [requests[i] for i in members]
        width = max(len(r.context) for r in rs) + max(len(c) for r in rs for c in r.continuations)
        return (len(rs) + sum(len(r.continuations) for r in rs)) * width

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
