"""``llamactl train --dry-run``: size a run before launching it.

Arithmetic only (no weights are built): parameter counts, a per-GPU memory estimate, and the
expected tokens/s and wall time from MFU values measured by ``benchmarks/train_throughput.py``
(docs/performance.md). The estimates are calibrated on the Llama-3.2-1B shape at sequence 2048 on
an H200 and say so; treat them as a guide to within ~15 %, not a promise.
"""

from __future__ import annotations

from dataclasses import dataclass

from llamactl.config.schema import TrainConfig
from llamactl.errors import ConfigError
from llamactl.model.config import LlamaConfig

GIB = 1024**3

# MFU measured through the real train path (H200, 1B shape, seq 2048; docs/performance.md), per
# micro-batch: (impl, compiled) -> {micro-batch: MFU}. Larger micro-batches keep the GPU busier.
MEASURED_MFU = {
    ("custom", True): {4: 0.484, 8: 0.524},   # compiled layers + loss, cuDNN, fused AdamW (2026-11-28)
    ("custom", False): {4: 0.309, 8: 0.347},  # eager (2026-11-27)
    ("hf", False): {4: 0.318},
    ("hf", True): {4: 0.40},
}
# FSDP2 (the default fsdp_config) on N GPUs: tokens/s per GPU over one GPU without FSDP, per
# micro-batch (2xH200 over NVLink, compiled options, 2026-11-30). The sharding costs a time per step
# (parameter casts and copies, DTensor optimizer and clipping, traffic beside the matmuls), so larger
# micro-batches scale better. FSDP1 with the eager options measured at or above linear: 1.0.
FSDP2_SCALING = {4: 0.83, 8: 0.915}
# Saved activations relative to the plain per-token formula below (fit to the same measurements:
# eager 40.8 GiB at micro-batch 4; compiled layers + loss 30.9 / 41.6 GiB at micro-batch 4 / 8).
ACT_FACTOR = {False: 1.2, True: 0.6}


def expected_mfu(impl: str, compiled: bool, micro_batch: int) -> float:
    """MFU for a micro-batch from the measured points: the nearest one outside their range,
    linear between two."""
    return _interpolate(MEASURED_MFU.get((impl, compiled), {4: 0.3}), micro_batch)


def fsdp_scaling(cfg: TrainConfig, gpus: int) -> float:
    """Tokens/s per GPU of ``cfg`` on ``gpus`` GPUs relative to one GPU (see ``FSDP2_SCALING``)."""
    from llamactl.training.trainer import fsdp_version

    if gpus <= 1 or not cfg.fsdp_config or fsdp_version(cfg.fsdp_config) == 1:
        return 1.0
    return _interpolate(FSDP2_SCALING, cfg.device_train_microbatch_size)


def _interpolate(measured: dict[int, float], micro_batch: int) -> float:
    points = sorted(measured.items())
    if micro_batch <= points[0][0]:
        return points[0][1]
    for (m0, v0), (m1, v1) in zip(points, points[1:]):
        if micro_batch <= m1:
            return v0 + (v1 - v0) * (micro_batch - m0) / (m1 - m0)
    return points[-1][1]


@dataclass
class RunPlan:
    """What ``--dry-run`` reports."""

    params_total: int
    params_trainable: int
    gpus: int
    tokens_per_step: int
    steps: int | None
    memory_gib: dict[str, float]
    flops_per_token: float
    expected_mfu: float | None
    expected_tokens_per_s: float | None
    expected_wall_s: float | None
    device: str
    notes: list[str]


def model_config(cfg: TrainConfig) -> LlamaConfig:
    """The architecture the config would train, without loading any weights."""
    from llamactl.model.presets import preset

    m = cfg.model
    if m.pretrained_model_name_or_path:
        from llamactl.interop.sources import model_config as source_config

        return source_config(m.pretrained_model_name_or_path)
    if not m.preset:
        raise ConfigError("set model.preset or model.pretrained_model_name_or_path")
    try:
        return preset(m.preset, **m.config_overrides)
    except KeyError as e:
        raise ConfigError(str(e.args[0])) from e


def _lora_params(c: LlamaConfig, lora: dict) -> int:
    r = int(lora.get("r", 8))
    targets = lora.get("target_modules") or []
    if targets == "all-linear":
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    d, hd, f = c.hidden_size, c.head_dim, c.intermediate_size
    shapes = {"q_proj": (d, c.num_attention_heads * hd), "k_proj": (d, c.num_key_value_heads * hd),
              "v_proj": (d, c.num_key_value_heads * hd), "o_proj": (c.num_attention_heads * hd, d),
              "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}
    return c.num_hidden_layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets if t in shapes)


def plan_run(cfg: TrainConfig, *, gpus: int = 1, device_name: str | None = None) -> RunPlan:
    """Estimate memory per GPU, tokens/s and wall time for ``cfg`` on ``gpus`` GPUs."""
    from llamactl.training.callbacks import peak_flops

    c = model_config(cfg)
    seq = cfg.train_loader.dataset.max_seq_len or cfg.max_seq_len
    total = c.num_params()
    lora = cfg.lora
    trainable = _lora_params(c, lora) if lora else total
    shard = gpus if cfg.fsdp_config else 1
    amp = cfg.precision.startswith("amp_")
    # fp32 master weights; grads and two Adam moments (fp32) for the trainable ones.
    weights = total * 4 / shard
    grads = trainable * 4 / shard
    optim = trainable * (8 if cfg.optimizer.name in ("adamw", "decoupled_adamw") else 4) / shard
    d, f, kv = c.hidden_size, c.intermediate_size, c.num_key_value_heads * c.head_dim
    act_bytes = 2 if amp else 4
    per_token_layer = act_bytes * (6 * d + 2 * kv + 4 * f) + 4 * 3 * d  # residual stream stays fp32
    compiled = cfg.model.compile not in (False, None)
    if cfg.model.activation_checkpointing == "full":
        per_token_layer = 4 * d
    elif cfg.model.activation_checkpointing == "selective":
        per_token_layer = per_token_layer / 2 + 2 * d
    mb_tokens = cfg.device_train_microbatch_size * seq
    acts = mb_tokens * c.num_hidden_layers * per_token_layer * ACT_FACTOR[compiled]
    chunk = min(cfg.model.loss_chunk_size, mb_tokens)
    # chunk logits + softmax: two fp32 (C, V) buffers eagerly; compiled, bf16 logits and gradient
    per_logit = 4 if compiled and cfg.model.compile_loss and amp else 8
    loss = chunk * c.vocab_size * per_logit + c.vocab_size * d * 4  # + the fp32 head gradient
    memory = {"weights": weights / GIB, "gradients": grads / GIB, "optimizer": optim / GIB,
              "activations": acts / GIB, "loss": loss / GIB}
    memory["total"] = sum(memory.values()) * 1.05  # allocator slack
    flops_tok = c.flops_per_token(seq)
    if lora:
        flops_tok -= 2.0 * (c.num_params(include_embedding=False) + (c.vocab_size * d if c.tie_word_embeddings else 0))
    steps = int(float(cfg.max_duration[:-2])) if cfg.max_duration.endswith("ba") else None
    notes = []
    peak = peak_flops(device_name)
    mfu = tps = wall = None
    if peak:
        scaling = fsdp_scaling(cfg, gpus)
        mfu = expected_mfu(cfg.model.impl, compiled, cfg.device_train_microbatch_size) * scaling
        tps = mfu * peak * gpus / flops_tok
        if scaling < 1.0:
            notes.append(f"FSDP2 on {gpus} GPUs: {scaling:.0%} of linear scaling at this micro-batch "
                         "(measured on 2 H200s over NVLink)")
        if steps:
            wall = steps * cfg.global_train_batch_size * seq / tps
        notes.append("tokens/s from MFU measured on an H200 (1B shape, seq 2048); other shapes and cards differ")
    else:
        notes.append("no known GPU: tokens/s and wall time are not estimated (CPU speed varies too much)")
    if cfg.fsdp_config is None and gpus > 1:
        notes.append("without fsdp_config every GPU holds a full copy of weights and optimizer state")
    return RunPlan(params_total=total, params_trainable=trainable, gpus=gpus,
                   tokens_per_step=cfg.global_train_batch_size * seq, steps=steps,
                   memory_gib={k: round(v, 2) for k, v in memory.items()}, flops_per_token=flops_tok,
                   expected_mfu=mfu, expected_tokens_per_s=round(tps, 0) if tps else None,
                   expected_wall_s=round(wall, 0) if wall else None, device=device_name or "cpu", notes=notes)
