"""LoRA adapters: our PEFT-wrapped ``Llama`` ⇄ a stock PEFT adapter folder, and merging.

Our model has HF's module names without the backbone's ``model.`` prefix, so our PEFT state dict
keys and a stock adapter's differ only by that prefix (and PEFT's adapter name):

    ours (PeftModel.state_dict):   base_model.model.layers.0.self_attn.q_proj.lora_A.default.weight
    saved form (ours):             base_model.model.layers.0.self_attn.q_proj.lora_A.weight
    stock HF adapter file:         base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight

PEFT itself decides what an adapter file holds (``get_peft_model_state_dict``: LoRA A/B, DoRA
magnitudes, biases per ``bias``); we only rename the module path with the same table that maps
the base weights (:data:`llamactl.interop.hf.WEIGHT_TABLE`). Every export is then checked against
the key set and shapes that stock PEFT produces for a stock ``transformers.LlamaForCausalLM`` with
the same LoRA config (built on the meta device), so a mismatch can never be written silently —
the seed's adapter came out empty because nobody checked.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from llamactl.errors import ModelNotFoundError, WeightMappingError
from llamactl.interop.hf import WEIGHT_TABLE

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
# LoraConfig fields that describe where/what an adapter file is, not the adapter itself.
_NOT_ARCH = ("base_model_name_or_path", "revision", "inference_mode", "auto_mapping", "peft_version",
             "task_type", "peft_type")


def _module_prefixes() -> dict[str, str]:
    """Our top-level module name -> the HF prefix in front of it ('layers' -> 'model.', 'lm_head' -> '')."""
    out: dict[str, str] = {}
    for hf, ours in WEIGHT_TABLE.items():
        if ours is None:
            continue
        assert hf.endswith(ours), (hf, ours)
        out[ours.split(".")[0]] = hf[: len(hf) - len(ours)]
    return out


_PREFIXES = _module_prefixes()


def ours_to_hf_adapter_key(key: str) -> str:
    """``base_model.model.layers.0...`` -> ``base_model.model.model.layers.0...``."""
    if not key.startswith(_PEFT_PREFIX):
        raise WeightMappingError(f"adapter key {key!r} is not a PEFT model key (no {_PEFT_PREFIX!r} prefix)")
    rest = key[len(_PEFT_PREFIX):]
    first = rest.split(".")[0]
    if first not in _PREFIXES:
        raise WeightMappingError(f"adapter key {key!r} is on module {first!r}, which has no Hugging Face name")
    return _PEFT_PREFIX + _PREFIXES[first] + rest


def hf_to_ours_adapter_key(key: str) -> str:
    """The inverse of :func:`ours_to_hf_adapter_key`."""
    if not key.startswith(_PEFT_PREFIX):
        raise WeightMappingError(f"adapter key {key!r} is not a PEFT adapter key (no {_PEFT_PREFIX!r} prefix)")
    rest = key[len(_PEFT_PREFIX):]
    for first, prefix in _PREFIXES.items():
        if rest.startswith(prefix + first + "."):
            return _PEFT_PREFIX + rest[len(prefix):]
    raise WeightMappingError(f"adapter key {key!r} is not on a Llama module llamactl maps")


def lora_config(data: dict[str, Any], *, task_type: str | None = None, **extra: Any):
    """A ``peft.LoraConfig`` from an ``adapter_config.json`` dict or an LLM Foundry ``peft_config``.

    Keys LoraConfig does not know are dropped (a newer PEFT's fields), as are the file-level ones.
    """
    from peft import LoraConfig

    peft_type = str(data.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise WeightMappingError(f"adapter type {peft_type!r} is not supported; llamactl handles LoRA adapters")
    known = {f.name for f in dataclasses.fields(LoraConfig)}
    kwargs = {k: v for k, v in data.items() if k in known and k not in _NOT_ARCH}
    if isinstance(kwargs.get("target_modules"), list):
        kwargs["target_modules"] = sorted(kwargs["target_modules"])
    kwargs.update(extra)
    try:
        return LoraConfig(task_type=task_type, **kwargs)
    except (TypeError, ValueError) as e:
        raise WeightMappingError(f"LoRA config is invalid: {e}") from e


def wrap_lora(model, lora: dict[str, Any]):
    """Wrap our ``Llama`` in a PEFT ``PeftModel`` (adapter "default", no task type: our forward is
    not an HF forward). LoRA B starts at zero; load trained weights with :func:`load_lora_weights`."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(lora)).eval()


def _adapter_saved_form(peft_model) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(peft_model, save_embedding_layers=False)


def saved_to_full_keys(peft_model) -> dict[str, str]:
    """Saved-form adapter key -> our ``PeftModel.state_dict()`` key, as PEFT itself renames them.

    PEFT's own ``get_peft_model_state_dict`` is run on a state dict whose values are indices, so
    every rule it applies (adapter name, DoRA magnitudes, biases) is PEFT's, not a copy of it.
    """
    from peft import get_peft_model_state_dict

    full = list(peft_model.state_dict())
    index = {k: torch.tensor([i]) for i, k in enumerate(full)}
    saved = get_peft_model_state_dict(peft_model, state_dict=index, save_embedding_layers=False)
    return {k: full[int(v)] for k, v in saved.items()}


def _check_against(found: dict[str, torch.Tensor], wanted: dict[str, Any], *, origin: str, base_spec: str,
                   shapes: bool = True) -> None:
    """Same keys (and shapes), or an error that says which and why."""
    extra = sorted(found.keys() - wanted.keys())
    missing = sorted(wanted.keys() - found.keys())
    if extra:
        layer = next((k for k in extra if ".layers." in k), extra[0])
        raise WeightMappingError(f"{origin} has adapter weight {layer!r}, which base {base_spec} has no module for; "
                                 f"the adapter belongs to a different base model (pass --base with the right one)")
    if missing:
        raise WeightMappingError(f"{origin} lacks adapter weight {missing[0]!r} ({len(missing)} missing); "
                                 f"it does not match its LoRA config")
    for k, t in found.items():
        if shapes and tuple(t.shape) != tuple(wanted[k].shape):
            raise WeightMappingError(f"{origin}: adapter weight {k!r} has shape {tuple(t.shape)} but base "
                                     f"{base_spec} needs {tuple(wanted[k].shape)}; the adapter belongs to a "
                                     f"different base model (pass --base with the right one)")


def load_lora_weights(peft_model, weights: dict[str, torch.Tensor], *, origin: str, base_spec: str) -> None:
    """Load adapter tensors named as in our ``PeftModel.state_dict()`` strictly: exactly the
    tensors PEFT saves for this LoRA config (A/B, DoRA magnitudes, biases per ``bias``), with the
    model's shapes. On a meta-device base the tensors are adopted as they are."""
    own = peft_model.state_dict()
    wanted = {k: own[k] for k in saved_to_full_keys(peft_model).values()}
    missing = wanted.keys() - weights.keys()
    bias_mode = peft_model.peft_config["default"].bias
    if missing and bias_mode == "lora_only" and all(k.endswith("bias") for k in missing):
        raise WeightMappingError(f"{origin} lacks the biases trained with LoRA bias='lora_only' (Composer's "
                                 f"PEFT-only checkpoints do not save them), so the adapter cannot be rebuilt; "
                                 f"train with bias: all or bias: none")
    _check_against(weights, wanted, origin=origin, base_spec=base_spec)
    if next(iter(own.values())).device.type == "meta":
        result = peft_model.load_state_dict(dict(weights), strict=False, assign=True)
    else:
        dev = next(iter(own.values())).device
        result = peft_model.load_state_dict({k: v.to(dev) for k, v in weights.items()}, strict=False)
    if result.unexpected_keys:  # pragma: no cover - excluded by the check above
        raise WeightMappingError(f"{origin}: unexpected adapter weight {result.unexpected_keys[0]!r}")


def hf_adapter_state(peft_model, *, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The adapter as stock PEFT saves it for ``transformers.LlamaForCausalLM`` (HF names)."""
    out = {}
    for k, v in _adapter_saved_form(peft_model).items():
        v = v.detach().to("cpu")
        out[ours_to_hf_adapter_key(k)] = (v.to(dtype) if dtype is not None and v.is_floating_point() else v
                                          ).contiguous()
    return out


def stock_adapter_shapes(config, lora: dict[str, Any]) -> dict[str, torch.Size]:
    """Keys and shapes stock PEFT saves for a stock ``LlamaForCausalLM`` of ``config`` with this LoRA
    config — built on the meta device, so no memory or time is spent on weights."""
    import warnings

    from peft import get_peft_model
    from transformers import LlamaForCausalLM

    from llamactl.interop.hf import to_transformers_config

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecation notes inside PEFT
        hf = LlamaForCausalLM(to_transformers_config(config))
        pm = get_peft_model(hf, lora_config(lora, task_type="CAUSAL_LM"))
    return {k: v.shape for k, v in _adapter_saved_form(pm).items()}


def lora_b_nonzero(state: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(number of lora_B tensors with a non-zero entry, number of lora_B tensors)."""
    bs = [v for k, v in state.items() if "lora_B" in k or "lora_embedding_B" in k]
    return sum(bool(torch.count_nonzero(v)) for v in bs), len(bs)


def save_adapter_folder(peft_model, folder: str | Path, *, lora: dict[str, Any], base_name: str,
                        dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` for stock PEFT.

    ``PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_name), folder)`` then gives
    the same model as ``peft_model``. Returns the tensors written.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    inner = peft_model.get_base_model()
    state = hf_adapter_state(peft_model, dtype=dtype)
    wanted = stock_adapter_shapes(inner.config, lora)
    _check_against(state, {k: torch.empty(s, device="meta") for k, s in wanted.items()},
                   origin="the exported adapter", base_spec=base_name)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    cfg = lora_config(lora, task_type="CAUSAL_LM", base_model_name_or_path=base_name, inference_mode=True)
    cfg.save_pretrained(str(folder))
    return state


def read_adapter_folder(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(adapter_config dict, tensors under our saved-form names)`` of a stock PEFT adapter folder."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path = folder / ADAPTER_CONFIG
    if not cfg_path.is_file():
        raise ModelNotFoundError(f"no {ADAPTER_CONFIG} in {folder}; it is not a PEFT adapter folder")
    cfg = json.loads(cfg_path.read_text())
    if (folder / ADAPTER_WEIGHTS).is_file():
        raw = load_file(str(folder / ADAPTER_WEIGHTS))
    elif (folder / "adapter_model.bin").is_file():
        from llamactl.interop.composer_ckpt import torch_load_safe

        raw = torch_load_safe(folder / "adapter_model.bin")
    else:
        raise ModelNotFoundError(f"no {ADAPTER_WEIGHTS} in {folder}; the adapter folder is incomplete")
    return cfg, {hf_to_ours_adapter_key(k): v for k, v in raw.items()}


def load_peft_adapter_folder(folder: str | Path, *, base: str | Path | None = None,
                             dtype: str | torch.dtype | None = torch.float32, device: str | torch.device = "cpu",
                             meta_base: bool = False):
    """Our PEFT-wrapped ``Llama`` from a stock adapter folder and its base. Returns ``(base source, model)``.

    With ``meta_base`` the base is built from its config on the meta device (shapes only, no
    weights read): enough to re-export the adapter, not to run it.
    """
    from llamactl.interop.checkpoint import load_hf_folder
    from llamactl.interop.sources import resolve_model_source

    cfg, state = read_adapter_folder(folder)
    base_spec = str(base) if base is not None else cfg.get("base_model_name_or_path")
    if not base_spec:
        raise ModelNotFoundError(f"{folder}/{ADAPTER_CONFIG} names no base_model_name_or_path; pass --base")
    try:
        base_src = resolve_model_source(base_spec)
    except ModelNotFoundError as e:
        raise ModelNotFoundError(f"base model {base_spec} of adapter {folder} was not found ({e}); "
                                 f"pass --base with a local copy") from e
    if meta_base:
        from llamactl.interop.checkpoint import read_hf_config
        from llamactl.model.llama import Llama

        with torch.device("meta"):
            model = Llama(read_hf_config(base_src.path))
    else:
        model = load_hf_folder(base_src.path, dtype=dtype, device=device)
    peft_model = wrap_lora(model, cfg)
    names = saved_to_full_keys(peft_model)
    _check_against(state, {k: torch.empty(0) for k in names}, origin=str(folder), base_spec=base_spec,
                   shapes=False)
    load_lora_weights(peft_model, {names[k]: v for k, v in state.items()}, origin=str(folder), base_spec=base_spec)
    return base_src, peft_model.eval()
