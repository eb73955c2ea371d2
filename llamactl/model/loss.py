"""Fused LM head + cross-entropy that never holds (tokens, vocab) logits for the whole batch.

A Llama-3 vocabulary has 128,256 entries: full fp32 logits for one 8×2048 micro-batch are 8.4 GB,
more than the 1B model's weights, gradients and optimizer state together. Here the head matmul,
log-sum-exp and the gradient of both are done chunk by chunk in the forward pass (the approach of
Liger's fused linear cross-entropy); backward only rescales the gradients already computed. The
value equals ``F.cross_entropy(hidden @ weight.T, targets, ignore_index=-100)`` (mean over the
targets that are not ignored).
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    device_type = t.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return t.dtype


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,  # type: ignore[override]
                chunk_size: int, grad_enabled: bool) -> torch.Tensor:
        dtype = _compute_dtype(hidden)
        # needs_input_grad is True under no_grad too; without grad_enabled an eval step would
        # pay for two extra matmuls per chunk and a (V, d) fp32 buffer it never uses.
        need_h = grad_enabled and ctx.needs_input_grad[0]
        need_w = grad_enabled and ctx.needs_input_grad[1]
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            n = hidden.shape[0]
            valid = targets != IGNORE_INDEX  # (N,)
            count = valid.sum().clamp_min(1).to(torch.float32)
            w = weight.to(dtype)  # (V, d)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_h = torch.empty(hidden.shape, dtype=dtype, device=hidden.device) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
            for start in range(0, n, chunk_size):
                end = min(start + chunk_size, n)
                h = hidden[start:end].to(dtype)  # (C, d)
                tgt = targets[start:end]
                ok = valid[start:end]
                safe = torch.where(ok, tgt, torch.zeros_like(tgt))  # (C,)
                logits = (h @ w.t()).float()  # (C, V)
                lse = torch.logsumexp(logits, dim=-1)  # (C,)
                picked = logits.gather(1, safe[:, None]).squeeze(1)  # (C,)
                total = total + ((lse - picked) * ok).sum()
                if need_h or need_w:
                    # In place: the softmax overwrites the logits, so a chunk holds one (C, V)
                    # fp32 buffer instead of three (peak 3x -> 2x chunk_size * V * 4 bytes).
                    g = logits.sub_(lse[:, None]).exp_()  # softmax, (C, V)
                    g.scatter_add_(1, safe[:, None], torch.full_like(picked[:, None], -1.0))
                    g = g.mul_(ok[:, None] / count).to(dtype)
                    if need_h:
                        grad_h[start:end] = g @ w  # (C, d)
                    if need_w:
                        grad_w.add_((g.t() @ h).float())  # (V, d)
            ctx.save_for_backward(grad_h if need_h else None, grad_w if need_w else None)
            ctx.hidden_dtype, ctx.weight_dtype = hidden.dtype, weight.dtype
            return total / count

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        gh = (grad_h * grad_output).to(ctx.hidden_dtype) if grad_h is not None else None
        gw = (grad_w * grad_output).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               chunk_size: int = 4096) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets``, chunked over tokens.

    Args:
        hidden: (N, d) final hidden states.
        weight: (V, d) LM head weight.
        targets: (N,) token ids; ``-100`` is ignored.
        chunk_size: tokens per chunk; peak extra memory is about ``chunk_size * V * 8`` bytes
            (the fp32 chunk logits and logsumexp's temporary), plus a (V, d) fp32 weight gradient.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    return _FusedLinearCrossEntropy.apply(hidden, weight, targets, chunk_size, torch.is_grad_enabled())
