"""The decode-time fast paths of the model: fused projections and grouped cache attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llamactl.generation import Generator, SamplingConfig
from llamactl.model import llama as llama_module
from llamactl.model.kv_cache import cache_attention_mask
from llamactl.model.llama import DECODE_ATTENTION, Llama, grouped_decode_attention, repeat_kv, set_decode_attention
from llamactl.model.presets import preset


def _model(seed: int = 0, **overrides) -> Llama:
    cfg = preset("tiny", **overrides)
    model = Llama(cfg)
    model.init_weights(seed)
    return model.eval()


def test_fused_projections_are_views_with_the_same_parameters_and_outputs():
    model = _model(attention_bias=True)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits
    params = dict(model.named_parameters())
    state = {k: v.clone() for k, v in model.state_dict().items()}

    assert model.fuse_projections() is True
    assert model.fuse_projections() is False  # idempotent
    assert dict(model.named_parameters()) == params  # same Parameter objects (optimizers keep theirs)
    after_state = model.state_dict()
    assert after_state.keys() == state.keys()
    assert all(torch.equal(after_state[k], state[k]) for k in state)
    attn, mlp = model.layers[0].self_attn, model.layers[0].mlp
    fused_w, fused_b = attn._qkv
    assert attn.k_proj.weight.data_ptr() == fused_w[attn.q_proj.out_features:].data_ptr()  # a view, no copy
    assert attn.v_proj.bias.data_ptr() == fused_b[-attn.v_proj.out_features:].data_ptr()
    assert mlp.up_proj.weight.data_ptr() == mlp._gate_up[0][mlp.gate_proj.out_features:].data_ptr()
    with torch.no_grad():
        after = model(ids).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)

    model.to(torch.float64)  # new storage for every parameter: the fused matrices are stale
    assert model.fuse_projections() is True
    assert model.layers[0].self_attn._qkv[0].dtype == torch.float64


def test_training_mode_ignores_the_fused_matrices_so_gradients_reach_every_projection():
    model = _model()
    model.fuse_projections()
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(1))
    model(ids, labels=ids).loss.backward()
    attn, mlp = model.layers[0].self_attn, model.layers[0].mlp
    for p in (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, mlp.gate_proj.weight, mlp.up_proj.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_lora_wrapped_projections_are_left_unfused():
    peft = pytest.importorskip("peft")
    model = _model()
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "gate_proj"]))
    inner = wrapped.base_model.model
    inner.fuse_projections()
    assert inner.layers[0].self_attn._qkv is None and inner.layers[0].mlp._gate_up is None


@pytest.mark.parametrize("name", DECODE_ATTENTION)
def test_every_decode_attention_equals_sdpa_over_repeated_heads(name):
    gen = torch.Generator().manual_seed(2)
    b, nh, nkv, s, hd = 3, 8, 2, 10, 16
    q = torch.randn(b, nh, 1, hd, generator=gen)
    k, v = torch.randn(b, nkv, s, hd, generator=gen), torch.randn(b, nkv, s, hd, generator=gen)
    padding = torch.ones(b, s, dtype=torch.bool)
    padding[1, :3] = False  # a left-padded row
    mask = cache_attention_mask(torch.tensor([6]), s, padding)  # (B, 1, 1, S): slots 0..6 written
    ref = F.scaled_dot_product_attention(q, repeat_kv(k, nh // nkv), repeat_kv(v, nh // nkv), attn_mask=mask)
    if name in ("grouped", "grouped-reduce"):
        out = grouped_decode_attention(q, k, v, mask, hd ** -0.5, reduce=name == "grouped-reduce")
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # and through the model: greedy tokens equal the plain path's
    model = _model(num_key_value_heads=2)
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13]]
    default = llama_module._DECODE_ATTENTION
    try:
        set_decode_attention("repeat")
        plain = Generator(model, mode="eager", fuse=False).generate(prompts, SamplingConfig(max_new_tokens=12))
        set_decode_attention(name)
        fast = Generator(model, mode="eager").generate(prompts, SamplingConfig(max_new_tokens=12))
    finally:
        set_decode_attention(default)
    assert fast.tokens == plain.tokens


def test_unknown_decode_attention_is_refused():
    with pytest.raises(ValueError, match="unknown decode attention"):
        set_decode_attention("flash-decoding")
