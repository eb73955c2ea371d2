"""Hugging Face checkpoint folders: read straight into our model, write back for stock transformers.

Read: ``config.json`` plus ``model.safetensors``, a sharded ``model.safetensors.index.json``, or
(legacy) ``pytorch_model.bin[.index.json]`` loaded with ``weights_only=True`` so no pickle code
runs. The model is built on the meta device and the tensors are assigned in place: no second copy
and no random init that is thrown away.

Write: ``config.json``, ``generation_config.json``, ``model.safetensors`` (sharded with an index
past ``max_shard_bytes``), tied head left out as transformers does.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from llamactl.errors import ModelNotFoundError, WeightMappingError
from llamactl.interop.hf import (config_from_hf_dict, config_to_hf_dict, hf_state_dict_to_llamactl,
                                 llamactl_state_dict_to_hf)
from llamactl.model.config import LlamaConfig, ModelConfigError
from llamactl.model.llama import Llama

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """'bf16' / 'bfloat16' / torch.bfloat16 -> torch.bfloat16; None stays None."""
    if name is None or isinstance(name, torch.dtype):
        return name
    key = str(name).lower().replace("torch.", "")
    if key not in DTYPES:
        raise WeightMappingError(f"unknown dtype {name!r}; use one of fp32, bf16, fp16")
    return DTYPES[key]


def read_hf_config(folder: str | Path) -> LlamaConfig:
    """Our config from ``folder/config.json``."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ModelNotFoundError(f"no config.json in {folder}; point to a Hugging Face model folder")
    try:
        return config_from_hf_dict(json.loads(path.read_text()))
    except ModelConfigError as e:
        raise WeightMappingError(f"{path}: {e}") from e


def _weight_files(folder: Path) -> tuple[list[Path], str]:
    for index_name, kind in (("model.safetensors.index.json", "safetensors"), ("pytorch_model.bin.index.json", "bin")):
        index = folder / index_name
        if index.is_file():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [folder / n for n in names], kind
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"], "safetensors"
    if (folder / "pytorch_model.bin").is_file():
        return [folder / "pytorch_model.bin"], "bin"
    raise ModelNotFoundError(f"no model.safetensors or pytorch_model.bin in {folder}")


def read_hf_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF checkpoint folder, under their HF names (CPU)."""
    from safetensors.torch import load_file

    files, kind = _weight_files(Path(folder))
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise ModelNotFoundError(f"checkpoint shard {f} is missing")
        try:
            loaded = load_file(str(f)) if kind == "safetensors" else torch.load(
                f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # weights_only refused an object: arbitrary code would run
            raise WeightMappingError(
                f"{f} needs arbitrary unpickling to load, which llamactl refuses; convert it to "
                f"safetensors with a tool you trust") from e
        except Exception as e:  # truncated download, not a checkpoint at all, ...
            raise WeightMappingError(f"{f} could not be read ({type(e).__name__}); the file is corrupt or "
                                     f"incomplete, download it again") from e
        if not isinstance(loaded, dict):
            raise WeightMappingError(f"{f} holds a {type(loaded).__name__}, not a state dict of named tensors")
        state.update(loaded)
    return state


def load_state_into(model: Llama, state: dict[str, torch.Tensor], *, dtype: torch.dtype | None = None) -> None:
    """Assign a llamactl-named state dict to ``model`` (possibly on meta), strictly, checking shapes."""
    own = model.state_dict()
    for name, tensor in state.items():
        if name in own and tuple(own[name].shape) != tuple(tensor.shape):
            raise WeightMappingError(f"weight {name!r} has shape {tuple(tensor.shape)} but the config needs "
                                     f"{tuple(own[name].shape)}; the config does not describe these weights")
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    if model.config.tie_word_embeddings:
        state = {**state, "lm_head.weight": state["embed_tokens.weight"]}
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model.reset_rope()


def load_hf_folder(folder: str | Path, *, dtype: str | torch.dtype | None = torch.float32,
                   device: str | torch.device = "cpu") -> Llama:
    """Build our :class:`Llama` from a local HF checkpoint folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelNotFoundError(f"model folder {folder} does not exist")
    config = read_hf_config(folder)
    hf_state = read_hf_state_dict(folder)
    state = hf_state_dict_to_llamactl(hf_state, config)
    with torch.device("meta"):
        model = Llama(config)
    load_state_into(model, state, dtype=parse_dtype(dtype))
    return model.to(device)


def save_hf_folder(model: Llama, folder: str | Path, *, dtype: str | torch.dtype | None = None,
                   max_shard_bytes: int = 5 * 1024**3, generation_config: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as an HF folder that ``transformers.AutoModelForCausalLM`` loads."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config
    dt = parse_dtype(dtype)
    state = llamactl_state_dict_to_hf(model.state_dict(), config)
    state = {k: (v.detach().to(dt) if dt is not None else v.detach()).cpu().contiguous() for k, v in state.items()}
    torch_dtype = next(iter(state.values())).dtype
    hf_config = config_to_hf_dict(config)
    hf_config["torch_dtype"] = str(torch_dtype).replace("torch.", "")
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    gen = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}
    if config.pad_token_id is not None:
        gen["pad_token_id"] = config.pad_token_id
    gen.update(generation_config or {})
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(state):
        nbytes = state[name].numel() * state[name].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = state[name]
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(folder / "model.safetensors"), metadata=meta)
    else:
        weight_map = {}
        total = 0
        for i, shard in enumerate(shards, 1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(folder / fname), metadata=meta)
            for k, v in shard.items():
                weight_map[k] = fname
                total += v.numel() * v.element_size()
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    return folder
