"""Decoding with the static KV cache gives the logits of a full forward pass, for plain and
left-padded batches."""

from __future__ import annotations

import pytest
import torch

from llama_test_utils import TINY_CONFIGS, random_ids, random_llama
from llamactl.model import KVCache, Llama, cache_attention_mask

TOL = 1e-5


def cached_logits(model: Llama, ids: torch.Tensor, steps: list[int], max_len: int) -> torch.Tensor:
    """Feed ``ids`` (B, T) through the cache in pieces of the given lengths; (B, T, V) logits."""
    cfg = model.config
    cache = KVCache.for_config(cfg, ids.shape[0], max_len)
    out, start = [], 0
    for n in steps:
        pos = torch.arange(start, start + n)  # (n,) cache slots of this piece
        mask = cache_attention_mask(pos, max_len)  # (1, 1, n, max_len)
        out.append(model(ids[:, start:start + n], kv_cache=cache, cache_position=pos, attn_mask=mask).logits)
        start += n
    assert start == ids.shape[1]
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("name", ["gqa-untied", "mha-tied-llama3", "mqa-headdim-bias"])
def test_incremental_decoding_equals_full_forward(name: str) -> None:
    cfg = TINY_CONFIGS[name]
    model = random_llama(cfg, seed=11)
    ids = random_ids(cfg, 2, 20, seed=1)
    with torch.no_grad():
        full = model(ids).logits
        # a prefill of 7, six single tokens, a chunk of 3, then single tokens again; the cache is
        # longer than the sequence, so the unwritten slots must stay masked.
        steps = [7, 1, 1, 1, 1, 1, 1, 3, 1, 1, 1, 1]
        inc = cached_logits(model, ids, steps, max_len=32)
    assert (inc - full).abs().max().item() <= TOL


def test_cache_without_explicit_mask_is_causal_over_written_slots() -> None:
    """Omitting attn_mask with a cache means causal over the slots written so far, not over all."""
    cfg = TINY_CONFIGS["gqa-untied"]
    model = random_llama(cfg, seed=12)
    ids = random_ids(cfg, 1, 10, seed=2)
    cache = KVCache.for_config(cfg, 1, 16)
    with torch.no_grad():
        full = model(ids).logits
        model(ids[:, :6], kv_cache=cache, cache_position=torch.arange(6))
        step = model(ids[:, 6:7], kv_cache=cache, cache_position=torch.tensor([6])).logits
    assert (step[:, 0] - full[:, 6]).abs().max().item() <= TOL


def test_cache_needs_cache_position() -> None:
    cfg = TINY_CONFIGS["gqa-untied"]
    model = random_llama(cfg)
    with pytest.raises(ValueError, match="cache_position"):
        model(random_ids(cfg, 1, 3), kv_cache=KVCache.for_config(cfg, 1, 8))


@pytest.mark.parametrize("name", ["gqa-untied", "mha-tied-llama3"])
def test_left_padded_batch_equals_each_prompt_alone(name: str) -> None:
    """Two prompts of lengths 5 and 9, left-padded into one batch and decoded with the cache,
    give each prompt's own logits at every real position and every decoding step."""
    cfg = TINY_CONFIGS[name]
    model = random_llama(cfg, seed=13)
    prompts = [random_ids(cfg, 1, 5, seed=3)[0], random_ids(cfg, 1, 9, seed=4)[0]]
    continuation = random_ids(cfg, 2, 6, seed=5)  # teacher-forced next tokens, one row per prompt
    t, n_new = 9, continuation.shape[1]
    max_len = t + n_new + 3

    ids = torch.zeros(2, t, dtype=torch.long)  # (B, T), pad id 0 on the left
    real = torch.zeros(2, t, dtype=torch.bool)
    for row, p in enumerate(prompts):
        ids[row, t - len(p):] = p
        real[row, t - len(p):] = True
    key_padding = torch.ones(2, max_len, dtype=torch.bool)  # (B, S_max): False on padding slots
    key_padding[:, :t] = real
    position_ids = (real.long().cumsum(-1) - 1).clamp_min(0)  # (B, T): 0 at each first real token

    cache = KVCache.for_config(cfg, 2, max_len)
    with torch.no_grad():
        pos = torch.arange(t)
        logits = model(ids, kv_cache=cache, cache_position=pos, position_ids=position_ids,
                       attn_mask=cache_attention_mask(pos, max_len, key_padding)).logits
        steps = [logits]
        next_pos = position_ids[:, -1:] + 1  # (B, 1)
        for i in range(n_new):
            pos = torch.tensor([t + i])
            steps.append(model(continuation[:, i:i + 1], kv_cache=cache, cache_position=pos,
                               position_ids=next_pos, attn_mask=cache_attention_mask(pos, max_len, key_padding)
                               ).logits)
            next_pos = next_pos + 1
        batched = torch.cat(steps, dim=1)  # (B, T + n_new, V)
        assert torch.isfinite(batched).all(), "padding rows must not produce NaN"
        assert all(torch.isfinite(k).all() for k in cache.keys + cache.values)

        for row, p in enumerate(prompts):
            alone = model(torch.cat([p, continuation[row]])[None]).logits[0]  # (len + n_new, V)
            got = batched[row, t - len(p):]
            assert got.shape == alone.shape
            assert (got - alone).abs().max().item() <= TOL, f"prompt {row}"


def test_cache_attention_mask_semantics() -> None:
    pos = torch.tensor([2, 3])
    key_padding = torch.tensor([[False, True, True, True, True],
                                [True, True, True, True, True]])
    mask = cache_attention_mask(pos, 5, key_padding)
    assert mask.shape == (2, 1, 2, 5) and mask.dtype == torch.bool
    assert mask[0, 0].tolist() == [[False, True, True, False, False], [False, True, True, True, False]]
    assert mask[1, 0].tolist() == [[True, True, True, False, False], [True, True, True, True, False]]
    # A padding query (slot 0 of row 0) still sees its own slot, so SDPA never gets an all-False row.
    assert cache_attention_mask(torch.tensor([0]), 5, key_padding)[0, 0, 0].tolist() == [True] + [False] * 4


def test_reset_clears_the_cache() -> None:
    cfg = TINY_CONFIGS["gqa-untied"]
    model = random_llama(cfg, seed=14)
    ids = random_ids(cfg, 1, 8, seed=6)
    with torch.no_grad():
        first = cached_logits(model, ids, [4, 1, 1, 1, 1], max_len=8)
    cache = KVCache.for_config(cfg, 1, 8)
    with torch.no_grad():
        model(random_ids(cfg, 1, 8, seed=7), kv_cache=cache, cache_position=torch.arange(8))
    cache.reset()
    assert not any(k.any() for k in cache.keys + cache.values)
    with torch.no_grad():
        again = torch.cat([model(ids[:, :4], kv_cache=cache, cache_position=torch.arange(4)).logits] + [
            model(ids[:, i:i + 1], kv_cache=cache, cache_position=torch.tensor([i])).logits for i in range(4, 8)],
            dim=1)
    assert torch.equal(first, again)
