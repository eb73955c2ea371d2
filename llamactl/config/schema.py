"""Typed train config, in the shape of LLM Foundry train YAMLs.

One flat dataclass per concern. Every field a YAML may set is declared here: an unknown key is an
error naming the closest valid key (see :mod:`llamactl.config.load`), a wrong type is an error
naming its path. Keys LLM Foundry YAMLs carry that llamactl accepts for compatibility but does not
act on are listed in ``FOUNDRY_IGNORED`` and documented in docs/configuration.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

Duration = str  # Composer time string: "100ba", "2ep", "1000000tok", or "0.5dur" for intervals

_DURATION = re.compile(r"^\d+(\.\d+)?(ba|ep|tok|sp|dur)$")


def check_duration(value: Any, path: str, *, allow_dur: bool = False) -> str:
    """Normalise an int (batches) or a Composer time string; raise ValueError naming ``path``."""
    if isinstance(value, bool):
        raise ValueError(f"{path}: expected a duration like '100ba' or '1ep', got {value!r}")
    if isinstance(value, int):
        return f"{value}ba"
    text = str(value).strip()
    m = _DURATION.match(text)
    if not m or (m.group(2) == "dur" and not allow_dur):
        raise ValueError(f"{path}: expected a duration like '100ba', '2ep' or '1000000tok', got {value!r}")
    return text


@dataclass
class ModelSection:
    """``model:`` — which Llama, from where, and how it runs."""

    name: Literal["llamactl", "hf_causal_lm"] = "llamactl"  # Foundry's hf_causal_lm is a synonym
    impl: Literal["custom", "hf"] = "custom"  # custom = our Llama; hf = stock transformers (A/B baseline)
    preset: str | None = None  # tiny, smollm2-135m, llama-3.2-1b, llama-3.2-3b, llama-3.1-8b
    pretrained_model_name_or_path: str | None = None  # HF folder, hub id, .gguf file
    pretrained: bool = True  # with a source: load its weights (False = its architecture, fresh init)
    config_overrides: dict[str, Any] = field(default_factory=dict)
    init_seed: int | None = None  # default: the run's seed
    use_auth_token: bool | None = None  # Foundry key; the token itself always comes from the environment
    # runtime / speed options
    activation_checkpointing: Literal["none", "selective", "full"] = "none"
    # torch.compile: true / "layers" = each decoder layer (fastest measured); "model" = the whole
    # inner model, fused loss included (no graph breaks, but slower on GPU); false = eager.
    compile: bool | Literal["layers", "model"] = False
    attn_backend: Literal["auto", "cudnn", "flash", "efficient", "math"] = "auto"
    loss_chunk_size: int = 4096
    # with compile: also compile the fused loss's per-chunk softmax and gradient (our Llama only)
    compile_loss: bool = True
    peft_config: dict[str, Any] | None = None  # LLM Foundry puts it here; top-level is accepted too


@dataclass
class TokenizerSection:
    """``tokenizer:`` — a local folder, a hub id, or ``embedded`` (the bundled tokenizer)."""

    name: str | None = None  # default: the model folder's tokenizer
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DatasetSection:
    """``train_loader.dataset`` / ``eval_loader.dataset`` (LLM Foundry ``text`` loader keys)."""

    local: str | None = None  # MDS folder; relative paths resolve under --data-root
    remote: str | None = None
    split: str = "train"
    shuffle: bool = True
    shuffle_seed: int | None = None
    max_seq_len: int | None = None
    eos_token_id: int | None = None  # Foundry key; packing already placed separators
    decoder_only_format: bool | None = None  # Foundry finetuning key


@dataclass
class LoaderSection:
    """``train_loader:`` / ``eval_loader:``."""

    name: Literal["text", "embedded", "finetuning"] = "text"
    dataset: DatasetSection = field(default_factory=DatasetSection)
    drop_last: bool = True
    num_workers: int = 0
    pin_memory: bool | None = None
    prefetch_factor: int | None = None
    persistent_workers: bool | None = None
    timeout: int | None = None


@dataclass
class OptimizerSection:
    name: Literal["decoupled_adamw", "adamw", "lion", "decoupled_lionw"] = "decoupled_adamw"
    lr: float = 6.0e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1.0e-8
    weight_decay: float = 0.0
    fused: bool | None = None  # default: fused AdamW on CUDA


@dataclass
class SchedulerSection:
    name: Literal["cosine_with_warmup", "linear", "linear_decay_with_warmup", "constant_with_warmup"] = \
        "cosine_with_warmup"
    t_warmup: str = "0ba"
    alpha_f: float = 0.0
    t_max: str = "1dur"


@dataclass
class GradientClipping:
    clipping_type: Literal["norm", "value", "adaptive"] = "norm"
    clipping_threshold: float = 1.0


@dataclass
class AlgorithmsSection:
    gradient_clipping: GradientClipping | None = None


@dataclass
class TrainConfig:
    """The whole train YAML after interpolation and overrides."""

    model: ModelSection = field(default_factory=ModelSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    train_loader: LoaderSection = field(default_factory=LoaderSection)
    eval_loader: LoaderSection | None = None
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    algorithms: AlgorithmsSection = field(default_factory=AlgorithmsSection)
    variables: dict[str, Any] = field(default_factory=dict)
    run_name: str | None = None
    max_seq_len: int = 2048
    max_duration: str = "10ba"
    eval_interval: str = "1000ba"
    eval_first: bool = False
    eval_subset_num_batches: int = -1
    global_train_batch_size: int = 8
    device_train_microbatch_size: int = 8
    device_eval_batch_size: int | None = None
    precision: Literal["fp32", "amp_bf16", "amp_fp16", "bf16"] = "amp_bf16"
    seed: int = 17
    save_interval: str = "1000ba"
    save_num_checkpoints_to_keep: int = 1
    save_folder: str | None = None  # default: <run dir>/checkpoints
    save_overwrite: bool = False
    save_weights_only: bool = False
    load_path: str | None = None
    load_weights_only: bool = False
    autoresume: bool = False
    fsdp_config: dict[str, Any] | None = None
    callbacks: dict[str, Any] = field(default_factory=dict)
    loggers: dict[str, Any] = field(default_factory=dict)
    peft_config: dict[str, Any] | None = None
    log_interval: str = "1ba"  # how often metrics.jsonl and the progress line are written
    sample_prompt: str | None = None  # prompt for the generated line at the end of training
    sample_max_new_tokens: int = 32
    runs_dir: str = "runs"
    data_root: str = "datasets"
    # LLM Foundry keys accepted for compatibility (see FOUNDRY_IGNORED)
    dist_timeout: float = 600.0
    python_log_level: str | None = None
    console_log_interval: str | None = None
    progress_bar: bool | None = None
    log_to_console: bool | None = None
    device_train_grad_accum: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    icl_tasks: Any = None
    icl_seq_len: int | None = None
    eval_gauntlet: Any = None
    compile_config: dict[str, Any] | None = None

    @property
    def lora(self) -> dict[str, Any] | None:
        return self.model.peft_config or self.peft_config


# Foundry keys that llamactl reads but whose effect is its own (documented in docs/configuration.md).
FOUNDRY_IGNORED = ("console_log_interval", "progress_bar", "log_to_console", "device_train_grad_accum",
                   "icl_tasks", "icl_seq_len", "eval_gauntlet", "metadata", "use_auth_token",
                   "eos_token_id", "decoder_only_format")
