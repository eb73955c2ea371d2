"""Loading a model and its tokenizer for ``eval`` and ``generate``: the one place that turns the
user's MODEL argument into our inner :class:`~llamactl.model.llama.Llama` plus a tokenizer.

Also decides where eval results go: a run directory gets ``RUN_DIR/evals/<timestamp>/``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from llamactl.errors import ModelNotFoundError, UserInputError
from llamactl.model.llama import Llama

log = logging.getLogger(__name__)


@dataclass
class InferenceModel:
    """A loaded model ready for evaluation or generation."""

    model: Llama
    tokenizer: Any  # a transformers tokenizer
    source: str  # what was loaded, for reports
    run_dir: Path | None  # set when MODEL was a run directory
    eos_token_ids: list[int]
    pad_token_id: int


def pick_device(device: str | None) -> torch.device:
    """``None``/``auto`` -> CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UserInputError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"device {device!r} was asked for but CUDA is not available; use --device cpu")
    return dev


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """``None``/``auto`` -> bf16 on GPUs that support it, fp32 otherwise."""
    from llamactl.interop.checkpoint import parse_dtype

    if dtype in (None, "auto"):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return parse_dtype(dtype)  # type: ignore[return-value]


def is_run_dir(path: Path) -> bool:
    """A llamactl run directory (``runs/<name>-<timestamp>/``) rather than a model folder."""
    return path.is_dir() and (path / "config.yaml").is_file() and (
        (path / "checkpoints").is_dir() or (path / "metrics.jsonl").is_file())


def check_model_spec(spec: str) -> None:
    """Fail fast (before loading data or tasks) when MODEL cannot be a model."""
    if not Path(spec).expanduser().exists():
        raise ModelNotFoundError(f"model {spec!r} not found: give a Hugging Face model folder or a run directory")


def _load_weights(spec: str, dtype: torch.dtype, device: torch.device) -> tuple[Llama, Path, str, Path | None]:
    """(model, tokenizer folder, source description, run dir). The one place to switch loaders."""
    check_model_spec(spec)
    path = Path(spec).expanduser()
    if is_run_dir(path):
        for sub in ("export/hf", "export", "hf"):
            if (path / sub / "config.json").is_file():
                from llamactl.interop.checkpoint import load_hf_folder

                return load_hf_folder(path / sub, dtype=dtype, device=device), path / sub, str(path / sub), path
        raise ModelNotFoundError(f"run directory {path} has no exported model (export/config.json); "
                                 f"export it first")
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path} is not a model folder (no config.json) nor a run directory")
    from llamactl.interop.checkpoint import load_hf_folder

    return load_hf_folder(path, dtype=dtype, device=device), path, str(path), None


def _eos_ids(folder: Path, model: Llama, tokenizer: Any) -> list[int]:
    ids: set[int] = set()

    def add(v: Any) -> None:
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, list):
            ids.update(x for x in v if isinstance(x, int))

    add(model.config.eos_token_id)
    gen = folder / "generation_config.json"
    if gen.is_file():
        try:
            add(json.loads(gen.read_text()).get("eos_token_id"))
        except (json.JSONDecodeError, AttributeError):
            log.warning("ignoring unreadable %s", gen)
    add(getattr(tokenizer, "eos_token_id", None))
    return sorted(ids)


def load_inference_model(spec: str, *, dtype: str | None = None, device: str | None = None) -> InferenceModel:
    """Our model + tokenizer from a model folder or run directory, in eval mode."""
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    model, tok_dir, source, run_dir = _load_weights(spec, dt, dev)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"no usable tokenizer in {tok_dir} ({str(e).splitlines()[0]}); "
                                 f"copy tokenizer.json and tokenizer_config.json next to the weights") from e
    eos = _eos_ids(tok_dir, model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    model.eval()
    return InferenceModel(model=model, tokenizer=tokenizer, source=source, run_dir=run_dir,
                          eos_token_ids=eos, pad_token_id=int(pad))


def timestamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def eval_output_dir(run_dir: Path | None, out: str | Path | None) -> Path:
    """``--out`` when given, else ``RUN_DIR/evals/<ts>/`` for a run, else ``./evals/<ts>/``."""
    if out is not None:
        return Path(out)
    base = run_dir / "evals" if run_dir is not None else Path("evals")
    return base / timestamp()
