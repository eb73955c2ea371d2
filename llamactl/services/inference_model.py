"""Loading a model and its tokenizer for ``eval`` and ``generate``: the one place that turns the
user's MODEL argument into our inner :class:`~llamactl.model.llama.Llama` plus a tokenizer
(through :func:`llamactl.interop.sources.load_model`).

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


def _run_dir_of(source: Any) -> Path | None:
    """The run directory a run / checkpoint source belongs to (where its evals go)."""
    if source.kind not in ("run", "checkpoint"):
        return None
    for cand in (source.path, source.path.parent, source.path.parent.parent):
        if (cand / "config.yaml").is_file():
            return cand
    return None


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
    """Our model (LoRA merged in) + tokenizer from any model source, in eval mode.

    Sources are those of :func:`llamactl.interop.sources.load_model`: model folders, hub ids,
    ``.gguf`` files, PEFT adapters, run directories and Composer ``.pt`` checkpoints.
    """
    from llamactl.interop.sources import load_model

    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    loaded = load_model(spec, dtype=dt, device=dev)
    tok_dir = loaded.tokenizer_dir
    if tok_dir is None:
        raise ModelNotFoundError(f"no tokenizer is known for {spec}: put tokenizer.json next to the weights "
                                 f"(or set tokenizer.name in the run's config)")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"the tokenizer in {tok_dir} does not load ({str(e).splitlines()[0]}); "
                                 f"copy tokenizer.json and tokenizer_config.json next to the weights") from e
    model = loaded.model
    folder = loaded.source.path if loaded.source.path.is_dir() else tok_dir
    eos = _eos_ids(folder, model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    model.eval()
    what = loaded.source.spec + (" (LoRA merged)" if loaded.lora_merged else "")
    return InferenceModel(model=model, tokenizer=tokenizer, source=what, run_dir=_run_dir_of(loaded.source),
                          eos_token_ids=eos, pad_token_id=int(pad))


def timestamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def eval_output_dir(run_dir: Path | None, out: str | Path | None) -> Path:
    """``--out`` when given, else ``RUN_DIR/evals/<ts>/`` for a run, else ``./evals/<ts>/``."""
    if out is not None:
        return Path(out)
    base = run_dir / "evals" if run_dir is not None else Path("evals")
    return base / timestamp()
