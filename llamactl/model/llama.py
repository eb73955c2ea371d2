"""A pure-PyTorch Llama: the inner model that llamactl trains, evaluates and samples from.

Module and parameter names follow Hugging Face (``embed_tokens``, ``layers.N.self_attn.q_proj``,
``mlp.gate_proj``, ``input_layernorm``, ``norm``, ``lm_head``), and rotary embeddings use HF's
half-split layout, so the weight table to ``transformers.LlamaForCausalLM`` is a rename of the
``model.`` prefix and PEFT ``target_modules`` work unchanged.

Numerics follow transformers operation for operation (RMSNorm in fp32, cos/sin computed in fp32
then cast, SDPA with ``scale = head_dim ** -0.5``), which is what makes logits equal to the last
bit-ish on CPU fp32. This module imports torch and the standard library only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
import torch.utils._pytree
from torch import nn
from torch.utils.checkpoint import checkpoint

from llamactl.model.config import LlamaConfig
from llamactl.model.kv_cache import KVCache, cache_attention_mask
from llamactl.model.loss import IGNORE_INDEX, fused_linear_cross_entropy

ActivationCheckpointing = Literal["none", "selective", "full"]

# SDPA backend choice (None = let PyTorch pick). On Hopper, cuDNN was measured 1.47x faster than
# FlashAttention-2 for causal fwd+bwd; PyTorch's default order does not always pick it.
_SDPA_BACKENDS: list | None = None

# How a single query (one decode step) attends over a KV cache: "grouped" multiplies each query
# group with its shared key/value head directly (no copies of K and V; two batched matmuls),
# "grouped-reduce" writes the same products as multiply-and-sum (which Inductor turns into fused
# reductions instead of matmul calls), "sdpa-gqa" hands the grouping to SDPA (enable_gqa),
# "repeat" copies K and V out to every query head first, as the prefill and training paths do.
DECODE_ATTENTION = ("grouped", "grouped-reduce", "sdpa-gqa", "repeat")
_DECODE_ATTENTION = "sdpa-gqa"  # fastest measured (H200, 1B, batch 1, compiled: 919 vs 875 grouped)


def set_sdpa_backend(name: str) -> None:
    """Restrict ``scaled_dot_product_attention`` to one backend: auto, cudnn, flash, efficient, math."""
    global _SDPA_BACKENDS
    from torch.nn.attention import SDPBackend

    table = {"cudnn": [SDPBackend.CUDNN_ATTENTION], "flash": [SDPBackend.FLASH_ATTENTION],
             "efficient": [SDPBackend.EFFICIENT_ATTENTION], "math": [SDPBackend.MATH]}
    if name != "auto" and name not in table:
        raise ValueError(f"unknown attention backend {name!r}; use auto, {', '.join(table)}")
    _SDPA_BACKENDS = None if name == "auto" else table[name]


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in fp32 and cast back (as transformers does)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_dtype = x.dtype
        h = x.to(torch.float32)
        variance = h.pow(2).mean(-1, keepdim=True)
        h = h * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * h.to(input_dtype)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


def set_decode_attention(name: str) -> None:
    """Pick how one decode query attends over the cache: sdpa-gqa (default), grouped,
    grouped-reduce or repeat (see ``DECODE_ATTENTION``)."""
    global _DECODE_ATTENTION
    if name not in DECODE_ATTENTION:
        raise ValueError(f"unknown decode attention {name!r}; use {', '.join(DECODE_ATTENTION)}")
    _DECODE_ATTENTION = name


def rope_inv_freq(config: LlamaConfig, device: torch.device | None = None) -> torch.Tensor:
    """Rotary inverse frequencies, shape (head_dim // 2,), fp32, with ``rope_scaling`` applied.

    ``llama3`` scaling (Llama 3.1/3.2) leaves high frequencies alone, divides low ones by
    ``factor`` and interpolates smoothly between; ``linear`` divides all by ``factor``.
    """
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (
        torch.arange(0, dim, 2, dtype=torch.int64, device=device).to(torch.float32) / dim))
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    factor = float(scaling["factor"])
    if scaling["rope_type"] == "linear":
        return inv_freq / factor
    low_freq_factor = float(scaling["low_freq_factor"])
    high_freq_factor = float(scaling["high_freq_factor"])
    old_context_len = float(scaling["original_max_position_embeddings"])
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, inv_freq_llama)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q (B, nh, T, hd) and k (B, nkv, T, hd) by cos/sin (B, 1, T, hd)."""
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, nkv, S, hd) -> (B, nkv * n_rep, S, hd), each kv head repeated for its query group."""
    if n_rep == 1:
        return x
    b, nkv, s, hd = x.shape
    return x[:, :, None, :, :].expand(b, nkv, n_rep, s, hd).reshape(b, nkv * n_rep, s, hd)


def grouped_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                             scale: float, reduce: bool = False) -> torch.Tensor:
    """Attention of one query per row over a cache, query groups against their shared KV head.

    q (B, nh, 1, hd); k, v (B, nkv, S, hd); mask (B, 1, 1, S) boolean, True = may attend.
    Returns (B, nh, 1, hd). Same math as SDPA's reference path (softmax in fp32), without the
    ``repeat_kv`` copies of the whole cache that a grouped-query model otherwise needs per step.
    ``reduce`` writes both products as multiply-and-sum, the form Inductor fuses into reductions.
    """
    b, nh, _, hd = q.shape
    nkv = k.shape[1]
    qg = q.reshape(b, nkv, nh // nkv, hd)  # (B, nkv, rep, hd): query heads of one group together
    if reduce:
        scores = (qg[:, :, :, None, :] * k[:, :, None]).float().sum(-1) * scale  # (B, nkv, rep, S)
    else:
        scores = torch.matmul(qg, k.transpose(-1, -2)).float() * scale  # (B, nkv, rep, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1).to(v.dtype)
    if reduce:
        out = (probs[..., None] * v[:, :, None]).float().sum(-2).to(v.dtype)  # (B, nkv, rep, hd)
    else:
        out = torch.matmul(probs, v)
    return out.reshape(b, nh, 1, hd)


def _fuse_linears(*linears: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate the weights (and biases) of linears that read the same input into one matrix,
    and make each linear's parameters views of it: same Parameter objects, values and names, no
    second copy in memory."""
    weight = torch.cat([m.weight for m in linears])
    bias = torch.cat([m.bias for m in linears]) if linears[0].bias is not None else None
    row = 0
    for m in linears:
        n = m.out_features
        m.weight.data = weight[row:row + n]
        if bias is not None:
            m.bias.data = bias[row:row + n]
        row += n
    return weight, bias


def _is_fused(fused: tuple[torch.Tensor, torch.Tensor | None] | None, *linears: nn.Linear) -> bool:
    """Whether ``fused`` still backs these linears (moving the model gives them new storage)."""
    if fused is None:
        return False
    weight = fused[0]
    row = 0
    for m in linears:
        w = m.weight
        if (w.device != weight.device or w.dtype != weight.dtype
                or w.data_ptr() != weight.data_ptr() + row * weight.stride(0) * weight.element_size()):
            return False
        row += m.out_features
    return True


def _plain(*modules: nn.Module) -> bool:
    # LoRA and other wrappers replace nn.Linear; their extra paths cannot be folded into one matmul.
    return all(type(m) is nn.Linear for m in modules)


def _fused(current: tuple[torch.Tensor, torch.Tensor | None] | None, *linears: nn.Linear
           ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The fused (weight, bias) backing ``linears``: ``current`` while it still does, a new fusion
    when it does not, None when they are not plain linears."""
    if not _plain(*linears):
        return None
    return current if _is_fused(current, *linears) else _fuse_linears(*linears)


class Attention(nn.Module):
    """Grouped-query self-attention through ``scaled_dot_product_attention``."""

    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.n_rep = config.n_rep
        self.scaling = self.head_dim ** -0.5
        d, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(d, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, d, bias=bias)
        # (weight, bias) of q, k and v concatenated, which their parameters are views of; set by
        # Llama.fuse_projections for inference, ignored in training mode.
        self._qkv: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def fuse_projections(self) -> bool:
        """Back q/k/v by one matrix (idempotent; not when they are not plain linears); returns
        whether the fused matrix changed."""
        old, self._qkv = self._qkv, _fused(self._qkv, self.q_proj, self.k_proj, self.v_proj)
        return self._qkv is not old

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                cache_position: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        hd, nq, nkv = self.head_dim, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        if self._qkv is not None and not self.training:
            q, k, v = F.linear(x, *self._qkv).split((nq, nkv, nkv), dim=-1)  # one matmul for three
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(b, t, self.num_heads, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(b, t, self.num_kv_heads, hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(b, t, self.num_kv_heads, hd).transpose(1, 2)  # (B, nkv, T, hd)
        q, k = apply_rope(q, k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v, cache_position)  # (B, nkv, S_max, hd)
        if kv_cache is not None and t == 1 and self.n_rep > 1 and _DECODE_ATTENTION != "repeat":
            # one decode query per row: attend to the shared K/V heads without copying the cache
            if _DECODE_ATTENTION == "sdpa-gqa":
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scaling,
                                                     enable_gqa=True)
            else:
                out = grouped_decode_attention(q, k, v, attn_mask, self.scaling,
                                               reduce=_DECODE_ATTENTION == "grouped-reduce")
        else:
            k, v = repeat_kv(k, self.n_rep), repeat_kv(v, self.n_rep)
            if _SDPA_BACKENDS is None:
                out = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None and t > 1, scale=self.scaling)
            else:
                from torch.nn.attention import sdpa_kernel

                with sdpa_kernel(_SDPA_BACKENDS):
                    out = F.scaled_dot_product_attention(
                        q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None and t > 1, scale=self.scaling)
        out = out.transpose(1, 2).reshape(b, t, nq)  # (B, T, nh * hd)
        return self.o_proj(out)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        d, f, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(d, f, bias=bias)
        self.up_proj = nn.Linear(d, f, bias=bias)
        self.down_proj = nn.Linear(f, d, bias=bias)
        self._gate_up: tuple[torch.Tensor, torch.Tensor | None] | None = None  # as Attention._qkv

    def fuse_projections(self) -> bool:
        """Back gate and up by one matrix, as :meth:`Attention.fuse_projections` does q/k/v."""
        old, self._gate_up = self._gate_up, _fused(self._gate_up, self.gate_proj, self.up_proj)
        return self._gate_up is not old

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._gate_up is not None and not self.training:
            gate, up = F.linear(x, *self._gate_up).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                cache_position: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, kv_cache, cache_position)
        return x + self.mlp(self.post_attention_layernorm(x))


@dataclass
class LlamaOutput:
    """What :meth:`Llama.forward` returns: ``loss`` when labels were given, ``logits`` when asked.

    Registered as a pytree node (below), so that code which walks a module's output with
    ``tree_flatten`` sees the tensors inside. FSDP2 does exactly that to hook the root module's
    backward: up to torch 2.13 it finds them only this way, and without the hook the root's
    parameters (embedding/head, final norm), freed after forward, were read in backward — a CUDA
    illegal memory access on the GPU, a segfault on the CPU (tests/test_train_fsdp.py).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


torch.utils._pytree.register_dataclass(LlamaOutput)


class Llama(nn.Module):
    """Llama decoder with an LM head.

    Construction allocates parameters but leaves their values to :meth:`init_weights`, so a
    model can be built on the ``meta`` device, sharded, then materialised and filled.

    Runtime attributes (not architecture, so not in the config):
        activation_checkpointing: ``none``, ``selective`` (every second layer) or ``full``.
        loss_chunk_size: tokens per chunk of the fused head + cross-entropy.
        compile_loss: run each chunk's softmax and gradient through ``torch.compile`` (set with
            ``model.compile``).
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)
        self.activation_checkpointing: ActivationCheckpointing = "none"
        self.loss_chunk_size = 4096
        self.compile_loss = False  # the loss's per-chunk softmax/gradient through torch.compile

    # ------------------------------------------------------------------ weights
    @classmethod
    def fresh(cls, config: LlamaConfig, *, seed: int | None = None, device: str | torch.device = "cpu") -> Llama:
        """A freshly initialised model: built on the meta device, materialised on ``device``, filled
        by :meth:`init_weights`. The same weights as ``Llama(config)`` then ``init_weights(seed)``,
        without ``nn.Linear``'s default init of every matrix first, which is thrown away (24 s of
        the 1B shape's start on one CPU thread, as each process under ``torchrun`` has)."""
        with torch.device("meta"):
            model = cls(config)
        model.to_empty(device=device)
        model.init_weights(seed=seed)
        return model

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Fill every parameter as transformers does for a fresh Llama: N(0, initializer_range)
        for linear and embedding weights, zero biases, ones for norms; recompute rotary buffers.

        Re-ties a tied head first: ``to_empty`` (meta -> real device) gives every module a fresh
        Parameter, so after it ``lm_head.weight`` is no longer the embedding.
        """
        self.tie_weights()
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.embed_tokens.weight.device).manual_seed(seed)
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                if module is self.lm_head and self.config.tie_word_embeddings:
                    continue
                module.weight.normal_(0.0, std, generator=gen)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, std, generator=gen)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, RMSNorm):
                module.reset_parameters()
        self.reset_rope()

    @torch.no_grad()
    def fuse_projections(self) -> bool:
        """For inference: back each layer's q/k/v weights by one matrix and gate/up by another, so
        one decode step runs 4 matrix-vector products per layer instead of 7 (at batch 1 each is a
        few microseconds of memory traffic, so their number, not their size, sets the step time).

        The parameters stay the same objects with the same names and values; they become views of
        the fused matrices (no extra memory). Training mode ignores the fused matrices, and layers
        wrapped by LoRA are left unfused. Idempotent: after the model was moved or cast, a call
        fuses again. Returns whether anything changed (a captured CUDA graph is then stale).
        """
        changed = [m.fuse_projections() for layer in self.layers for m in (layer.self_attn, layer.mlp)]
        return any(changed)

    def reset_rope(self) -> None:
        """Recompute the (non-persistent) rotary buffer, e.g. after ``to_empty``."""
        self.inv_freq = rope_inv_freq(self.config, device=self.embed_tokens.weight.device)

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    # ------------------------------------------------------------------ forward
    def rope(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (B, 1, T, hd) for position_ids (B, T), computed in fp32 then cast."""
        with torch.autocast(device_type=position_ids.device.type, enabled=False):
            freqs = position_ids[:, :, None].to(torch.float32) * self.inv_freq.to(torch.float32)  # (B, T, hd/2)
            emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, hd)
            cos, sin = emb.cos(), emb.sin()
        return cos.to(dtype)[:, None], sin.to(dtype)[:, None]

    def forward_hidden(self, input_ids: torch.Tensor, *, position_ids: torch.Tensor | None = None,
                       attn_mask: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                       cache_position: torch.Tensor | None = None) -> torch.Tensor:
        """Final-norm hidden states (B, T, d).

        Args:
            input_ids: (B, T) token ids.
            position_ids: (B, T) rotary positions; default ``cache_position`` or ``arange(T)``.
            attn_mask: boolean (B, 1, T, S) with True where a query may attend; default causal
                (over the cache slots up to ``cache_position`` when a ``kv_cache`` is given).
            kv_cache: a :class:`KVCache`; new keys/values are written at ``cache_position``.
            cache_position: (T,) slots of the cache these tokens occupy.
        """
        b, t = input_ids.shape
        if kv_cache is not None and cache_position is None:
            raise ValueError("cache_position is required with a kv_cache")
        if kv_cache is not None and attn_mask is None:
            # SDPA's is_causal aligns the top-left corner and a single query sees every slot,
            # unwritten ones included: with a cache, plain causal must be spelled out.
            attn_mask = cache_attention_mask(cache_position, kv_cache.max_len)
        if position_ids is None:
            base = cache_position if cache_position is not None else torch.arange(t, device=input_ids.device)
            position_ids = base[None, :].expand(b, t)
        x = self.embed_tokens(input_ids)  # (B, T, d)
        cos, sin = self.rope(position_ids, x.dtype)
        ckpt = self.activation_checkpointing
        for i, layer in enumerate(self.layers):
            if self.training and (ckpt == "full" or (ckpt == "selective" and i % 2 == 0)):
                x = checkpoint(layer, x, cos, sin, attn_mask, kv_cache, cache_position, use_reentrant=False)
            else:
                x = layer(x, cos, sin, attn_mask, kv_cache, cache_position)
        return self.norm(x)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, *,
                position_ids: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, cache_position: torch.Tensor | None = None,
                sequence_id: torch.Tensor | None = None, return_logits: bool | None = None,
                logits_to_keep: int = 0) -> LlamaOutput:
        """Run the model.

        Args:
            labels: (B, T) targets aligned with ``input_ids`` (shifted inside, as transformers
                does); ``-100`` is ignored. When given, the loss is the mean next-token
                cross-entropy, computed by the fused chunked head without materialising logits.
            return_logits: return (B, T, V) logits; default: only when no labels are given.
            sequence_id: (B, T) ids of the documents packed into each row; attention then stays
                inside each document (block-diagonal causal mask), so packed examples never see
                each other. Rotary attention depends only on relative positions, so positions
                need no reset.
            logits_to_keep: with logits, keep only the last N positions (0 = all).
        """
        if sequence_id is not None and attn_mask is None:
            t = input_ids.shape[1]
            causal = torch.ones(t, t, dtype=torch.bool, device=input_ids.device).tril()  # (T, T)
            same = sequence_id[:, :, None] == sequence_id[:, None, :]  # (B, T, T)
            attn_mask = (same & causal)[:, None]  # (B, 1, T, T)
        hidden = self.forward_hidden(input_ids, position_ids=position_ids, attn_mask=attn_mask,
                                     kv_cache=kv_cache, cache_position=cache_position)
        out = LlamaOutput()
        if labels is not None:
            targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]  # (B, T): token t predicts t+1
            out.loss = fused_linear_cross_entropy(
                hidden.reshape(-1, hidden.shape[-1]), self.lm_head.weight, targets.reshape(-1),
                chunk_size=self.loss_chunk_size, compiled=self.compile_loss)
        if return_logits or (return_logits is None and labels is None):
            h = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
            out.logits = self.lm_head(h)
        return out
