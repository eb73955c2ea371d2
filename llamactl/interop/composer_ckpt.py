"""Composer checkpoints, read without running pickled code.

A Composer checkpoint (``ep0-ba4-rank0.pt``) is a ``torch.save`` of ``{"state": ..., "rng": ...}``.
It is loaded with ``torch.load(weights_only=True)``. Composer 0.32.1 pickles a few plain objects
besides tensors and containers — ``datetime.timedelta`` (timestamps), ``TorchVersion`` (metadata)
and numpy arrays (the saved numpy RNG state) — so exactly those classes are allowlisted, for this
one load, through ``torch.serialization.safe_globals``. Anything else a file asks to unpickle is
refused with an explanation: unpickling an arbitrary class can run arbitrary code.

What we take from it:

* ``state["model"]``: the Composer model's state dict. Our ``LlamactlComposerModel`` keeps the
  inner model at ``.model``, so keys are ``model.<our name>`` for full training
  (``model.layers.0.self_attn.q_proj.weight``), and for LoRA with ``should_save_peft_only`` only the
  adapter keys ``model.base_model.model.layers.0.self_attn.q_proj.lora_A.default.weight``. A run
  of the stock transformers model (``model.impl: hf``) has the HF names one level down
  (``model.model.layers.0...``, ``model.lm_head.weight``); those are recognised as well.
* ``state["integrations"]["huggingface"]["model"]``: the HF ``config.json`` of the model trained
  and, for LoRA, its ``adapter_config.json``; ``...["tokenizer"]``: the tokenizer files, when a
  tokenizer was attached to the model.

Composer's own ``hf_from_composer_checkpoint`` is not used: it fails on PEFT checkpoints and it
``torch.load``\\ s with pickling enabled.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llamactl.errors import ModelNotFoundError, WeightMappingError

# Composer names checkpoints ep{epoch}-ba{batch}-rank{rank}.pt; 'latest-rank0.pt' links the newest.
_CKPT_NAME = re.compile(r"^ep(\d+)-ba(\d+)-rank0\.pt$")
_HF_PREFIXES = ("model.", "lm_head.")


def _safe_classes() -> list[Any]:
    """The non-tensor classes Composer 0.32.1 checkpoints pickle: inert value types only."""
    import numpy as np
    from torch.torch_version import TorchVersion

    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    numeric = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
               np.float16, np.float32, np.float64)
    return [datetime.timedelta, TorchVersion, np.ndarray, np.dtype, _reconstruct,
            *{type(np.dtype(t)) for t in numeric}]


def torch_load_safe(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` with Composer's inert extras allowlisted for this call.

    Raises:
        WeightMappingError: the file wants to unpickle something else (the message names it).
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_safe_classes()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError (or RuntimeError) for refused globals
        text = str(e)
        m = re.search(r"GLOBAL ([\w.]+)", text)
        if m or "Weights only load failed" in text:
            culprit = m.group(1) if m else _first_unsafe_global(path)
            raise WeightMappingError(
                f"{path} contains a pickled {culprit} object, and unpickling it could run arbitrary code, so "
                f"llamactl refuses to load it; re-save the weights as safetensors with a tool you trust") from None
        if isinstance(e, (OSError, EOFError)) or "zip" in text.lower() or "magic" in text.lower():
            raise WeightMappingError(f"{path} is not a readable PyTorch checkpoint ({text.splitlines()[0][:120]})"
                                     ) from e
        raise WeightMappingError(f"{path} could not be loaded with weights_only=True: "
                                 f"{text.splitlines()[0][:200]}") from e


def _first_unsafe_global(path: Path) -> str:
    try:
        allowed = {f"{c.__module__}.{c.__qualname__}" for c in _safe_classes()}
        found = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in allowed]
        return found[0] if found else "non-tensor"
    except Exception:  # noqa: BLE001 - only used to word the message
        return "non-tensor"


def find_checkpoint(path: str | Path) -> Path:
    """The Composer checkpoint file for a run directory, a ``checkpoints/`` folder, or a ``.pt`` file.

    In a folder: ``latest-rank0.pt`` if present, else the ``ep*-ba*-rank0.pt`` with the most batches.
    """
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.exists():
        raise ModelNotFoundError(f"checkpoint {path} does not exist; pass a run directory or a Composer .pt file")
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    latest = folder / "latest-rank0.pt"
    if latest.is_file():
        return latest.resolve()
    found = sorted(((int(m.group(2)), int(m.group(1)), p) for p in folder.glob("*.pt")
                    if (m := _CKPT_NAME.match(p.name))), key=lambda t: (t[0], t[1]))
    if not found:
        if any(folder.glob("*.distcp")) or any(folder.glob("*/*.distcp")):
            raise WeightMappingError(f"{folder} holds a sharded (FSDP) checkpoint; save with "
                                     f"fsdp_config.state_dict_type: full to get a single .pt file")
        raise ModelNotFoundError(f"no Composer checkpoint (*.pt) in {folder}; the run saved none yet — "
                                 f"lower save_interval or train longer")
    return found[-1][2]


@dataclass
class ComposerCheckpoint:
    """The parts of a Composer checkpoint that conversion needs.

    Attributes:
        path: the ``.pt`` file read.
        weights: the inner model's tensors. Full training: our names (``layers.0...``). LoRA: the
            adapter tensors under our ``PeftModel`` names
            (``base_model.model.layers.0.self_attn.q_proj.lora_A.default.weight``).
        is_lora: whether ``weights`` is a LoRA adapter (base weights are not in the checkpoint).
        hf_config: the HF ``config.json`` dict Composer stored, if any.
        peft_config: the ``adapter_config.json`` dict Composer stored, if any.
        tokenizer_files: tokenizer files Composer stored (name -> content), if any.
        batches: the batch count of the checkpoint (from its timestamp), if known.
    """

    path: Path
    weights: dict[str, torch.Tensor]
    is_lora: bool
    hf_config: dict[str, Any] | None = None
    peft_config: dict[str, Any] | None = None
    tokenizer_files: dict[str, Any] = field(default_factory=dict)
    batches: int | None = None


def _strip_model_prefix(state: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """Keep the inner model's tensors: keys under ``model.`` with the prefix removed.

    Other top-level submodules of the Composer model (e.g. a second reference to the same inner
    model) hold the same tensors under another name and are skipped.
    """
    inner = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.") and torch.is_tensor(v)}
    if not inner:
        sample = ", ".join(list(state)[:3]) or "nothing"
        raise WeightMappingError(f"{path} has no model weights under 'model.' (found {sample}); "
                                 f"it is not a checkpoint of a llamactl run")
    return inner


def _normalise_names(weights: dict[str, torch.Tensor], is_lora: bool) -> dict[str, torch.Tensor]:
    """HF-named inner models (``model.impl: hf``) -> our names, so the rest sees one naming."""
    from llamactl.interop.hf import hf_to_llamactl_key

    prefix = "base_model.model." if is_lora else ""
    body = [k[len(prefix):] for k in weights]
    if not all(k.startswith(_HF_PREFIXES) for k in body) or not any(k.startswith("model.") for k in body):
        return weights
    out: dict[str, torch.Tensor] = {}
    for key, tensor in weights.items():
        rest = key[len(prefix):]
        if is_lora:
            out[prefix + _hf_module_to_ours(rest)] = tensor
        else:
            ours = hf_to_llamactl_key(rest)
            if ours is not None:
                out[ours] = tensor
    return out


def _hf_module_to_ours(key: str) -> str:
    return key[len("model."):] if key.startswith("model.") else key


def read_composer_checkpoint(path: str | Path) -> ComposerCheckpoint:
    """Read a Composer checkpoint (run dir, ``checkpoints/`` folder or ``.pt``) safely.

    Raises:
        ModelNotFoundError: no checkpoint there.
        WeightMappingError: the file is not a Composer checkpoint of a Llama, or needs unsafe unpickling.
    """
    file = find_checkpoint(path)
    raw = torch_load_safe(file)
    if not isinstance(raw, dict) or "state" not in raw or not isinstance(raw["state"], dict):
        raise WeightMappingError(f"{file} is not a Composer checkpoint (no 'state' dict); "
                                 f"for a plain state dict convert it to an HF folder first")
    state = raw["state"]
    model_state = state.get("model")
    if not isinstance(model_state, dict):
        raise WeightMappingError(f"{file} holds no model state; it is not a Composer training checkpoint")
    weights = _strip_model_prefix(model_state, file)
    hf_meta = ((state.get("integrations") or {}).get("huggingface") or {})
    model_meta = hf_meta.get("model") or {}
    hf_config = (model_meta.get("config") or {}).get("content")
    peft_config = (model_meta.get("peft_config") or {}).get("content")
    is_lora = any(".lora_" in k for k in weights)
    if is_lora:
        lora_keys = {k for k in weights if k.startswith("base_model.model.")}
        if lora_keys != set(weights):
            odd = sorted(set(weights) - lora_keys)[0]
            raise WeightMappingError(f"{file} mixes LoRA weights with {odd!r}; expected only PEFT adapter weights")
    weights = _normalise_names(weights, is_lora)
    tokenizer_files = {}
    for name, entry in (hf_meta.get("tokenizer") or {}).items():
        if isinstance(entry, dict) and "content" in entry:
            ext = entry.get("file_extension") or ""
            tokenizer_files[name if name.endswith(ext) else name + ext] = entry["content"]
    batches = None
    ts = (state.get("timestamp") or {}).get("Timestamp")
    if isinstance(ts, dict) and "batch" in ts:
        try:
            batches = int(ts["batch"])
        except (TypeError, ValueError):
            batches = None
    if batches is None and (m := _CKPT_NAME.match(file.name)):
        batches = int(m.group(2))
    return ComposerCheckpoint(path=file, weights=weights, is_lora=is_lora, hf_config=hf_config,
                              peft_config=peft_config, tokenizer_files=tokenizer_files, batches=batches)


def write_tokenizer_files(files: dict[str, Any], folder: str | Path) -> list[str]:
    """Write tokenizer files stored in a Composer checkpoint (``.json`` dicts, ``.txt`` line lists,
    ``.jinja`` text). Other kinds are skipped — ``.py`` on purpose: code from a checkpoint is never
    written where ``trust_remote_code`` could run it. Returns the names written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in files.items():
        if "/" in name or name.startswith("."):
            continue  # never write outside the folder
        target = folder / name
        if name.endswith(".json") and isinstance(content, (dict, list)):
            target.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
        elif name.endswith(".txt") and isinstance(content, list):
            target.write_text("\n".join(content))
        elif name.endswith(".jinja") and isinstance(content, str):
            target.write_text(content)
        else:
            continue
        written.append(name)
    return written
