"""Shared pieces of the model and interop tests: tiny configs that cover the architecture's
branches, and random weights that make any naming or layout mix-up visible in the logits."""

from __future__ import annotations

import torch
from torch import nn

from llamactl.model import Llama, LlamaConfig

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}

# Odd sizes on purpose: a vocab, width and MLP size that are not powers of two, a head_dim that is
# not hidden_size / heads, sequence lengths that are prime.
TINY_CONFIGS: dict[str, LlamaConfig] = {
    "gqa-untied": LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=83, num_hidden_layers=2,
                              num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                              rms_norm_eps=1e-5, tie_word_embeddings=False),
    "mha-tied-llama3": LlamaConfig(vocab_size=101, hidden_size=40, intermediate_size=70, num_hidden_layers=3,
                                   num_attention_heads=5, num_key_value_heads=5, max_position_embeddings=128,
                                   rope_theta=500000.0, rope_scaling=dict(LLAMA3_ROPE), tie_word_embeddings=True),
    "mqa-headdim-bias": LlamaConfig(vocab_size=64, hidden_size=32, head_dim=12, intermediate_size=50,
                                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                                    attention_bias=True, mlp_bias=True, tie_word_embeddings=False),
    "gqa-tied-linear-rope": LlamaConfig(vocab_size=77, hidden_size=36, intermediate_size=61, num_hidden_layers=2,
                                        num_attention_heads=6, num_key_value_heads=3, rope_theta=10000.0,
                                        rope_scaling={"rope_type": "linear", "factor": 2.0},
                                        tie_word_embeddings=True),
}


@torch.no_grad()
def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Fill every parameter with random values, norms and biases included (a norm left at ones
    would hide a swapped ``input_layernorm``/``post_attention_layernorm``)."""
    gen = torch.Generator().manual_seed(seed)
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=True):
        if id(p) in seen:
            continue
        seen.add(id(p))
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if name.endswith("norm.weight"):
            p.copy_(1.0 + 0.2 * noise)
        elif name.endswith("bias"):
            p.copy_(0.05 * noise)
        else:
            p.copy_(0.08 * noise)
    return model


def random_llama(config: LlamaConfig, seed: int = 0) -> Llama:
    """Our model with random weights, in eval mode."""
    model = Llama(config)
    model.init_weights(seed)
    return randomize_(model, seed).eval()


def random_ids(config: LlamaConfig, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (batch, length), generator=gen)
