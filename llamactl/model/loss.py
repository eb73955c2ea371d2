"""Fused LM head + cross-entropy that never holds (tokens, vocab) logits for the whole batch.

A Llama-3 vocabulary has 128,256 entries: full fp32 logits for one 8×2048 micro-batch are 8.4 GB,
more than the 1B model's weights, gradients and optimizer state together. Here the head matmul,
log-sum-exp and the gradient of both are done chunk by chunk in the forward pass (the approach of
Liger's fused linear cross-entropy); backward only rescales the gradients already computed. The
value equals ``F.cross_entropy(hidden @ weight.T, targets, ignore_index=-100)`` (mean over the
targets that are not ignored).
"""

from __future__ import annotations

import functools

import torch

IGNORE_INDEX = -100


def _lse_and_loss(x: torch.Tensor, safe: torch.Tensor, ok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row log-sum-exp (C,) of fp32 chunk logits x (C, V) and the chunk's summed cross-entropy."""
    lse = torch.logsumexp(x, dim=-1)  # (C,)
    picked = x.gather(1, safe[:, None]).squeeze(1)  # (C,)
    return lse, ((lse - picked) * ok).sum()


def _chunk_loss(logits: torch.Tensor, safe: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of one chunk: logits (C, V) in the compute dtype, targets (C,)."""
    return _lse_and_loss(logits.float(), safe, ok)[1]


def _chunk_loss_and_grad(logits: torch.Tensor, safe: torch.Tensor, ok: torch.Tensor, inv_count: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk's summed loss and d(mean loss)/d(logits) = (softmax - onehot(target)) * ok / count,
    in the logits' dtype. Written as elementwise work plus two row reductions so that Inductor makes
    it two kernels that read the (C, V) logits twice, instead of the ~8 full passes over an fp32
    copy that the eager form below makes (~10 % of a 1B training step on an H200)."""
    x = logits.float()
    lse, loss = _lse_and_loss(x, safe, ok)
    onehot = torch.arange(x.shape[1], device=x.device)[None, :] == safe[:, None]  # (C, V), never stored
    grad = ((x - lse[:, None]).exp() - onehot.float()) * (ok.float() * inv_count)[:, None]
    return loss, grad.to(logits.dtype)


@functools.cache
def _compiled(fn):
    """``fn`` compiled once per process (fixed shapes; the last, shorter chunk is a second
    specialisation)."""
    return torch.compile(fn, fullgraph=True, dynamic=False)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    device_type = t.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return t.dtype


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,  # type: ignore[override]
                chunk_size: int, grad_enabled: bool, compiled: bool) -> torch.Tensor:
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
                g = None
                if compiled:
                    logits = h @ w.t()  # (C, V), compute dtype
                    if need_h or need_w:
                        loss, g = _compiled(_chunk_loss_and_grad)(logits, safe, ok, 1.0 / count)
                    else:
                        loss = _compiled(_chunk_loss)(logits, safe, ok)
                    del logits
                else:
                    logits = (h @ w.t()).float()  # (C, V)
                    lse, loss = _lse_and_loss(logits, safe, ok)
                    if need_h or need_w:
                        # In place: the softmax overwrites the logits, so a chunk holds one (C, V)
                        # fp32 buffer instead of three (peak 3x -> 2x chunk_size * V * 4 bytes).
                        g = logits.sub_(lse[:, None]).exp_()  # softmax, (C, V)
                        g.scatter_add_(1, safe[:, None], torch.full_like(lse[:, None], -1.0))
                        g = g.mul_(ok[:, None] / count).to(dtype)
                    del logits
                total = total + loss
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
        return gh, gw, None, None, None, None


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               chunk_size: int = 4096, compiled: bool = False) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets``, chunked over tokens.

    Args:
        hidden: (N, d) final hidden states.
        weight: (V, d) LM head weight.
        targets: (N,) token ids; ``-100`` is ignored.
        chunk_size: tokens per chunk; peak extra memory is about ``chunk_size * V * 8`` bytes
            (the fp32 chunk logits and logsumexp's temporary; half that compiled, with bf16
            logits and gradient), plus a (V, d) fp32 weight gradient.
        compiled: compute each chunk's softmax and gradient with a ``torch.compile``-d function
            (two fused kernels over compute-dtype logits, no fp32 copy of them); what
            ``model.compile`` turns on.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    return _FusedLinearCrossEntropy.apply(hidden, weight, targets, chunk_size, torch.is_grad_enabled(), compiled)
