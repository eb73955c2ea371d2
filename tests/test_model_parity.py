"""Our Llama computes what ``transformers.LlamaForCausalLM`` computes, with weights moved through the
production table in both directions (CPU, fp32, random tiny configs)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from llama_test_utils import TINY_CONFIGS, random_ids, random_llama, randomize_
from llamactl.interop.checkpoint import load_state_into
from llamactl.interop.hf import (config_from_hf_dict, hf_state_dict_to_llamactl, llamactl_state_dict_to_hf,
                                 llamactl_to_hf_key, to_transformers_config)
from llamactl.model import Llama
from llamactl.model.llama import rope_inv_freq

TOL = 1e-5
CONFIG_IDS = list(TINY_CONFIGS)


def hf_model_from_ours(model: Llama, attn_implementation: str = "sdpa") -> LlamaForCausalLM:
    """A transformers model holding our weights, moved by the production table."""
    cfg = model.config
    hf_config = to_transformers_config(cfg)
    hf_config._attn_implementation = attn_implementation
    hf = LlamaForCausalLM(hf_config).eval()
    missing, unexpected = hf.load_state_dict(llamactl_state_dict_to_hf(model.state_dict(), cfg), strict=False)
    # A tied head is left out of the table's output, exactly as transformers saves it.
    assert missing == (["lm_head.weight"] if cfg.tie_word_embeddings else [])
    assert unexpected == []
    if cfg.tie_word_embeddings:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    return hf


def random_hf_model(name: str, seed: int) -> LlamaForCausalLM:
    return randomize_(LlamaForCausalLM(to_transformers_config(TINY_CONFIGS[name])), seed).eval()


@pytest.mark.parametrize("name", CONFIG_IDS)
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_ours_to_hf_logits_match(name: str, attn_implementation: str) -> None:
    cfg = TINY_CONFIGS[name]
    ours = random_llama(cfg, seed=1)
    hf = hf_model_from_ours(ours, attn_implementation)
    ids = random_ids(cfg, 2, 37)
    with torch.no_grad():
        diff = (ours(ids).logits - hf(ids).logits).abs().max().item()
    assert diff <= TOL, f"{name}/{attn_implementation}: max |Δlogits| = {diff:.3g}"


@pytest.mark.parametrize("name", CONFIG_IDS)
def test_hf_to_ours_logits_match(name: str) -> None:
    hf = random_hf_model(name, seed=2)
    cfg = config_from_hf_dict(hf.config.to_dict())
    assert cfg == TINY_CONFIGS[name], "config did not survive transformers -> llamactl"
    with torch.device("meta"):
        ours = Llama(cfg)
    load_state_into(ours, hf_state_dict_to_llamactl(hf.state_dict(), cfg))
    ours.eval()
    ids = random_ids(cfg, 3, 29, seed=5)
    with torch.no_grad():
        diff = (ours(ids).logits - hf(ids).logits).abs().max().item()
    assert diff <= TOL, f"{name}: max |Δlogits| = {diff:.3g}"


@pytest.mark.parametrize("name", CONFIG_IDS)
def test_loss_and_gradients_match_hf(name: str) -> None:
    """``labels=`` gives HF's loss (shift inside, -100 ignored) and the same parameter gradients."""
    cfg = TINY_CONFIGS[name]
    ours = random_llama(cfg, seed=3)
    ours.loss_chunk_size = 13  # several chunks, the last one short
    hf = hf_model_from_ours(ours)
    ids = random_ids(cfg, 2, 31, seed=7)
    labels = ids.clone()
    labels[0, :4] = -100  # a masked prompt
    labels[1, 20:] = -100  # right padding
    out = ours(ids, labels=labels)
    ref = hf(ids, labels=labels)
    assert out.logits is None, "logits must not be materialised when only the loss was asked for"
    assert abs(out.loss.item() - ref.loss.item()) <= 1e-6 * max(1.0, ref.loss.item())  # ~2 ulp
    out.loss.backward()
    ref.loss.backward()
    hf_grads = {n: p.grad for n, p in hf.named_parameters()}
    for n, p in ours.named_parameters():
        g = hf_grads[llamactl_to_hf_key(n)]
        assert torch.allclose(p.grad, g, atol=1e-6, rtol=1e-4), f"gradient of {n} differs from HF's"


@pytest.mark.parametrize("name", ["gqa-untied", "mha-tied-llama3"])
def test_left_padded_batch_matches_hf(name: str) -> None:
    """A boolean attn_mask + position_ids give HF's logits for an attention_mask-padded batch."""
    cfg = TINY_CONFIGS[name]
    ours = random_llama(cfg, seed=4)
    hf = hf_model_from_ours(ours)
    t = 23
    ids = random_ids(cfg, 2, t, seed=9)
    padding = torch.ones(2, t, dtype=torch.long)
    padding[0, :6] = 0  # first row is left-padded by six
    position_ids = (padding.cumsum(-1) - 1).clamp_min(0)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    attn_mask = (causal[None, None] & padding.bool()[:, None, None, :]) | torch.eye(t, dtype=torch.bool)
    with torch.no_grad():
        got = ours(ids, attn_mask=attn_mask, position_ids=position_ids).logits
        want = hf(ids, attention_mask=padding, position_ids=position_ids).logits
    real = padding.bool()
    assert (got[real] - want[real]).abs().max().item() <= TOL


def test_rope_scaling_reaches_the_frequencies() -> None:
    """llama3 / linear scaling change inv_freq exactly as transformers does (and do change it)."""
    for name in ("mha-tied-llama3", "gqa-tied-linear-rope"):
        cfg = TINY_CONFIGS[name]
        hf = LlamaForCausalLM(to_transformers_config(cfg))
        ours = rope_inv_freq(cfg)
        assert torch.equal(ours, hf.model.rotary_emb.inv_freq), name
        assert not torch.allclose(ours, rope_inv_freq(cfg.replace(rope_scaling=None))), name


def test_config_round_trip_through_transformers() -> None:
    for name, cfg in TINY_CONFIGS.items():
        assert config_from_hf_dict(to_transformers_config(cfg).to_dict()) == cfg, name
