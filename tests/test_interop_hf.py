"""The HF ⇄ llamactl weight table is strict: every unknown, missing or misshapen weight is an error
that names it; the HF → ours → HF round trip is bit-exact."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from llama_test_utils import TINY_CONFIGS, random_llama, randomize_
from llamactl.errors import WeightMappingError
from llamactl.interop.checkpoint import load_state_into
from llamactl.interop.hf import (WEIGHT_TABLE, config_from_hf_dict, config_to_hf_dict, hf_state_dict_to_llamactl,
                                 hf_to_llamactl_key, llamactl_state_dict_to_hf, llamactl_to_hf_key,
                                 to_transformers_config)
from llamactl.model import Llama, LlamaConfig

UNTIED = TINY_CONFIGS["gqa-untied"]
TIED = TINY_CONFIGS["mha-tied-llama3"]


def hf_state(cfg: LlamaConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    return randomize_(LlamaForCausalLM(to_transformers_config(cfg)), seed).state_dict()


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_round_trip_is_bit_exact(name: str) -> None:
    cfg = TINY_CONFIGS[name]
    src = hf_state(cfg, seed=3)
    ours = hf_state_dict_to_llamactl(src, cfg)
    back = llamactl_state_dict_to_hf(ours, cfg)
    # transformers lists a tied head in state_dict(); the table leaves it out, as save_pretrained does.
    want = {k: v for k, v in src.items() if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
    assert back.keys() == want.keys()
    for k in want:
        assert torch.equal(back[k], want[k]), k
        assert back[k].dtype == want[k].dtype, k


def test_every_model_weight_has_an_hf_name() -> None:
    """Each parameter of our model maps, and maps back to itself: the table covers the model."""
    for cfg in TINY_CONFIGS.values():
        for name in Llama(cfg).state_dict():
            assert hf_to_llamactl_key(llamactl_to_hf_key(name)) == name


def test_unknown_hf_key_is_named() -> None:
    state = hf_state(UNTIED)
    state["model.layers.0.self_attn.q_norm.weight"] = torch.ones(8)  # a Qwen3/OLMo2 weight, not Llama
    with pytest.raises(WeightMappingError, match=r"model\.layers\.0\.self_attn\.q_norm\.weight"):
        hf_state_dict_to_llamactl(state, UNTIED)


def test_unknown_llamactl_key_is_named() -> None:
    """A LoRA key that slipped into a full-weight export is refused, not silently written."""
    state = random_llama(UNTIED).state_dict()
    state["layers.1.self_attn.q_proj.lora_A.weight"] = torch.zeros(4, 48)
    with pytest.raises(WeightMappingError, match=r"layers\.1\.self_attn\.q_proj\.lora_A\.weight"):
        llamactl_state_dict_to_hf(state, UNTIED)


def test_missing_weight_is_named() -> None:
    state = hf_state(UNTIED)
    del state["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(WeightMappingError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        hf_state_dict_to_llamactl(state, UNTIED)


def test_untied_config_needs_the_head() -> None:
    state = hf_state(UNTIED)
    del state["lm_head.weight"]
    with pytest.raises(WeightMappingError, match=r"lm_head\.weight"):
        hf_state_dict_to_llamactl(state, UNTIED)


def test_extra_layer_is_refused() -> None:
    """A 3-layer checkpoint loaded with a 2-layer config is an error, not a silent truncation."""
    state = hf_state(UNTIED.replace(num_hidden_layers=3))
    with pytest.raises(WeightMappingError, match=r"model\.layers\.2\."):
        hf_state_dict_to_llamactl(state, UNTIED)


def test_biases_are_required_when_the_config_has_them() -> None:
    cfg = TINY_CONFIGS["mqa-headdim-bias"]
    state = hf_state(cfg)
    del state["model.layers.0.self_attn.k_proj.bias"]
    with pytest.raises(WeightMappingError, match=r"model\.layers\.0\.self_attn\.k_proj\.bias"):
        hf_state_dict_to_llamactl(state, cfg)


def test_dropped_keys_are_exactly_the_none_entries() -> None:
    """Rotary buffers old checkpoints carry are dropped (we recompute them); a tied head is dropped
    because it *is* the embedding; nothing else disappears."""
    state = hf_state(TIED)
    assert "lm_head.weight" in state
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    state["model.rotary_emb.inv_freq"] = torch.ones(4)
    ours = hf_state_dict_to_llamactl(state, TIED)
    assert "lm_head.weight" not in ours
    assert len(ours) == len(state) - 3
    assert {k for k, v in WEIGHT_TABLE.items() if v is None} == {
        "model.layers.{}.self_attn.rotary_emb.inv_freq", "model.rotary_emb.inv_freq"}


@pytest.mark.parametrize("key, shape", [("layers.0.self_attn.k_proj.weight", (48, 48)),
                                        ("embed_tokens.weight", (96, 48)),
                                        ("norm.weight", (47,))])
def test_wrong_shape_is_named_with_both_shapes(key: str, shape: tuple[int, ...]) -> None:
    state = hf_state_dict_to_llamactl(hf_state(UNTIED), UNTIED)
    state[key] = torch.zeros(shape)
    with torch.device("meta"):
        model = Llama(UNTIED)
    with pytest.raises(WeightMappingError) as info:
        load_state_into(model, state)
    msg = str(info.value)
    assert key in msg and str(shape) in msg


def test_config_to_hf_dict_is_what_transformers_reads() -> None:
    for cfg in TINY_CONFIGS.values():
        data = config_to_hf_dict(cfg)
        assert data["model_type"] == "llama" and data["architectures"] == ["LlamaForCausalLM"]
        assert config_from_hf_dict(data) == cfg


def test_transformers5_rope_parameters_layout() -> None:
    """transformers 5 writes rope_theta and rope scaling inside ``rope_parameters``."""
    data = {"model_type": "llama", "vocab_size": 97, "hidden_size": 48, "intermediate_size": 83,
            "num_hidden_layers": 2, "num_attention_heads": 6, "num_key_value_heads": 2,
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 16}}
    cfg = config_from_hf_dict(data)
    assert cfg.rope_theta == 500000.0
    assert cfg.rope_scaling == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    plain = config_from_hf_dict({**data, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}})
    assert plain.rope_scaling is None and plain.rope_theta == 1e4


def test_non_llama_model_type_is_refused() -> None:
    with pytest.raises(WeightMappingError, match="mistral"):
        config_from_hf_dict({"model_type": "mistral", "vocab_size": 10})
