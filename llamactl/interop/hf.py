"""Hugging Face ⇄ llamactl: the config mapping and the weight-name table.

The table is the single source of truth for names, used in both directions. ``{}`` stands for the
layer index; a ``None`` target means the key is dropped on purpose (rotary buffers that old
checkpoints carry, which we recompute). Any key that the table does not know, and any weight the
target model needs but the source lacks, is an error that names it: a silent
``load_state_dict(strict=False)`` is how the seed once exported an empty LoRA adapter.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from llamactl.errors import WeightMappingError
from llamactl.model.config import LlamaConfig

# HF name -> llamactl name. Ours is the HF name without the ``model.`` prefix of the backbone.
WEIGHT_TABLE: dict[str, str | None] = {
    "model.embed_tokens.weight": "embed_tokens.weight",
    "model.layers.{}.self_attn.q_proj.weight": "layers.{}.self_attn.q_proj.weight",
    "model.layers.{}.self_attn.k_proj.weight": "layers.{}.self_attn.k_proj.weight",
    "model.layers.{}.self_attn.v_proj.weight": "layers.{}.self_attn.v_proj.weight",
    "model.layers.{}.self_attn.o_proj.weight": "layers.{}.self_attn.o_proj.weight",
    "model.layers.{}.self_attn.q_proj.bias": "layers.{}.self_attn.q_proj.bias",
    "model.layers.{}.self_attn.k_proj.bias": "layers.{}.self_attn.k_proj.bias",
    "model.layers.{}.self_attn.v_proj.bias": "layers.{}.self_attn.v_proj.bias",
    "model.layers.{}.self_attn.o_proj.bias": "layers.{}.self_attn.o_proj.bias",
    "model.layers.{}.mlp.gate_proj.weight": "layers.{}.mlp.gate_proj.weight",
    "model.layers.{}.mlp.up_proj.weight": "layers.{}.mlp.up_proj.weight",
    "model.layers.{}.mlp.down_proj.weight": "layers.{}.mlp.down_proj.weight",
    "model.layers.{}.mlp.gate_proj.bias": "layers.{}.mlp.gate_proj.bias",
    "model.layers.{}.mlp.up_proj.bias": "layers.{}.mlp.up_proj.bias",
    "model.layers.{}.mlp.down_proj.bias": "layers.{}.mlp.down_proj.bias",
    "model.layers.{}.input_layernorm.weight": "layers.{}.input_layernorm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.post_attention_layernorm.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
    "model.layers.{}.self_attn.rotary_emb.inv_freq": None,
    "model.rotary_emb.inv_freq": None,
}

_LAYER = re.compile(r"\.(\d+)\.")


def _pattern(name: str) -> tuple[str, str | None]:
    """Split a concrete key into its table pattern and layer index ('layers.3.x' -> 'layers.{}.x', '3')."""
    m = _LAYER.search(name)
    if not m:
        return name, None
    return name[:m.start()] + ".{}." + name[m.end():], m.group(1)


def _build_reverse() -> dict[str, str]:
    return {v: k for k, v in WEIGHT_TABLE.items() if v is not None}


_REVERSE = _build_reverse()


def hf_to_llamactl_key(name: str) -> str | None:
    """Our name for an HF key; None when the key is dropped on purpose. Unknown keys raise."""
    pattern, idx = _pattern(name)
    if pattern not in WEIGHT_TABLE:
        raise WeightMappingError(f"unknown Hugging Face weight {name!r}: it is not a Llama weight llamactl maps")
    target = WEIGHT_TABLE[pattern]
    return None if target is None else target.replace("{}", idx or "")


def llamactl_to_hf_key(name: str) -> str:
    """The HF key for one of our weight names. Unknown names raise."""
    pattern, idx = _pattern(name)
    if pattern not in _REVERSE:
        raise WeightMappingError(f"unknown llamactl weight {name!r}: it has no Hugging Face name")
    return _REVERSE[pattern].replace("{}", idx or "")


def _expected_keys(config: LlamaConfig) -> set[str]:
    """The llamactl state-dict keys a model of this config has (tied head listed once)."""
    keys = {"embed_tokens.weight", "norm.weight"}
    if not config.tie_word_embeddings:
        keys.add("lm_head.weight")
    per_layer = ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                 "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                 "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight"]
    if config.attention_bias:
        per_layer += [f"self_attn.{p}_proj.bias" for p in "qkvo"]
    if config.mlp_bias:
        per_layer += [f"mlp.{p}_proj.bias" for p in ("gate", "up", "down")]
    for i in range(config.num_hidden_layers):
        keys.update(f"layers.{i}.{k}" for k in per_layer)
    return keys


def hf_state_dict_to_llamactl(state: Mapping[str, Any], config: LlamaConfig) -> dict[str, Any]:
    """Rename an HF ``LlamaForCausalLM`` state dict to ours, strictly.

    A tied checkpoint may or may not carry ``lm_head.weight``; when it does it is dropped (the
    head *is* the embedding). Raises :class:`WeightMappingError` naming the first unknown key,
    or listing the weights the config needs that the checkpoint lacks.
    """
    out: dict[str, Any] = {}
    for name, tensor in state.items():
        ours = hf_to_llamactl_key(name)
        if ours is None or (ours == "lm_head.weight" and config.tie_word_embeddings):
            continue
        out[ours] = tensor
    expected = _expected_keys(config)
    # Named as the checkpoint names them, so the user can look for them in its files.
    missing = sorted(llamactl_to_hf_key(k) for k in expected - out.keys())
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise WeightMappingError(f"checkpoint lacks weight(s) {', '.join(missing[:3])}{more} for this config")
    extra = sorted(out.keys() - expected)
    if extra:
        raise WeightMappingError(f"checkpoint has weight {llamactl_to_hf_key(extra[0])!r}, which this config "
                                 f"({config.num_hidden_layers} layers) does not use")
    return out


def llamactl_state_dict_to_hf(state: Mapping[str, Any], config: LlamaConfig) -> dict[str, Any]:
    """Rename our state dict to HF names; a tied head is left out, as transformers saves it."""
    out: dict[str, Any] = {}
    for name, tensor in state.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        out[llamactl_to_hf_key(name)] = tensor
    return out


# ---------------------------------------------------------------------------------------- config
_COPIED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
           "tie_word_embeddings", "attention_bias", "mlp_bias", "hidden_act", "initializer_range",
           "bos_token_id", "eos_token_id", "pad_token_id")


def config_from_hf_dict(data: Mapping[str, Any]) -> LlamaConfig:
    """Our config from an HF ``config.json`` dict, in either the transformers 4 layout
    (``rope_theta`` + ``rope_scaling``) or the 5 layout (``rope_parameters``)."""
    model_type = data.get("model_type", "llama")
    if model_type != "llama":
        raise WeightMappingError(f"model_type {model_type!r} is not a Llama model; llamactl handles model_type 'llama'")
    kwargs: dict[str, Any] = {}
    for k in _COPIED:  # token ids may legitimately be null; other nulls mean "use the default"
        if k in data and (data[k] is not None or k.endswith("token_id")):
            kwargs[k] = data[k]
    rope_params = dict(data.get("rope_parameters") or {})
    theta = data.get("rope_theta", rope_params.pop("rope_theta", None))
    if theta is not None:
        kwargs["rope_theta"] = float(theta)
    scaling = data.get("rope_scaling") or (rope_params or None)
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
        kwargs["rope_scaling"] = scaling
    return LlamaConfig(**kwargs)


def config_to_hf_dict(config: LlamaConfig) -> dict[str, Any]:
    """An HF ``config.json`` dict (transformers-4 keys, which transformers 5 also reads)."""
    data: dict[str, Any] = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    for k in _COPIED:
        data[k] = getattr(config, k)
    data["rope_theta"] = config.rope_theta
    data["rope_scaling"] = dict(config.rope_scaling) if config.rope_scaling else None
    data["attention_dropout"] = 0.0
    data["pretraining_tp"] = 1
    data["use_cache"] = True
    return data


def to_transformers_config(config: LlamaConfig):
    """A ``transformers.LlamaConfig`` for this architecture (imports transformers)."""
    from transformers import LlamaConfig as HFLlamaConfig

    data = config_to_hf_dict(config)
    data.pop("architectures")
    data.pop("model_type")
    hf = HFLlamaConfig(**data)
    hf.architectures = ["LlamaForCausalLM"]
    return hf
