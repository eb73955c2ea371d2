"""``llamactl train``: config in, a trained run directory and a :class:`TrainResult` out."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from llamactl.config.load import config_from_dict, load_train_config, load_yaml_dict
from llamactl.config.schema import TrainConfig
from llamactl.errors import ConfigError, RunError, UserInputError
from llamactl.runs import check_run_dir, find_resumable, latest_checkpoint, new_run_dir
from llamactl.secrets import redact

log = logging.getLogger("llamactl.train")

DEFAULT_SAMPLE_PROMPT = "It is a truth universally acknowledged"


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    steps: int
    tokens: int
    first_loss: float | None
    final_loss: float | None
    elapsed_s: float
    tokens_per_s: float | None
    mfu: float | None
    eval: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    loss_plot: Path | None = None
    sample_prompt: str | None = None
    sample: str | None = None
    resumed_from_step: int | None = None
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def resolve_config(yaml_path: str | Path | None = None, overrides: list[str] | None = None,
                   run_dir: str | Path | None = None) -> tuple[TrainConfig, Path | None]:
    """The config to run, and the run directory to continue (``--run-dir``), if any."""
    if run_dir is not None:
        rd = check_run_dir(run_dir)
        data = load_yaml_dict(rd / "config.yaml", overrides)
        return config_from_dict(data), rd
    if yaml_path is None:
        raise UserInputError("pass --yaml CONFIG to start a run, or --run-dir RUN to continue one")
    return load_train_config(yaml_path, overrides), None


def _write_config(cfg: TrainConfig, run_dir: Path) -> None:
    import yaml

    data = redact(dataclasses.asdict(cfg))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


class _FileLog:
    """Attach a train.log handler to the llamactl and composer loggers for the run's duration."""

    def __init__(self, path: Path) -> None:
        self.handler = logging.FileHandler(path)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.setLevel(logging.INFO)
        self.loggers = [logging.getLogger("llamactl"), logging.getLogger("composer")]
        self.levels: list[int] = []

    def __enter__(self) -> _FileLog:
        for lg in self.loggers:
            self.levels.append(lg.level)
            if lg.level == logging.NOTSET or lg.level > logging.INFO:
                lg.setLevel(logging.INFO)
            lg.addHandler(self.handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for lg, lvl in zip(self.loggers, self.levels):
            lg.removeHandler(self.handler)
            lg.setLevel(lvl)
        self.handler.close()


def _is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def _oom_message(cfg: TrainConfig, run_dir: Path) -> str:
    ckpt = latest_checkpoint(run_dir)
    where = f"last good checkpoint: {ckpt}" if ckpt else "no checkpoint was saved yet"
    return (f"CUDA ran out of memory at device_train_microbatch_size={cfg.device_train_microbatch_size}, "
            f"max_seq_len={cfg.max_seq_len}, precision={cfg.precision}; lower device_train_microbatch_size "
            f"(the global batch is kept by gradient accumulation), set model.activation_checkpointing=full, "
            f"train LoRA (peft_config) instead of all weights, use precision=amp_bf16, or shorten max_seq_len; "
            f"{where} (continue with --run-dir {run_dir})")


def plan(config: str | Path | None = None, *, overrides: list[str] | None = None,
         run_dir: str | Path | None = None, gpus: int | None = None):
    """Size a run without starting it (``--dry-run``): parameters, memory per GPU, expected speed."""
    import torch

    from llamactl.training.plan import plan_run

    cfg, _ = resolve_config(config, overrides, run_dir)
    n = gpus or (torch.cuda.device_count() or 1)
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return plan_run(cfg, gpus=n, device_name=name)


def _clean_stale_shared_memory() -> None:
    """Drop shared memory that a killed run's StreamingDataset left behind; otherwise a later
    multi-process run over the same data can wait forever for workers that no longer exist."""
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()


def steady_throughput(history: list[dict]) -> tuple[float | None, float | None]:
    """Tokens/s and MFU of the run's second half, from the step records' tokens and timestamps.

    The first steps hold compilation and warm-up (the first step of a compiled 1B run takes seconds),
    so they are left out; pauses inside the second half (checkpoints, evaluation) stay in, as the
    user pays for them. Runs too short for two halves fall back to the last record's rolling rate.
    Only this process's records count: a resumed run's file also holds the earlier process's steps,
    timed from that process's start.
    """
    recs = [r for r in history if r.get("elapsed_s") is not None and r.get("tokens") is not None]
    start = len(recs) - 1
    while start > 0 and recs[start - 1]["elapsed_s"] < recs[start]["elapsed_s"]:
        start -= 1
    recs = recs[start:]
    last = next((r for r in reversed(history) if r.get("tokens_per_s")), None)
    if not last:
        return None, None
    tps = last["tokens_per_s"]
    if len(recs) >= 4:
        a, b = recs[len(recs) // 2 - 1], recs[-1]
        if b["elapsed_s"] > a["elapsed_s"] and b["tokens"] > a["tokens"]:
            tps = (b["tokens"] - a["tokens"]) / (b["elapsed_s"] - a["elapsed_s"])
    mfu = tps * last["mfu"] / last["tokens_per_s"] if last.get("mfu") is not None else None  # MFU is tokens/s scaled
    return tps, mfu


def _init_process_group(timeout: float) -> None:
    """Join the process group before anything else runs in this process (Composer would do it later,
    inside the Trainer, after the model and data loaders exist). Early, the ranks reach the
    rendezvous together; late, on a busy CPU machine, gloo's pair set-up was seen to hang."""
    from composer.devices import DeviceCPU, DeviceGPU
    from composer.utils import dist

    from llamactl.training.trainer import on_gpu

    dist.initialize_dist(DeviceGPU() if on_gpu() else DeviceCPU(), timeout=timeout)


def _prepare_embedded_data(cfg: TrainConfig) -> None:
    """Pack the bundled corpus once, before the processes start: otherwise one rank builds it while
    the others wait on its lock, and they reach the process-group set-up far apart."""
    from llamactl.data.embedded import ensure_embedded_dataset

    seqs = {(s.dataset.max_seq_len or cfg.max_seq_len) for s in (cfg.train_loader, cfg.eval_loader)
            if s is not None and s.name == "embedded"}
    for seq in sorted(seqs):
        ensure_embedded_dataset(Path(cfg.data_root), seq_len=seq)


def launch(config: str | Path | None = None, *, overrides: list[str] | None = None, gpus: int,
           run_dir: str | Path | None = None, extra_args: list[str] | None = None) -> Path:
    """Start ``gpus`` training processes with ``torchrun`` (one per GPU) on one run directory.

    The run directory and its resolved config are made here, once; each process then continues
    it with ``--run-dir`` (Composer's autoresume starts from scratch when it holds no checkpoint
    yet, and from the latest one otherwise). Returns the run directory; raises on failure.
    """
    import shutil
    import subprocess
    import sys

    if gpus < 2:
        raise UserInputError(f"--gpus must be at least 2 to launch several processes, got {gpus}")
    cfg, resume_dir = resolve_config(config, overrides, run_dir)
    from llamactl.training.trainer import check_batch

    check_batch(cfg, gpus)  # fail here, once, rather than in every process
    if resume_dir is None:
        run = new_run_dir(cfg.runs_dir, cfg.run_name or "run")
        _write_config(cfg, run)
    else:
        run = resume_dir
    _clean_stale_shared_memory()  # once, here, before any process attaches to it
    _prepare_embedded_data(cfg)
    torchrun = shutil.which("torchrun")
    cmd = ([torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"])
    cmd += ["--standalone", f"--nproc_per_node={gpus}", "-m", "llamactl", "train", "--run-dir", str(run),
            *(extra_args or [])]
    log.info("launching %s", " ".join(cmd))
    # Composer also reads NODE_RANK, which torchrun does not set for a single node.
    env = {**os.environ, "NODE_RANK": os.environ.get("NODE_RANK", "0")}
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise RunError(f"the {gpus}-process run failed (exit {proc.returncode}); see {run / 'train.log'} and "
                       f"continue it with --run-dir {run} --gpus {gpus}")
    return run


def train(config: TrainConfig | str | Path | None = None, *, overrides: list[str] | None = None,
          run_dir: str | Path | None = None, on_event: Callable | None = None, sample: bool = True) -> TrainResult:
    """Train as the config says; return the result. Prints nothing.

    Args:
        config: a :class:`TrainConfig`, or the path of a train YAML.
        overrides: ``key=value`` strings applied on top of the YAML (e.g. ``optimizer.lr=1e-4``).
        run_dir: continue this run from its latest checkpoint (its saved config is used).
        on_event: receives :class:`~llamactl.training.callbacks.ProgressEvent` objects (rank 0).
        sample: generate one line from the trained model at the end.
    """
    if isinstance(config, TrainConfig):
        if overrides:
            raise UserInputError("overrides apply to a YAML config; change the TrainConfig object instead")
        cfg, resume_dir = config, (check_run_dir(run_dir) if run_dir else None)
    else:
        cfg, resume_dir = resolve_config(config, overrides, run_dir)
    run_name = cfg.run_name or "run"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if world > 1 and resume_dir is None:
        raise UserInputError("under a multi-process launcher pass --run-dir (one run directory for every "
                             "process), or let llamactl launch the processes with --gpus N")
    if resume_dir is None and cfg.autoresume:
        resume_dir = find_resumable(cfg.runs_dir, run_name)
    autoresume = resume_dir is not None
    if autoresume:
        run = resume_dir
    else:
        run = new_run_dir(cfg.runs_dir, run_name)
        _write_config(cfg, run)

    # Fewer fragmentation OOMs at large micro-batches; must be set before CUDA is first used.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    from llamactl.training.callbacks import plot_loss
    from llamactl.training.trainer import build_trainer

    if world == 1:
        _clean_stale_shared_memory()
    else:
        _init_process_group(cfg.dist_timeout)
    t0 = time.perf_counter()
    with _FileLog(run / ("train.log" if rank0 else f"train-rank{os.environ.get('RANK')}.log")):
        log.info("run directory %s%s", run, " (continuing)" if autoresume else "")
        built = build_trainer(cfg, run, on_event=on_event, autoresume=autoresume)
        resumed_from = int(built.trainer.state.timestamp.batch.value) or None
        try:
            built.trainer.fit()
        except Exception as e:
            if _is_oom(e):
                raise RunError(_oom_message(cfg, run)) from e
            raise
        finally:
            built.trainer.close()
        recorder = built.recorder
        elapsed = time.perf_counter() - t0
        steps = int(built.trainer.state.timestamp.batch.value)
        tokens = int(built.trainer.state.timestamp.token.value)
        from llamactl.training.callbacks import read_metrics

        history, evals = read_metrics(run)
        steady_tps, steady_mfu = steady_throughput(history)
        result = TrainResult(
            run_dir=run, steps=steps, tokens=tokens,
            first_loss=history[0]["loss"] if history else None,
            final_loss=history[-1]["loss"] if history else None,
            elapsed_s=round(elapsed, 2),
            tokens_per_s=round(steady_tps, 1) if steady_tps else None,
            mfu=round(steady_mfu, 4) if steady_mfu is not None else None,
            eval=evals[-1]["eval"] if evals else {},
            checkpoint=latest_checkpoint(run), resumed_from_step=resumed_from, device=built.device)
        del recorder
        if not rank0:
            return result
        result.loss_plot = plot_loss(run)
        if sample and world == 1:
            result.sample_prompt = cfg.sample_prompt or DEFAULT_SAMPLE_PROMPT
            result.sample = _sample_line(built, result.sample_prompt, cfg.sample_max_new_tokens, cfg.seed)
        (run / "summary.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        log.info("finished: %s", json.dumps(result.to_dict()))
    return result


def _sample_line(built, prompt: str, max_new_tokens: int, seed: int) -> str:
    """One short continuation of ``prompt`` from the trained weights, so the user sees the model speak.

    ``built.llama`` is the inner model; with LoRA, PEFT injected its layers into it in place, so the
    adapters take part without going through the PEFT wrapper.
    """
    import torch

    from llamactl.generation import Generator, SamplingConfig
    from llamactl.model.llama import set_sdpa_backend

    tok = built.tokenizer
    model = built.llama
    was_training = model.training
    # Decoding uses a boolean mask, which the cuDNN backend chosen for training cannot take, and
    # the layers compiled for training would recompile for every new length: run it plainly.
    set_sdpa_backend("auto")
    try:
        with torch.compiler.set_stance("force_eager"):
            # fuse=False: the trainer still owns these weights (checkpoints, optimizer); leave them be.
            out = Generator(model, mode="eager", fuse=False).generate(
                [tok.encode(prompt)], SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.8, top_k=50,
                                                     seed=seed),
                eos_token_ids=[tok.eos_token_id] if tok.eos_token_id is not None else [],
                pad_token_id=tok.pad_token_id or 0, decode=lambda ids: tok.decode(ids, skip_special_tokens=True))
    finally:
        model.train(was_training)
    return out.texts[0] if out.texts else ""
