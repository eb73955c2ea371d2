"""The decode loop: prefill once into a static KV cache, then one token at a time.

Batches of prompts of different lengths are left-padded to a common length ``P``; each row's
rotary positions are ``cumsum(attention_mask) - 1`` (so the first real token of every row is at
position 0, exactly as if it ran alone), and the attention mask hides the padding slots for every
later query. Generated token ``t`` goes into cache slot ``P + t`` for all rows at once.

On CUDA the per-token work is a few hundred small kernels; launched one by one from Python that
costs far more than the GPU time of a batch-1 step (transformers' ``generate`` runs at ~1 % of the
memory-bandwidth bound there). So the decode step has static shapes and static buffers, and is
either captured once into a CUDA graph and replayed (``mode="graph"``), or first compiled with
``torch.compile`` — Inductor fuses each RMSNorm, rotary embedding, SwiGLU product and residual add
into single kernels, roughly 45 kernels per layer down to 15 — and then captured the same way
(``mode="compile"``). At batch 1 every kernel is a few microseconds of memory traffic, so their
number sets the step time: the q/k/v and gate/up weights are fused into one matrix each
(:meth:`Llama.fuse_projections`), a decode query attends to its shared key/value head without
copying the cache (SDPA's ``enable_gqa``; ``llama.set_decode_attention``), and Inductor's
coordinate-descent tuning turns the batch-1 projections into reductions it fuses and tunes itself.
The capture is ours rather than ``reduce-overhead``'s CUDA-graph trees, so both modes replay one
graph per token the same way (the two styles were not compared). On the CPU the step runs eagerly
(or compiled, without a graph).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, Literal

import torch

from llamactl.errors import UserInputError
from llamactl.generation.sampling import SamplingConfig, next_tokens
from llamactl.generation.streaming import Decode, TextStream
from llamactl.model.kv_cache import KVCache, cache_attention_mask
from llamactl.model.llama import Llama

log = logging.getLogger(__name__)

DecodeMode = Literal["auto", "eager", "graph", "compile"]
FinishReason = Literal["eos", "stop", "length"]
OnText = Callable[[int, str], None]

_SLOT_BUCKET = 128  # cache lengths are rounded up to this, so graphs are reused across calls


@dataclass
class GenerationOutput:
    """What :meth:`Generator.generate` returns, one entry per prompt, in prompt order."""

    tokens: list[list[int]]  # generated ids; ends with the EOS token when one ended the row
    finish_reasons: list[FinishReason]
    prompt_tokens: list[int]
    texts: list[str] | None  # completions cut before any stop string (when a decoder was given)
    prefill_s: float
    decode_s: float
    steps: int  # decode steps run (tokens per row at most)

    @property
    def new_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)

    @property
    def tokens_per_s(self) -> float:
        total = self.prefill_s + self.decode_s
        return self.new_tokens / total if total > 0 else 0.0


class _StaticStep:
    """A decode step with static input buffers over one KV cache of shape (B, n_kv, S, hd).

    ``run`` copies the step's inputs into the buffers and returns (B, V) logits. The returned
    tensor is overwritten by the next call (it is the graph's output buffer), so use it at once.
    """

    def __init__(self, model: Llama, batch: int, slots: int, mode: Literal["eager", "graph", "compile"],
                 compile_options: dict | None = None) -> None:
        p = next(model.parameters())
        self.model, self.batch, self.slots, self.mode = model, batch, slots, mode
        self.cache = KVCache.for_config(model.config, batch, slots, dtype=p.dtype, device=p.device)
        dev = p.device
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(batch, 1, dtype=torch.long, device=dev)
        self.cache_pos = torch.zeros(1, dtype=torch.long, device=dev)
        self.key_padding = torch.ones(batch, slots, dtype=torch.bool, device=dev)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._out: torch.Tensor | None = None
        self._fn: Callable[[], torch.Tensor] = self._eager
        if mode == "compile":
            # Inductor fuses the elementwise work; the buffers are fixed, so no shape ever changes.
            self._fn = torch.compile(self._eager, options=compile_options, fullgraph=True, dynamic=False)
        if dev.type == "cuda" and mode in ("graph", "compile"):
            self._capture()

    def _eager(self) -> torch.Tensor:
        mask = cache_attention_mask(self.cache_pos, self.slots, self.key_padding)  # (B, 1, 1, S)
        out = self.model(self.ids, position_ids=self.pos, attn_mask=mask, kv_cache=self.cache,
                         cache_position=self.cache_pos, logits_to_keep=1)
        # Advance to the next slot inside the step, so the loop launches nothing for it.
        self.pos.add_(1)
        self.cache_pos.add_(1)
        return out.logits[:, -1]  # (B, V)

    def _capture(self) -> None:
        # Warm up on a side stream first: cuBLAS/cuDNN pick algorithms and allocate workspaces
        # lazily, and allocation is not allowed during capture. Warm-up writes land in slots 0-1,
        # which every prefill overwrites before they are read; ``start`` resets the positions.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # compiles first when the step is compiled
                self._fn()
        torch.cuda.current_stream().wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._out = self._fn()

    def start(self, pos: torch.Tensor, slot: int) -> None:
        """Set the first decode step's positions (B, 1) and cache slot."""
        self.pos.copy_(pos)
        self.cache_pos.fill_(slot)

    def run(self, ids: torch.Tensor) -> torch.Tensor:
        """One decode step for ids (B, 1) at the current positions, which then advance by one."""
        self.ids.copy_(ids)
        if self._graph is not None:
            self._graph.replay()
            return self._out  # type: ignore[return-value]
        return self._fn()


# Inductor settings for the compiled decode step. Coordinate-descent tuning also makes Inductor
# rewrite a matmul with one row (a batch-1 projection) as a multiply-and-sum reduction it generates
# and tunes itself, so the projections fuse with their neighbours instead of each being a cuBLAS call.
DEFAULT_COMPILE_OPTIONS: dict = {"coordinate_descent_tuning": True}


class Generator:
    """Generates from our :class:`Llama` with a static KV cache.

    Args:
        model: the inner model (any dtype/device); put in eval mode here.
        mode: ``auto`` (``graph`` on CUDA, ``eager`` elsewhere), ``eager``, ``graph`` (CUDA graph
            of the eager decode step, CUDA only) or ``compile`` (``torch.compile`` of the decode
            step, then a CUDA graph of it on CUDA).
        compile_options: Inductor options for ``compile`` (default :data:`DEFAULT_COMPILE_OPTIONS`;
            e.g. add ``max_autotune: True`` to let Inductor benchmark Triton matmul kernels too).
        fuse: back each layer's q/k/v and gate/up weights by one matrix each
            (:meth:`Llama.fuse_projections`: 4 matrix products per layer and token instead of 7,
            no extra memory). The parameters become views of the fused matrices.
    """

    def __init__(self, model: Llama, *, mode: DecodeMode = "auto", compile_options: dict | None = None,
                 fuse: bool = True) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.compile_options = DEFAULT_COMPILE_OPTIONS if compile_options is None else compile_options
        self.fuse = fuse
        if mode == "auto":
            mode = "graph" if self.device.type == "cuda" else "eager"
        if mode == "graph" and self.device.type != "cuda":
            raise UserInputError("decode mode 'graph' needs a CUDA device; use 'eager' or 'compile' on the CPU")
        self.mode: Literal["eager", "graph", "compile"] = mode  # type: ignore[assignment]
        self._step: _StaticStep | None = None

    def _static_step(self, batch: int, slots: int) -> _StaticStep:
        if self.fuse and self.model.fuse_projections():
            self._step = None  # (re)fused: a captured graph would read the old weight storage
        step = self._step
        if step is None or step.batch != batch or step.slots < slots:
            if self.mode != "eager":
                slots = -(-slots // _SLOT_BUCKET) * _SLOT_BUCKET
            self._step = None  # free the old cache and graph before allocating the new ones
            step = self._step = _StaticStep(self.model, batch, slots, self.mode, self.compile_options)
        return step

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], config: SamplingConfig, *,
                 eos_token_ids: list[int] | tuple[int, ...] = (), pad_token_id: int = 0,
                 decode: Decode | None = None, on_text: OnText | None = None) -> GenerationOutput:
        """Generate a completion for each prompt (token ids), as one left-padded batch.

        Args:
            prompts: token ids per prompt (each non-empty).
            config: sampling and stopping settings.
            eos_token_ids: ids that end a row (ignored with ``config.ignore_eos``).
            pad_token_id: id fed to finished rows and used as left padding (never attended).
            decode: ids -> text; needed for stop strings, streaming and ``texts``.
            on_text: called as ``on_text(row, piece)`` with each piece of final text as it appears.
        """
        if not prompts or any(len(p) == 0 for p in prompts):
            raise UserInputError("every prompt must have at least one token")
        if (config.stop or on_text is not None) and decode is None:
            raise ValueError("stop strings and streaming need a decode function")
        cfg = self.model.config
        b = len(prompts)
        p_len = max(len(p) for p in prompts)
        ctx = cfg.max_position_embeddings
        if p_len >= ctx:
            raise UserInputError(f"the prompt has {p_len} tokens but the model's context is {ctx} tokens; "
                                 f"shorten the prompt")
        max_new = min(config.max_new_tokens, ctx - p_len)
        if max_new < config.max_new_tokens:
            log.warning("max_new_tokens lowered from %d to %d to fit the %d-token context",
                        config.max_new_tokens, max_new, ctx)
        dev = self.device
        sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)

        # Left-pad: (B, P) ids and mask; positions count real tokens only.
        ids = torch.full((b, p_len), pad_token_id, dtype=torch.long)
        mask = torch.zeros((b, p_len), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, p_len - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, p_len - len(p):] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)  # (B, P)

        t0 = time.perf_counter()
        step = self._static_step(b, p_len + max_new)
        step.key_padding.fill_(True)
        step.key_padding[:, :p_len].copy_(mask.bool())
        cache_position = torch.arange(p_len, device=dev)
        attn = cache_attention_mask(cache_position, step.slots, step.key_padding)  # (B, 1, P, S)
        logits = self.model(ids, position_ids=pos, attn_mask=attn, kv_cache=step.cache,
                            cache_position=cache_position, logits_to_keep=1).logits[:, -1]  # (B, V)
        step.start(pos[:, -1:] + 1, p_len)

        seen = None
        if config.repetition_penalty != 1.0:
            counts = torch.zeros((b, cfg.vocab_size), dtype=torch.int32, device=dev)
            seen = counts.scatter_add_(1, ids, mask.to(torch.int32)) > 0  # (B, V)
        gen = None
        if not config.greedy:
            gen = torch.Generator(device=dev)
            gen.manual_seed(config.seed if config.seed is not None else random.SystemRandom().randrange(2**63))
        eos = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long, device=dev)
        use_eos = not config.ignore_eos and eos.numel() > 0
        finished = torch.zeros(b, dtype=torch.bool, device=dev)
        out = torch.full((b, max_new), pad_token_id, dtype=torch.long, device=dev)
        streams = [TextStream(decode, config.stop) for _ in range(b)] if decode is not None else None
        host_each_step = streams is not None and (on_text is not None or bool(config.stop))
        stopped_by_string = [False] * b
        lengths = [max_new] * b  # tokens kept per row
        sync()
        t1 = time.perf_counter()

        can_finish = use_eos or host_each_step  # else no row ends early: skip the bookkeeping kernels
        steps = 0
        for t in range(max_new):
            tok = next_tokens(logits, config, seen=seen, generator=gen)  # (B,)
            if can_finish:
                tok = torch.where(finished, pad_token_id, tok)
            out[:, t] = tok
            steps = t + 1
            if use_eos:
                newly = torch.isin(tok, eos) & ~finished
                finished |= newly
            if seen is not None:
                seen.scatter_(1, tok[:, None], True)
            if host_each_step:
                toks, done = tok.tolist(), finished.tolist()
                new_done = newly.tolist() if use_eos else [False] * b
                for i in range(b):
                    if stopped_by_string[i] or (done[i] and not new_done[i]):
                        continue
                    if new_done[i]:
                        continue  # the EOS token itself is not text
                    piece = streams[i].push(toks[i])  # type: ignore[index]
                    if piece and on_text is not None:
                        on_text(i, piece)
                    if streams[i].stopped:  # type: ignore[index]
                        stopped_by_string[i] = True
                        lengths[i] = t + 1
                        finished[i] = True
                if all(stopped_by_string[i] or done[i] for i in range(b)):
                    break
            elif use_eos and (t % 16 == 15) and bool(finished.all()):
                break
            if t == max_new - 1:
                break
            logits = step.run(tok[:, None])
        sync()
        t2 = time.perf_counter()

        rows = out[:, :steps].tolist()
        tokens: list[list[int]] = []
        reasons: list[FinishReason] = []
        eos_set = set(eos_token_ids) if use_eos else set()
        for i, row in enumerate(rows):
            if stopped_by_string[i]:
                tokens.append(row[:lengths[i]])
                reasons.append("stop")
                continue
            end = next((j for j, x in enumerate(row) if x in eos_set), None)
            if end is not None:
                tokens.append(row[:end + 1])
                reasons.append("eos")
            else:
                tokens.append(row)
                reasons.append("length")
        texts = None
        if streams is not None:
            texts = []
            for i, s in enumerate(streams):
                if not host_each_step:  # nothing was pushed yet: decode now
                    for x in tokens[i][:-1] if reasons[i] == "eos" else tokens[i]:
                        s.push(x)
                rest = s.finish()
                if rest and on_text is not None:
                    on_text(i, rest)
                texts.append(s.final_text)
        return GenerationOutput(tokens=tokens, finish_reasons=reasons, prompt_tokens=[len(p) for p in prompts],
                                texts=texts, prefill_s=t1 - t0, decode_s=t2 - t1, steps=steps)
