"""The Llama architecture config, with Hugging Face field names.

Only architecture lives here: every field has the meaning and the name it has in a Hugging Face
``config.json`` of a ``LlamaForCausalLM``, so the mapping to and from transformers is a plain copy
(see :mod:`llamactl.interop.hf`). Runtime knobs (attention backend, activation checkpointing, loss
chunking) are attributes of the model, not of the architecture.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

_ROPE_TYPES = ("default", "llama3", "linear")


class ModelConfigError(ValueError):
    """An architecture config that cannot describe a Llama model."""


@dataclass
class LlamaConfig:
    """Architecture of a Llama-family decoder (Llama 2/3/3.1/3.2, SmolLM2, TinyLlama, ...).

    Attributes mirror ``transformers.LlamaConfig``. ``head_dim`` defaults to
    ``hidden_size // num_attention_heads``; ``num_key_value_heads`` defaults to
    ``num_attention_heads`` (plain multi-head attention).
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ModelConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ModelConfigError(
                    f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                    f"({self.num_attention_heads}) unless head_dim is given")
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.head_dim % 2:
            raise ModelConfigError(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads})")
        if self.hidden_act != "silu":
            raise ModelConfigError(f"hidden_act {self.hidden_act!r} is not supported; Llama uses 'silu'")
        if self.rope_scaling is not None:
            self.rope_scaling = dict(self.rope_scaling)
            rope_type = self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))
            if rope_type not in _ROPE_TYPES:
                raise ModelConfigError(
                    f"rope_scaling type {rope_type!r} is not supported; use one of {', '.join(_ROPE_TYPES)}")
            self.rope_scaling["rope_type"] = rope_type
            self.rope_scaling.pop("type", None)
            if rope_type == "default":
                self.rope_scaling = None
            else:
                needed = ("factor",) if rope_type == "linear" else (
                    "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
                missing = [k for k in needed if k not in self.rope_scaling]
                if missing:
                    raise ModelConfigError(f"rope_scaling of type {rope_type!r} needs {', '.join(missing)}")

    @property
    def n_rep(self) -> int:
        """How many query heads share one key/value head."""
        return self.num_attention_heads // self.num_key_value_heads

    def num_params(self, *, include_embedding: bool = True) -> int:
        """Parameter count, counting a tied head once."""
        d, hd = self.hidden_size, self.head_dim
        attn = d * hd * (self.num_attention_heads * 2 + self.num_key_value_heads * 2)
        if self.attention_bias:
            attn += hd * (self.num_attention_heads + 2 * self.num_key_value_heads) + d
        mlp = 3 * d * self.intermediate_size + (2 * self.intermediate_size + d if self.mlp_bias else 0)
        layer = attn + mlp + 2 * d
        emb = self.vocab_size * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        total = self.num_hidden_layers * layer + d + head
        return total + (emb if include_embedding else 0)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6·N + 12·L·d_attn·T.

        N counts the matrix-multiply parameters (the embedding lookup is free, the output head is
        not, even when tied); the attention term is the causal-agnostic PaLM convention used by
        Composer and LLM Foundry, so MFU figures are comparable with theirs.
        """
        n_matmul = self.num_params(include_embedding=False)
        if self.tie_word_embeddings:
            n_matmul += self.vocab_size * self.hidden_size
        attn_dim = self.num_attention_heads * self.head_dim
        return 6.0 * n_matmul + 12.0 * self.num_hidden_layers * attn_dim * seq_len

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LlamaConfig:
        """Build from a dict, refusing keys that are not Llama architecture fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ModelConfigError(f"unknown model config key(s): {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> LlamaConfig:
        return dataclasses.replace(self, **changes)

