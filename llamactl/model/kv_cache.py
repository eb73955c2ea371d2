"""A static key/value cache: one preallocated (B, n_kv, S_max, hd) buffer pair per layer.

Static shapes are what let a decode step be compiled once and replayed as a CUDA graph: each step
writes its keys and values in place at ``cache_position`` and attends over the whole buffer with a
mask that hides the slots not yet written (and, for left-padded batches, the padding).
"""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer key/value buffers for incremental decoding."""

    def __init__(self, num_layers: int, batch_size: int, max_len: int, num_kv_heads: int,
                 head_dim: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_len = max_len
        self.batch_size = batch_size

    @classmethod
    def for_config(cls, config, batch_size: int, max_len: int, *, dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None) -> KVCache:
        """A cache sized for a :class:`~llamactl.model.config.LlamaConfig`."""
        return cls(config.num_hidden_layers, batch_size, max_len, config.num_key_value_heads,
                   config.head_dim, dtype=dtype, device=device)

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor, cache_position: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, n_kv, T, hd) at slots ``cache_position`` (T,); return the full buffers."""
        kb, vb = self.keys[layer_idx], self.values[layer_idx]
        kb.index_copy_(2, cache_position, k.to(kb.dtype))
        vb.index_copy_(2, cache_position, v.to(vb.dtype))
        return kb, vb

    def reset(self) -> None:
        for t in (*self.keys, *self.values):
            t.zero_()


def cache_attention_mask(cache_position: torch.Tensor, max_len: int,
                         key_padding: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask (B, 1, T, S_max): query t sees slot s when s <= cache_position[t] and the
    slot holds a real token (``key_padding`` (B, S_max), True = real; None = all real).

    A padding query always sees its own slot, so no row is fully masked: SDPA would return NaN
    for it, and a NaN value in the cache poisons every later product, masked or not.
    """
    slots = torch.arange(max_len, device=cache_position.device)
    causal = slots[None, :] <= cache_position[:, None]  # (T, S)
    if key_padding is None:
        return causal[None, None]
    own = slots[None, :] == cache_position[:, None]  # (T, S)
    return (causal[None, None] & key_padding[:, None, None, :].bool()) | own[None, None]
