"""The fused chunked LM-head loss equals cross-entropy over full logits: value and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from llamactl.model.loss import IGNORE_INDEX, fused_linear_cross_entropy

N, D, V = 61, 24, 97  # N prime, so no chunk size below divides it


def problem(seed: int = 0, ignored_every: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, D, generator=gen).requires_grad_()
    weight = (0.3 * torch.randn(V, D, generator=gen)).requires_grad_()
    targets = torch.randint(0, V, (N,), generator=gen)
    targets[::ignored_every] = IGNORE_INDEX
    targets[-3:] = IGNORE_INDEX  # as the shifted last position of every row is
    return hidden, weight, targets


def reference(hidden, weight, targets):
    loss = F.cross_entropy(hidden @ weight.t(), targets, ignore_index=IGNORE_INDEX)
    return (loss, *torch.autograd.grad(loss, (hidden, weight)))


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 60, 61, 4096])
def test_value_and_gradients_equal_full_logits(chunk_size: int) -> None:
    hidden, weight, targets = problem()
    loss = fused_linear_cross_entropy(hidden, weight, targets, chunk_size=chunk_size)
    gh, gw = torch.autograd.grad(loss, (hidden, weight))
    ref, rh, rw = reference(hidden, weight, targets)
    assert abs(loss.item() - ref.item()) <= 1e-6 * max(1.0, abs(ref.item()))  # ~2 ulp of the loss
    assert (gh - rh).abs().max().item() <= 1e-6
    assert (gw - rw).abs().max().item() <= 1e-6


def test_upstream_gradient_is_applied() -> None:
    """Backward scales the precomputed gradients by the incoming one (loss * 2.5, loss / accum)."""
    hidden, weight, targets = problem(seed=1)
    loss = fused_linear_cross_entropy(hidden, weight, targets, chunk_size=9)
    gh, gw = torch.autograd.grad(2.5 * loss, (hidden, weight))
    ref, rh, rw = reference(hidden, weight, targets)
    assert torch.allclose(gh, 2.5 * rh, atol=1e-6) and torch.allclose(gw, 2.5 * rw, atol=1e-6)


def test_one_input_without_grad() -> None:
    hidden, weight, targets = problem(seed=2)
    frozen = weight.detach()  # e.g. a frozen head under LoRA
    loss = fused_linear_cross_entropy(hidden, frozen, targets, chunk_size=8)
    (gh,) = torch.autograd.grad(loss, (hidden,))
    _, rh, _ = reference(hidden, weight, targets)
    assert (gh - rh).abs().max().item() <= 1e-6


def test_all_targets_ignored_gives_zero_not_nan() -> None:
    """A micro-batch that is all padding contributes nothing instead of poisoning the step with NaN."""
    hidden, weight, _ = problem()
    targets = torch.full((N,), IGNORE_INDEX)
    loss = fused_linear_cross_entropy(hidden, weight, targets, chunk_size=8)
    assert loss.item() == 0.0
    gh, gw = torch.autograd.grad(loss, (hidden, weight))
    assert not gh.any() and not gw.any()


class _CountMatmuls(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default):
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_no_grad_does_no_backward_work() -> None:
    """Under no_grad (evaluation) only the forward matmul of each chunk runs."""
    hidden, weight, targets = problem()
    with torch.no_grad(), _CountMatmuls() as counter:
        loss = fused_linear_cross_entropy(hidden, weight, targets, chunk_size=16)
    assert counter.count == 4  # ceil(61 / 16) chunks, one head matmul each
    assert abs(loss.item() - reference(hidden, weight, targets)[0].item()) <= 1e-6
    with _CountMatmuls() as counter:
        fused_linear_cross_entropy(hidden, weight, targets, chunk_size=16)
    assert counter.count == 12  # with grad: + dL/dh and dL/dW per chunk


def test_bad_chunk_size() -> None:
    hidden, weight, targets = problem()
    with pytest.raises(ValueError, match="chunk_size"):
        fused_linear_cross_entropy(hidden, weight, targets, chunk_size=0)


@pytest.mark.slow
def test_compiled_chunks_equal_the_eager_loss_and_gradients() -> None:
    hidden, weight, targets = problem(3)
    want = reference(hidden, weight, targets)
    for chunk_size in (16, 4096):  # several chunks with a shorter last one; one chunk
        loss = fused_linear_cross_entropy(hidden, weight, targets, chunk_size=chunk_size, compiled=True)
        got = (loss, *torch.autograd.grad(loss, (hidden, weight)))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # the loss-only path of evaluation
        torch.testing.assert_close(fused_linear_cross_entropy(hidden, weight, targets, compiled=True), want[0])
