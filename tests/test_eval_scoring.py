"""Log-likelihood scoring and perplexity on a tiny random model, against plain full-sequence
computations with transformers: batching, left padding, the shared-context cache and the
token-weighted perplexity must not change a single number."""

from __future__ import annotations

import math

import pytest
import torch

from llamactl.evaluation.icl import ChoiceScore, Request, accuracy, score_requests
from llamactl.evaluation.perplexity import batch_blocks, evaluate_perplexity
from llamactl.evaluation.tasks import Item, Rendered, Task
from llamactl.interop.hf import llamactl_state_dict_to_hf, to_transformers_config
from llamactl.model.llama import Llama
from llamactl.model.presets import preset


@pytest.fixture(scope="module")
def models():
    from transformers import LlamaForCausalLM

    cfg = preset("tiny")
    torch.manual_seed(0)
    ours = Llama(cfg)
    ours.init_weights(0)
    ours.eval()
    hf = LlamaForCausalLM(to_transformers_config(cfg)).eval()
    state = llamactl_state_dict_to_hf(ours.state_dict(), cfg)
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    hf.load_state_dict(state, strict=True)
    return cfg, ours, hf


def _naive(hf, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = hf(ids).logits[0].float().log_softmax(-1)
    rows = logp[len(ctx) - 1:len(ctx) + len(cont) - 1]  # (len(cont), V)
    tgt = torch.tensor(cont)
    return float(rows.gather(1, tgt[:, None]).sum()), bool((rows.argmax(-1) == tgt).all())


def test_batched_shared_context_scores_equal_full_sequence_scores(models):
    cfg, ours, hf = models
    g = torch.Generator().manual_seed(0)

    def rand(n):
        return torch.randint(3, cfg.vocab_size, (n,), generator=g).tolist()

    requests = [Request(rand(c), [rand(k) for k in ks])
                for c, ks in [(5, [1, 3, 2]), (17, [4, 1]), (9, [2, 2, 6, 1]), (1, [3, 3]), (30, [1, 1]), (12, [5])]]
    # a continuation that greedy decoding reproduces, to see the greedy flag set
    ctx = rand(6)
    with torch.no_grad():
        nxt = int(hf(torch.tensor([ctx])).logits[0, -1].argmax())
        nxt2 = int(hf(torch.tensor([ctx + [nxt]])).logits[0, -1].argmax())
    requests.append(Request(ctx, [[nxt, nxt2], rand(2)]))
    progress = []
    for budget in (64, 100_000):  # many small groups, and one group
        got = score_requests(ours, requests, batch_tokens=budget, progress=lambda d, t: progress.append((d, t)))
        for r, scores in zip(requests, got):
            for cont, s in zip(r.continuations, scores):
                lp, greedy = _naive(hf, r.context, cont)
                assert s.logprob == pytest.approx(lp, abs=1e-4)
                assert s.num_tokens == len(cont)
                assert s.greedy == greedy
    assert got[-1][0].greedy and progress[-1] == (len(requests), len(requests))


def test_accuracy_raw_vs_length_normalised_stderr_and_chance():
    items = [Item("q", ["a", "b"], [0]), Item("q", ["a", "b", "c"], [2]), Item("q", ["a", "b"], [1])]
    task = Task("t", None, "multiple_choice", "icl_jsonl", items)  # type: ignore[arg-type]
    rendered = [Rendered("q", it.choices, it.gold) for it in items]
    scores = [
        [ChoiceScore(-4.0, 4, False), ChoiceScore(-3.0, 1, False)],  # raw picks b (wrong), norm picks a (-1 > -3)
        [ChoiceScore(-1.0, 1, False), ChoiceScore(-5.0, 1, False), ChoiceScore(-2.0, 1, False)],  # both pick a: wrong
        [ChoiceScore(-2.0, 1, False), ChoiceScore(-2.0, 2, False)],  # raw tie -> first (wrong); norm picks b
    ]
    r = accuracy(task, rendered, scores, shots=0)
    assert r.acc == 0.0 and r.acc_stderr == 0.0
    assert r.acc_norm == pytest.approx(2 / 3)
    assert r.acc_norm_stderr == pytest.approx(math.sqrt((2 / 3) * (1 / 3) / 2))
    assert r.chance == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)


def test_perplexity_is_token_weighted_and_padding_does_not_change_it(models):
    cfg, ours, hf = models
    g = torch.Generator().manual_seed(1)
    blocks = [torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist() for n in (40, 7, 23, 2)]
    # reference: sum of per-target losses over all blocks / number of targets
    total, count = 0.0, 0
    with torch.no_grad():
        for b in blocks:
            logp = hf(torch.tensor([b])).logits[0].float().log_softmax(-1)
            total -= float(logp[:-1].gather(1, torch.tensor(b[1:])[:, None]).sum())
            count += len(b) - 1
    ce, ppl, tokens = evaluate_perplexity(ours, batch_blocks(blocks, batch_size=3))
    assert tokens == count == 68
    assert ce == pytest.approx(total / count, rel=1e-6)
    assert ppl == pytest.approx(math.exp(total / count), rel=1e-6)
    # left padding through attention_mask gives the same number
    left = []
    for b in blocks:
        pad = 40 - len(b)
        left.append({"input_ids": torch.tensor([[0] * pad + b]), "attention_mask": torch.tensor([[0] * pad + [1] * len(b)])})
    assert evaluate_perplexity(ours, left).ce == pytest.approx(ce, rel=1e-6)
    # plain id tensors: every token is a target
    assert evaluate_perplexity(ours, [torch.tensor([blocks[0]])]).tokens == 39
