"""The inner model compiles as one graph: no graph breaks in any forward the trainer or the
sampler uses, and ``torch.compile`` computes what eager computes."""

from __future__ import annotations

import pytest
import torch

from llama_test_utils import TINY_CONFIGS, random_ids, random_llama
from llamactl.model import KVCache, cache_attention_mask

CFG = TINY_CONFIGS["mha-tied-llama3"]


def _explain(fn, *args, **kwargs):
    torch._dynamo.reset()
    try:
        return torch._dynamo.explain(fn)(*args, **kwargs)
    finally:
        torch._dynamo.reset()


CASES = ["logits", "hidden", "labels-train", "labels-train-checkpointed", "labels-no-grad", "cached-decode"]


@pytest.mark.parametrize("case", CASES)
def test_forward_has_no_graph_breaks(case: str) -> None:
    model = random_llama(CFG)
    ids = random_ids(CFG, 2, 13)
    if case == "logits":
        out = _explain(model, ids)
    elif case == "hidden":
        out = _explain(model.forward_hidden, ids)
    elif case.startswith("labels-train"):
        model.train()
        model.activation_checkpointing = "full" if case.endswith("checkpointed") else "none"
        model.loss_chunk_size = 5
        out = _explain(model, ids, labels=ids)
    elif case == "labels-no-grad":
        with torch.no_grad():
            out = _explain(model, ids, labels=ids)
    else:
        cache = KVCache.for_config(CFG, 2, 32)
        pos = torch.tensor([13])
        key_padding = torch.ones(2, 32, dtype=torch.bool)
        key_padding[0, :3] = False
        with torch.no_grad():
            out = _explain(model, ids[:, :1], kv_cache=cache, cache_position=pos,
                           position_ids=torch.tensor([[10], [13]]),
                           attn_mask=cache_attention_mask(pos, 32, key_padding))
    reasons = [str(r.reason) for r in out.break_reasons]
    assert out.graph_break_count == 0, reasons
    assert out.graph_count == 1


@pytest.mark.slow
def test_compiled_model_equals_eager() -> None:
    """One inductor compile (forward + backward, fused loss included) on the CPU."""
    eager = random_llama(CFG, seed=21).train()
    eager.loss_chunk_size = 7
    compiled_owner = random_llama(CFG, seed=21).train()
    compiled_owner.loss_chunk_size = 7
    compiled = torch.compile(compiled_owner)
    ids = random_ids(CFG, 2, 17, seed=22)
    labels = ids.clone()
    labels[:, :3] = -100
    torch._dynamo.reset()
    try:
        got = compiled(ids, labels=labels, return_logits=True)
        got.loss.backward()
    finally:
        torch._dynamo.reset()
    want = eager(ids, labels=labels, return_logits=True)
    want.loss.backward()
    assert (got.logits - want.logits).abs().max().item() <= 1e-5
    assert abs(got.loss.item() - want.loss.item()) <= 1e-6
    grads = dict(compiled_owner.named_parameters())
    for name, p in eager.named_parameters():
        assert torch.allclose(grads[name].grad, p.grad, atol=1e-6, rtol=1e-4), name
