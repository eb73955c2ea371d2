"""``sequence_id``: documents packed into one row attend only within themselves, so each gets the
logits it would get alone (rotary attention depends on relative positions only)."""

from __future__ import annotations

import pytest
import torch

from llama_test_utils import TINY_CONFIGS, random_ids, random_llama


@pytest.mark.parametrize("name", ["gqa-untied", "mha-tied-llama3"])
def test_packed_documents_equal_each_document_alone(name: str) -> None:
    cfg = TINY_CONFIGS[name]
    model = random_llama(cfg, seed=31)
    docs = [random_ids(cfg, 1, n, seed=n)[0] for n in (7, 11, 5)]
    packed = torch.cat(docs)[None]  # (1, 23)
    sequence_id = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]  # (1, 23)
    with torch.no_grad():
        got = model(packed, sequence_id=sequence_id).logits[0]
        start = 0
        for d in docs:
            alone = model(d[None]).logits[0]
            # Same relative positions, different absolute ones: equal up to fp32 rounding of cos/sin.
            assert (got[start:start + len(d)] - alone).abs().max().item() <= 1e-5
            start += len(d)
        # Without sequence_id the later documents do see the earlier ones.
        leaky = model(packed).logits[0]
        assert (leaky[7:] - got[7:]).abs().max().item() > 1e-2


def test_packed_forward_has_no_graph_breaks() -> None:
    cfg = TINY_CONFIGS["gqa-untied"]
    model = random_llama(cfg).train()
    ids = random_ids(cfg, 2, 12)
    sequence_id = torch.tensor([[0] * 5 + [1] * 7, [0] * 12])
    torch._dynamo.reset()
    try:
        out = torch._dynamo.explain(model)(ids, labels=ids, sequence_id=sequence_id)
    finally:
        torch._dynamo.reset()
    assert out.graph_break_count == 0, [str(r.reason) for r in out.break_reasons]
