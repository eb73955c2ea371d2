"""Loaded (via PYTHONPATH) by the processes of one FSDP test run: makes FSDP2 find the tensors of a
module's output the way torch <= 2.13 does, with ``tree_flatten``, under which a dataclass that is
not a registered pytree node is an opaque leaf. The GPU image runs torch 2.11; without the
registration of ``LlamaOutput`` the root module's backward hook was never set, and backward read
parameters FSDP2 had already freed (CUDA illegal memory access; here a segfault)."""

import os

import torch
from torch.distributed.fsdp._fully_shard import _fsdp_state
from torch.utils._pytree import tree_flatten


def _register_pre_backward_hook(self, output):
    if not torch.is_grad_enabled():
        return output
    flat_outputs, _ = tree_flatten(output)
    for t in flat_outputs:
        if torch.is_tensor(t) and t.requires_grad:
            t.register_hook(self._pre_backward)
    return output


_fsdp_state.FSDPState._register_pre_backward_hook = _register_pre_backward_hook
marker = os.environ.get("LLAMACTL_FSDP_EMULATION_MARKER")
if marker:
    with open(f"{marker}.{os.getpid()}", "w") as f:
        f.write("tree_flatten hooks\n")
