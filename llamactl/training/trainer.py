"""build_trainer(): a Composer Trainer from a :class:`TrainConfig` — the one code path that
``llamactl train``, the Python API and the benchmarks use."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from llamactl.config.schema import LoaderSection, TrainConfig
from llamactl.errors import ConfigError, UserInputError
from llamactl.model.config import ModelConfigError
from llamactl.model.llama import Llama

log = logging.getLogger("llamactl.train")


@dataclass
class BuiltRun:
    """What build_trainer made, for the service to run and report on."""

    trainer: Any
    composer_model: Any
    llama: Llama
    tokenizer: Any
    recorder: Any
    device: str


def on_gpu() -> bool:
    return torch.cuda.is_available()


def _resolve_path(path: str, root: str) -> str:
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists() or str(path).startswith(("./", "../")):
        return str(p)
    return str(Path(root) / p)


# ---------------------------------------------------------------------------------------- model
def build_llama(cfg: TrainConfig) -> tuple[Llama, str | None]:
    """Our Llama for the config, and the folder its tokenizer can come from (pretrained sources)."""
    from llamactl.model.presets import PRESETS, preset

    m = cfg.model
    seed = cfg.seed if m.init_seed is None else m.init_seed
    try:
        if m.pretrained_model_name_or_path:
            from llamactl.interop.sources import load_model, resolve_model_source

            if m.pretrained:
                loaded = load_model(m.pretrained_model_name_or_path, dtype=torch.float32, device="cpu")
                model, tok_dir = loaded.model, loaded.tokenizer_dir
                if m.config_overrides:
                    raise ConfigError("model.config_overrides cannot change the architecture of pretrained "
                                      "weights; set model.pretrained=false to train that architecture from scratch")
            else:
                from llamactl.interop.sources import model_config as source_config

                source = resolve_model_source(m.pretrained_model_name_or_path)
                config = source_config(m.pretrained_model_name_or_path, source=source)
                config = config.replace(**m.config_overrides)
                model, tok_dir = Llama.fresh(config, seed=seed), source.tokenizer_dir
            return model, (str(tok_dir) if tok_dir else None)
        if not m.preset:
            raise ConfigError("set model.preset (e.g. tiny, llama-3.2-1b) or model.pretrained_model_name_or_path")
        if m.preset.lower() not in PRESETS:
            raise ConfigError(f"model.preset {m.preset!r} is unknown; choose one of {', '.join(PRESETS)}")
        config = preset(m.preset, **m.config_overrides)
    except ModelConfigError as e:
        raise ConfigError(f"model: {e}") from e
    except TypeError as e:
        raise ConfigError(f"model.config_overrides: {e}") from e
    return Llama.fresh(config, seed=seed), None


def load_tokenizer(name: str | None, fallback_dir: str | None):
    """The tokenizer named in the config: ``embedded``, a local folder, or a hub id."""
    from llamactl.data.tokenizer import load_tokenizer as _load

    target = name or fallback_dir
    if target is None:
        raise ConfigError("set tokenizer.name (a tokenizer folder, a hub id, or 'embedded')")
    return _load(target)


def check_vocab(model: Llama, tokenizer) -> None:
    n = len(tokenizer)
    if n > model.config.vocab_size:
        raise ConfigError(f"the tokenizer has {n} tokens but the model's vocab_size is {model.config.vocab_size}; "
                          f"set model.config_overrides.vocab_size to at least {n}")


# ---------------------------------------------------------------------------------------- data
def build_loader(section: LoaderSection, cfg: TrainConfig, *, batch_size: int, tokenizer_dir: str | None):
    from llamactl.data.loaders import build_lm_dataloader

    ds = section.dataset
    seq = ds.max_seq_len or cfg.max_seq_len
    if section.name == "embedded":
        from llamactl.data.embedded import ensure_embedded_dataset

        data_dir = ensure_embedded_dataset(Path(cfg.data_root), seq_len=seq)
    else:
        if not ds.local:
            raise ConfigError("train_loader.dataset.local must name a prepared MDS folder "
                              "(see `llamactl prepare-data`)")
        if ds.remote:
            raise ConfigError("train_loader.dataset.remote is not supported yet; copy the shards locally "
                              "and set dataset.local")
        data_dir = _resolve_path(ds.local, cfg.data_root)
    seed = ds.shuffle_seed if ds.shuffle_seed is not None else cfg.seed
    return build_lm_dataloader(data_dir=data_dir, split=ds.split, micro_batch_size=batch_size, max_seq_len=seq,
                               shuffle=ds.shuffle, seed=seed, num_workers=section.num_workers,
                               drop_last=section.drop_last)


# ---------------------------------------------------------------------------------------- trainer
_CALLBACKS = ("speed_monitor", "lr_monitor", "memory_monitor", "runtime_estimator", "optimizer_monitor")


def _composer_callbacks(cfg: TrainConfig) -> list[Any]:
    from composer import callbacks as cc

    out = []
    for name, kwargs in (cfg.callbacks or {}).items():
        kwargs = dict(kwargs or {})
        if name == "speed_monitor":
            out.append(cc.SpeedMonitor(**kwargs))
        elif name == "lr_monitor":
            out.append(cc.LRMonitor())
        elif name == "memory_monitor":
            if on_gpu():
                out.append(cc.MemoryMonitor(**kwargs))
        elif name == "runtime_estimator":
            out.append(cc.RuntimeEstimator(**kwargs))
        elif name == "optimizer_monitor":
            out.append(cc.OptimizerMonitor(**kwargs))
        else:
            import difflib

            close = difflib.get_close_matches(name, _CALLBACKS, n=1)
            raise ConfigError(f"unknown callback {name!r}" + (f"; did you mean {close[0]!r}?" if close else
                                                              f"; known: {', '.join(_CALLBACKS)}"))
    return out


def _loggers(cfg: TrainConfig, run_dir: Path) -> list[Any]:
    out = []
    for name, kwargs in (cfg.loggers or {}).items():
        kwargs = dict(kwargs or {})
        try:
            if name == "wandb":
                from composer.loggers import WandBLogger

                import wandb  # noqa: F401  (fail here, clearly, when the extra is missing)
                out.append(WandBLogger(**kwargs))
            elif name == "mlflow":
                from composer.loggers import MLFlowLogger

                import mlflow  # noqa: F401
                out.append(MLFlowLogger(**kwargs))
            elif name == "tensorboard":
                from composer.loggers import TensorboardLogger

                import tensorboard  # noqa: F401
                kwargs.setdefault("log_dir", str(run_dir / "tensorboard"))
                out.append(TensorboardLogger(**kwargs))
            else:
                raise ConfigError(f"unknown logger {name!r}; use wandb, mlflow or tensorboard")
        except ImportError as e:
            raise ConfigError(f"logger {name!r} needs the {name} package: pip install 'llamactl[{name}]'") from e
    return out


def check_batch(cfg: TrainConfig, world: int) -> int:
    """The per-GPU batch for ``world`` processes, or a ConfigError naming the numbers that clash."""
    if cfg.global_train_batch_size % world:
        raise ConfigError(f"global_train_batch_size ({cfg.global_train_batch_size}) must be divisible by the "
                          f"number of GPUs ({world})")
    per_rank = cfg.global_train_batch_size // world
    if cfg.device_train_microbatch_size <= 0 or cfg.device_train_microbatch_size > per_rank:
        raise ConfigError(f"device_train_microbatch_size ({cfg.device_train_microbatch_size}) must be between 1 "
                          f"and the per-GPU batch ({per_rank} = global_train_batch_size / {world})")
    return per_rank


def compile_model(module: torch.nn.Module, how: bool | str, loss: bool = True) -> None:
    """Compile in place: each decoder layer (``True``/``"layers"``) or the whole model (``"model"``).

    Per-layer is the default because it measured faster: 51.6k vs 24.5k tokens/s for the 1B shape on
    an H200 (docs/performance.md); the whole-model graph also compiles the fused loss, and ran with
    the GPU idle between kernels. With ``loss``, our Llama's fused loss also computes each chunk's
    softmax and gradient with a compiled function (``Llama.compile_loss``; ``model.compile_loss``).
    """
    if how in (False, None):
        return
    if hasattr(module, "compile_loss"):  # our Llama: the fused loss's per-chunk softmax too
        module.compile_loss = loss
    if how in (True, "layers"):
        layers = module.model.layers if hasattr(module, "model") and hasattr(module.model, "layers") else module.layers
        for layer in layers:
            layer.compile()
    else:
        module.compile()


def fsdp_version(fsdp_config: dict[str, Any]) -> int:
    """The FSDP implementation ``fsdp_config.version`` asks for: 2 (default) or 1."""
    version = fsdp_config.get("version", 2)
    if version not in (1, 2, "1", "2"):
        raise ConfigError(f"fsdp_config.version must be 1 or 2, got {version!r}")
    return int(version)


def fsdp_parallelism(fsdp_config: dict[str, Any] | None, *, gpu: bool) -> dict[str, Any] | None:
    """Composer's ``parallelism_config`` for ``fsdp_config``, choosing the FSDP implementation.

    ``fsdp_config.version`` (a llamactl key, default 2) picks PyTorch's FSDP2 (``fully_shard``,
    per-parameter DTensor sharding; what Composer runs when ``FSDP_VERSION=2``) or the older FSDP1
    (flat parameters). The rest of the section goes to Composer unchanged; FSDP2 accepts
    ``state_dict_type`` (``sharded`` by default: one ``__<rank>_0.distcp`` file per process),
    ``reshard_after_forward``, ``mixed_precision``, ``activation_checkpointing``, and ignores
    FSDP1-only keys such as ``sharding_strategy`` with a warning. FSDP2 also runs on CPU
    processes (gloo), which is how the test suite checks sharded checkpoints; FSDP1 needs GPUs.
    """
    if not fsdp_config:
        return None
    version = fsdp_version(fsdp_config)
    section = {k: v for k, v in fsdp_config.items() if k != "version"}
    if version == 1 and not gpu:
        raise ConfigError("fsdp_config.version=1 (FSDP1) needs GPUs; use version 2 or remove fsdp_config "
                          "to train on the CPU")
    # Composer reads the choice from the environment when it parses the config (in this process).
    os.environ["FSDP_VERSION"] = str(version)
    return {"fsdp": section}


def _duration_batches(text: str) -> int | None:
    return int(float(text[:-2])) if text.endswith("ba") else None


def build_trainer(cfg: TrainConfig, run_dir: Path, *, on_event: Callable | None = None,
                  autoresume: bool = False, extra_callbacks: list[Any] | None = None) -> BuiltRun:
    """Build model, data, optimizer, scheduler, callbacks and the Composer Trainer for ``cfg``."""
    from composer import Trainer
    from composer.algorithms import GradientClipping
    from composer.core import Evaluator
    from composer.models import HuggingFaceModel
    from composer.utils import dist

    from llamactl.training.adapter import (LlamactlComposerModel, TokenCrossEntropy, TokenPerplexity,
                                           activation_checkpointing_fn, check_lora_bias, fsdp_wrap_fn)
    from llamactl.training.callbacks import RunRecorder
    from llamactl.training.optim import build_optimizer, build_scheduler

    gpu = on_gpu()
    if cfg.precision.startswith("amp_") and not gpu:
        raise ConfigError(f"precision {cfg.precision} needs a GPU; on the CPU use --precision fp32")
    if cfg.precision == "bf16":
        raise ConfigError("precision bf16 (pure bf16 weights) is not supported for training; use amp_bf16")
    per_rank = check_batch(cfg, dist.get_world_size())
    if cfg.max_seq_len <= 0:
        raise ConfigError(f"max_seq_len must be positive, got {cfg.max_seq_len}")

    llama, tok_dir = build_llama(cfg)
    tokenizer = load_tokenizer(cfg.tokenizer.name, tok_dir)
    check_vocab(llama, tokenizer)
    if cfg.max_seq_len > llama.config.max_position_embeddings:
        raise ConfigError(f"max_seq_len ({cfg.max_seq_len}) exceeds the model's max_position_embeddings "
                          f"({llama.config.max_position_embeddings})")
    llama.activation_checkpointing = cfg.model.activation_checkpointing
    llama.loss_chunk_size = cfg.model.loss_chunk_size
    if cfg.model.attn_backend not in ("auto", "math") and not gpu:
        raise ConfigError(f"model.attn_backend={cfg.model.attn_backend} needs a GPU; use auto on the CPU")
    from llamactl.model.llama import set_sdpa_backend

    set_sdpa_backend(cfg.model.attn_backend)  # process-wide; always set so an earlier choice never lingers

    lora = cfg.lora
    if cfg.model.impl == "hf":
        if lora:
            raise ConfigError("model.impl=hf is the A/B baseline for full training; use impl=custom with LoRA")
        from composer.metrics.nlp import LanguageCrossEntropy, LanguagePerplexity
        from transformers import LlamaForCausalLM

        from llamactl.interop.hf import llamactl_state_dict_to_hf, to_transformers_config

        hf = LlamaForCausalLM(to_transformers_config(llama.config))
        res = hf.load_state_dict(llamactl_state_dict_to_hf(llama.state_dict(), llama.config), strict=False)
        # The only key allowed to be absent is a tied head, which transformers re-ties below.
        missing = set(res.missing_keys) - ({"lm_head.weight"} if llama.config.tie_word_embeddings else set())
        if missing or res.unexpected_keys:
            from llamactl.errors import WeightMappingError

            raise WeightMappingError(f"weights do not map onto transformers' Llama: missing {sorted(missing)[:3]}, "
                                     f"unexpected {sorted(res.unexpected_keys)[:3]}")
        hf.tie_weights()
        hf.config.use_cache = False
        if cfg.model.activation_checkpointing != "none":
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        composer_model = HuggingFaceModel(hf, tokenizer=tokenizer, shift_labels=True, metrics=None,
                                          eval_metrics=[LanguageCrossEntropy(), LanguagePerplexity()])
        train_module = hf
    else:
        if lora:
            check_lora_bias(llama, lora)
        composer_model = LlamactlComposerModel(llama, tokenizer=tokenizer, peft_config=lora)
        train_module = llama
    compile_model(train_module, cfg.model.compile, loss=cfg.model.compile_loss)
    # Composer's FSDP looks for these on the wrapped model: shard and checkpoint per decoder layer.
    train_module.fsdp_wrap_fn = fsdp_wrap_fn
    train_module.activation_checkpointing_fn = activation_checkpointing_fn

    train_dl = build_loader(cfg.train_loader, cfg, batch_size=per_rank, tokenizer_dir=tok_dir)
    evaluators = []
    if cfg.eval_loader is not None:
        eval_bs = cfg.device_eval_batch_size or cfg.device_train_microbatch_size
        eval_dl = build_loader(cfg.eval_loader, cfg, batch_size=eval_bs, tokenizer_dir=tok_dir)
        names = ["TokenCrossEntropy", "TokenPerplexity"] if cfg.model.impl == "custom" else \
            ["LanguageCrossEntropy", "LanguagePerplexity"]
        evaluators.append(Evaluator(label="eval", dataloader=eval_dl, metric_names=names))
    del TokenCrossEntropy, TokenPerplexity

    params = [p for p in composer_model.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg.optimizer, params, on_cuda=gpu)
    scheduler = build_scheduler(cfg.scheduler)
    algorithms = []
    if cfg.algorithms.gradient_clipping is not None:
        gc = cfg.algorithms.gradient_clipping
        algorithms.append(GradientClipping(clipping_type=gc.clipping_type, clipping_threshold=gc.clipping_threshold))

    seq = cfg.train_loader.dataset.max_seq_len or cfg.max_seq_len
    flops_per_token = llama.config.flops_per_token(seq)
    if lora:
        n = llama.config.num_params(include_embedding=False) + (
            llama.config.vocab_size * llama.config.hidden_size if llama.config.tie_word_embeddings else 0)
        flops_per_token -= 2.0 * n
    log_every = _duration_batches(cfg.log_interval) or 1
    recorder = RunRecorder(run_dir, log_every=log_every, on_event=on_event, flops_per_token=flops_per_token)
    parallelism = fsdp_parallelism(cfg.fsdp_config, gpu=gpu)
    save_folder = cfg.save_folder or str(run_dir / "checkpoints")
    try:
        trainer = Trainer(
            model=composer_model,
            train_dataloader=train_dl,
            eval_dataloader=evaluators or None,
            eval_interval=cfg.eval_interval if evaluators else 1,
            eval_subset_num_batches=cfg.eval_subset_num_batches,
            max_duration=cfg.max_duration,
            optimizers=optimizer,
            schedulers=scheduler,
            step_schedulers_every_batch=True,
            algorithms=algorithms,
            callbacks=[recorder, *_composer_callbacks(cfg), *(extra_callbacks or [])],
            loggers=_loggers(cfg, run_dir),
            run_name=run_dir.name,
            progress_bar=False,
            log_to_console=False,
            save_folder=save_folder,
            save_filename="ep{epoch}-ba{batch}-rank{rank}.pt",
            save_latest_filename="latest-rank{rank}.pt",
            save_interval=cfg.save_interval,
            save_num_checkpoints_to_keep=cfg.save_num_checkpoints_to_keep,
            save_overwrite=cfg.save_overwrite or autoresume,
            save_weights_only=cfg.save_weights_only,
            load_path=cfg.load_path,
            load_weights_only=cfg.load_weights_only,
            autoresume=autoresume,
            parallelism_config=parallelism,
            device="gpu" if gpu else "cpu",
            precision=cfg.precision,
            device_train_microbatch_size=cfg.device_train_microbatch_size,
            seed=cfg.seed,
            dist_timeout=cfg.dist_timeout,
            python_log_level=None,
        )
    except (ValueError, FileNotFoundError) as e:
        raise UserInputError(f"cannot build the trainer: {e}") from e
    return BuiltRun(trainer=trainer, composer_model=composer_model, llama=llama, tokenizer=tokenizer,
                    recorder=recorder, device="gpu" if gpu else "cpu")
