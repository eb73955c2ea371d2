"""Where a model comes from, and loading it as our :class:`~llamactl.model.Llama`.

``model.pretrained_model_name_or_path`` / ``--model`` / ``RUN_DIR|MODEL`` arguments accept:

* a name from ``llamactl models list`` (e.g. ``smollm2-135m``) once imported;
* a local Hugging Face folder (``config.json`` + safetensors / ``pytorch_model.bin``);
* a Hugging Face hub id (``org/name`` or ``org/name@revision``), downloaded with
  ``huggingface_hub.snapshot_download`` into the normal HF cache (config, weights, tokenizer files
  only). The token comes from the environment (``HF_TOKEN``...) and is never logged; with
  ``HF_HUB_OFFLINE=1`` only the cache is used, and a model that is not cached is a clear error;
* a ``.gguf`` file, dequantised once into a cached HF folder (see :mod:`llamactl.interop.gguf`);
* a PEFT adapter folder (``adapter_config.json``), applied to the base it names;
* a llamactl run directory or a Composer ``.pt`` checkpoint (full fine-tune or LoRA).

:func:`load_model` returns our ``Llama`` in every case. A LoRA run or adapter comes back with the
adapter **merged** into the base weights (PEFT's ``merge_and_unload``): evaluation and generation
then run the plain fast model, with no PEFT wrapper in the forward or the KV-cached loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from llamactl.errors import ModelNotFoundError, WeightMappingError
from llamactl.secrets import hf_token, scrub

log = logging.getLogger(__name__)

SourceKind = Literal["hf_folder", "hub", "gguf", "peft_adapter", "run", "checkpoint"]

# What a model needs from a hub repo; original/*.pth, GGUFs, ONNX and the rest are not downloaded.
HUB_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
                "adapter_config.json"]
HUB_BIN_PATTERNS = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?(@[\w.\-/]+)?$")


def cache_root() -> Path:
    """llamactl's cache (``$LLAMACTL_CACHE`` or ``~/.cache/llamactl``)."""
    return Path(os.environ.get("LLAMACTL_CACHE", Path.home() / ".cache" / "llamactl"))


@dataclass
class ModelSource:
    """A resolved model source.

    Attributes:
        spec: what the user wrote.
        kind: which of the source kinds it is.
        path: a local path: the HF folder (``hf_folder``, ``hub``, ``gguf``: the dequantised folder),
            the adapter folder, the run directory, or the ``.pt`` file.
        hub_id: the repo id for hub sources.
        gguf_file: the original file for GGUF sources.
    """

    spec: str
    kind: SourceKind
    path: Path
    hub_id: str | None = None
    gguf_file: Path | None = None

    @property
    def base_name(self) -> str:
        """How an adapter's ``base_model_name_or_path`` should name this model: the hub id when it
        came from the hub (portable), else the absolute folder path."""
        return self.hub_id if self.hub_id else str(self.path.resolve())

    @property
    def tokenizer_dir(self) -> Path | None:
        """The folder holding this model's tokenizer, if it has one."""
        return self.path if self.kind != "checkpoint" and has_tokenizer(self.path) else None


def has_tokenizer(folder: Path) -> bool:
    return folder.is_dir() and ((folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file())


def _looks_like_path(spec: str) -> bool:
    return (spec.startswith((".", "/", "~")) or spec.endswith((".gguf", ".pt", ".safetensors", ".bin"))
            or spec.count("/") > 1 or os.sep != "/" and os.sep in spec)


def _classify_dir(path: Path, spec: str) -> SourceKind:
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        return "peft_adapter"
    if (path / "config.json").is_file():
        return "hf_folder"
    if (path / "config.yaml").is_file() or (path / "checkpoints").is_dir():
        return "run"
    if any(path.glob("*.pt")):
        return "checkpoint"
    raise ModelNotFoundError(f"{spec} is a folder but not a model: it has no config.json (HF folder), "
                             f"adapter_config.json (PEFT adapter) or config.yaml (llamactl run)")


def check_model_spec(spec: str | Path) -> None:
    """Fail fast, reading and fetching nothing, when ``spec`` can name no model: not an existing
    path, and not a hub id (or a name from ``llamactl models list``, which has the same shape)."""
    text = str(spec).strip()
    if not text:
        raise ModelNotFoundError("no model given; pass an HF folder, a hub id, a .gguf file or a run directory")
    if Path(text).expanduser().exists():
        return
    if _looks_like_path(text) or not _HUB_ID.match(text):
        raise ModelNotFoundError(f"model {text!r} not found: give a model folder, a hub id (org/name), "
                                 f"a .gguf file or a run directory")


def resolve_model_source(spec: str | Path, *, revision: str | None = None, download: bool = True) -> ModelSource:
    """Resolve a model argument to a local :class:`ModelSource` (downloading or dequantising if needed).

    Args:
        spec: a local HF folder, a hub id (``org/name[@revision]``), a ``.gguf`` file, a PEFT
            adapter folder, a run directory, or a Composer ``.pt`` file.
        revision: hub revision (branch, tag or commit), overriding an ``@revision`` in ``spec``.
        download: for hub ids, fetch missing files (False: the local HF cache only).

    Raises:
        ModelNotFoundError: nothing usable at ``spec`` (the message says what was expected).
    """
    check_model_spec(spec)
    text = str(spec).strip()
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix == ".gguf":
            return ModelSource(text, "gguf", gguf_hf_folder(path), gguf_file=path)
        if path.suffix in (".pt", ".pth") or path.name.endswith(".pt.tar"):
            return ModelSource(text, "checkpoint", path)
        raise ModelNotFoundError(f"{text} is a file llamactl cannot load; use a .gguf file, a Composer .pt "
                                 f"checkpoint or a Hugging Face model folder")
    if path.is_dir():
        return ModelSource(text, _classify_dir(path, text), path)
    from llamactl.services.models import KNOWN, default_dir

    if text.lower() in KNOWN:  # a name from `llamactl models list`
        folder = default_dir(text)
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(f"{text} is not imported yet; run `llamactl models import {text.lower()}`")
        return ModelSource(text, "hf_folder", folder)
    repo_id, _, rev = text.partition("@")
    return ModelSource(text, "hub", hub_download(repo_id, revision=revision or rev or None, download=download),
                       hub_id=repo_id)


def hub_download(repo_id: str, *, revision: str | None = None, download: bool = True) -> Path:
    """Snapshot the config, weight and tokenizer files of ``repo_id`` into the HF cache; the folder.

    Honours ``HF_HUB_OFFLINE`` (cache only). The token is read from the environment and never
    appears in messages or logs.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    from huggingface_hub import constants

    offline = bool(constants.HF_HUB_OFFLINE) or not download
    token = hf_token()
    log.info("resolving %s from the Hugging Face hub%s", repo_id, " (offline: cache only)" if offline else "")
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS, token=token,
                                        local_files_only=offline))
        if not any(folder.glob("*.safetensors")) and (folder / "config.json").is_file() \
                and not (folder / "adapter_config.json").is_file():
            folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_BIN_PATTERNS,
                                            token=token, local_files_only=offline))
    except GatedRepoError as e:
        raise ModelNotFoundError(f"{repo_id} is gated on the Hugging Face hub; accept its licence on the model "
                                 f"page and set HF_TOKEN to a token with access") from e
    except RepositoryNotFoundError as e:
        hint = "check the name" if token else "check the name, or set HF_TOKEN if it is private"
        raise ModelNotFoundError(f"{repo_id} was not found on the Hugging Face hub; {hint}") from e
    except RevisionNotFoundError as e:
        raise ModelNotFoundError(f"revision {revision!r} of {repo_id} does not exist on the hub") from e
    except LocalEntryNotFoundError as e:
        if offline:
            why = "HF_HUB_OFFLINE=1 forbids downloading" if constants.HF_HUB_OFFLINE else "downloading is off"
            raise ModelNotFoundError(f"{repo_id} is not in the local Hugging Face cache and {why}; unset "
                                     f"HF_HUB_OFFLINE or point to a local model folder") from e
        raise ModelNotFoundError(f"could not download {repo_id}: the Hugging Face hub is unreachable; check the "
                                 f"network or set HF_HUB_OFFLINE=1 to use the cache") from e
    except Exception as e:  # noqa: BLE001 - connection errors, bad repo ids, incomplete snapshots
        raise ModelNotFoundError(f"could not get {repo_id} from the Hugging Face hub: "
                                 f"{scrub(str(e)).splitlines()[0][:160]}") from e
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise ModelNotFoundError(f"hub repo {repo_id} has no config.json; it is not a transformers model")
    return folder


def gguf_hf_folder(gguf_file: Path) -> Path:
    """The dequantised HF folder for a GGUF file, converted once and cached by path, size and mtime."""
    from llamactl.interop.gguf import gguf_to_hf_folder

    st = gguf_file.stat()
    key = hashlib.sha1(f"{gguf_file.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = cache_root() / "gguf-hf" / f"{gguf_file.stem}-{key}"
    if not (folder / "config.json").is_file():
        log.info("dequantising %s into %s", gguf_file, folder)
        if folder.exists():
            shutil.rmtree(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        gguf_to_hf_folder(gguf_file, folder)
    return folder


# --------------------------------------------------------------------------------------- runs
@dataclass
class RunArtifacts:
    """Everything a run directory or Composer checkpoint holds that export needs.

    Attributes:
        checkpoint: the parsed checkpoint.
        run_dir: the run directory, when the checkpoint lives in one.
        run_config: the run's resolved ``config.yaml`` as a dict ({} without one).
        base: the pretrained model the run started from (required for LoRA), if any.
        lora: the LoRA config dict (``adapter_config.json`` shape), for LoRA runs.
    """

    checkpoint: Any
    run_dir: Path | None
    run_config: dict[str, Any] = field(default_factory=dict)
    base: ModelSource | None = None
    lora: dict[str, Any] | None = None

    @property
    def is_lora(self) -> bool:
        return bool(self.checkpoint.is_lora)


def _run_dir_of(path: Path) -> Path | None:
    for cand in (path, path.parent, path.parent.parent):
        if (cand / "config.yaml").is_file():
            return cand
    return None


def read_run_config(run_dir: Path | None) -> dict[str, Any]:
    if run_dir is None:
        return {}
    import yaml

    try:
        data = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except yaml.YAMLError as e:
        raise WeightMappingError(f"{run_dir / 'config.yaml'} is not valid YAML ({e}); restore the run's config") from e
    return data if isinstance(data, dict) else {}


def _lora_from_run_config(cfg: dict[str, Any]) -> dict[str, Any] | None:
    model = cfg.get("model") or {}
    return (model.get("peft_config") if isinstance(model, dict) else None) or cfg.get("peft_config")


def open_run(spec: str | Path, *, base: str | Path | None = None) -> RunArtifacts:
    """Read a run directory or Composer checkpoint and resolve the base model it was trained from.

    Args:
        spec: a run directory, its ``checkpoints/`` folder, or a ``.pt`` file.
        base: use this base model instead of the run's ``model.pretrained_model_name_or_path``.

    Raises:
        ModelNotFoundError: no checkpoint, or (for LoRA) the base model cannot be found.
    """
    from llamactl.interop.composer_ckpt import read_composer_checkpoint

    path = Path(spec).expanduser()
    ckpt = read_composer_checkpoint(path)
    run_dir = _run_dir_of(path)
    cfg = read_run_config(run_dir)
    base_spec = base if base is not None else ((cfg.get("model") or {}).get("pretrained_model_name_or_path"))
    lora = (ckpt.peft_config or _lora_from_run_config(cfg)) if ckpt.is_lora else None
    base_src = None
    if base_spec:
        try:
            base_src = resolve_model_source(base_spec)
        except ModelNotFoundError as e:
            what = "--base" if base is not None else f"the run's base model ({base_spec})"
            raise ModelNotFoundError(f"{what} was not found ({e}); pass --base with the model the run "
                                     f"started from") from e
        if base_src.kind not in ("hf_folder", "hub", "gguf"):
            raise ModelNotFoundError(f"base model {base_spec} is a {base_src.kind.replace('_', ' ')}, not a "
                                     f"pretrained model; pass --base with an HF folder, hub id or .gguf file")
    if ckpt.is_lora:
        if base_src is None:
            raise ModelNotFoundError(f"{ckpt.path} is a LoRA checkpoint but no base model is known (no run "
                                     f"config.yaml with model.pretrained_model_name_or_path); pass --base")
        if not lora:
            raise WeightMappingError(f"{ckpt.path} is a LoRA checkpoint without its LoRA config (not in the "
                                     f"checkpoint nor in the run's config.yaml); the adapter cannot be rebuilt")
    return RunArtifacts(checkpoint=ckpt, run_dir=run_dir, run_config=cfg, base=base_src, lora=lora)


def run_model_config(art: RunArtifacts):
    """The architecture of a full-training run: the checkpoint's HF config, else the run config."""
    from llamactl.interop.checkpoint import read_hf_config
    from llamactl.interop.hf import config_from_hf_dict
    from llamactl.model.config import ModelConfigError

    if art.checkpoint.hf_config:
        try:
            return config_from_hf_dict(art.checkpoint.hf_config)
        except ModelConfigError as e:
            raise WeightMappingError(f"{art.checkpoint.path}: stored model config is invalid: {e}") from e
    if art.base is not None:
        return read_hf_config(art.base.path)
    model = art.run_config.get("model") or {}
    if model.get("preset"):
        from llamactl.model.presets import preset

        return preset(model["preset"], **(model.get("config_overrides") or {}))
    raise WeightMappingError(f"{art.checkpoint.path} does not say which architecture it holds (no HF config in "
                             f"the checkpoint, no base model or preset in the run config)")


def run_tokenizer_dir(art: RunArtifacts) -> Path | None:
    """Where the run's tokenizer lives: the run config's ``tokenizer.name`` (local folder or hub id),
    then tokenizer files stored in the checkpoint, then the base model's folder."""
    name = (art.run_config.get("tokenizer") or {}).get("name")
    if name == "embedded":
        from llamactl.data.embedded import embedded_tokenizer_dir

        return embedded_tokenizer_dir()
    if name:
        p = Path(str(name)).expanduser()
        if has_tokenizer(p):
            return p
        if not _looks_like_path(str(name)) and _HUB_ID.match(str(name)):
            try:
                src = resolve_model_source(str(name))
                if has_tokenizer(src.path):
                    return src.path
            except ModelNotFoundError as e:
                log.warning("tokenizer %s of the run is not available: %s", name, e)
    if art.checkpoint.tokenizer_files:
        from llamactl.interop.composer_ckpt import write_tokenizer_files

        st = art.checkpoint.path.stat()
        key = hashlib.sha1(f"{art.checkpoint.path.resolve()}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
        folder = cache_root() / "run-tokenizers" / key
        if not has_tokenizer(folder):
            write_tokenizer_files(art.checkpoint.tokenizer_files, folder)
        if has_tokenizer(folder):
            return folder
    if art.base is not None and art.base.tokenizer_dir is not None:
        return art.base.tokenizer_dir
    return None


# --------------------------------------------------------------------------------------- loading
def model_config(spec: str | Path, *, base: str | Path | None = None, source=None):
    """The architecture (our ``LlamaConfig``) of any source, without reading its weights:
    ``config.json`` of folders, the base's config for adapters and LoRA runs, the stored config
    of full-training checkpoints. ``source``: ``spec`` already resolved by the caller."""
    import json as _json

    from llamactl.interop.checkpoint import read_hf_config

    src = source if source is not None else resolve_model_source(spec)
    if src.kind in ("hf_folder", "hub", "gguf"):
        return read_hf_config(src.path)
    if src.kind == "peft_adapter":
        cfg = _json.loads((src.path / "adapter_config.json").read_text())
        base_spec = base or cfg.get("base_model_name_or_path")
        if not base_spec:
            raise ModelNotFoundError(f"{src.path}/adapter_config.json names no base_model_name_or_path; pass --base")
        return read_hf_config(resolve_model_source(base_spec).path)
    art = open_run(src.path, base=base)
    if art.is_lora:
        return read_hf_config(art.base.path)
    return run_model_config(art)


@dataclass
class LoadedModel:
    """What :func:`load_model` returns.

    Attributes:
        model: our ``Llama`` (LoRA already merged in for LoRA runs and adapters), in eval mode.
        tokenizer_dir: the folder of the model's tokenizer, or None if none is known.
        source: the resolved source.
        lora_merged: whether a LoRA adapter was merged into ``model``.
    """

    model: Any
    tokenizer_dir: Path | None
    source: ModelSource
    lora_merged: bool = False


def load_model(spec: str | Path, *, dtype: str | torch.dtype | None = torch.float32,
               device: str | torch.device = "cpu", base: str | Path | None = None) -> LoadedModel:
    """Load any model source as our ``Llama``.

    Args:
        spec: see :func:`resolve_model_source`; also a run directory or Composer ``.pt``.
        dtype: weight dtype (``fp32``/``bf16``/``fp16`` or a torch dtype).
        device: where the model goes.
        base: for LoRA runs and adapters, the base model to apply them to (default: the one they name).
    """
    from llamactl.interop.checkpoint import load_hf_folder, parse_dtype

    dt = parse_dtype(dtype)
    src = resolve_model_source(spec)
    if src.kind in ("hf_folder", "hub", "gguf"):
        model = load_hf_folder(src.path, dtype=dt, device=device).eval()
        return LoadedModel(model, src.tokenizer_dir, src)
    if src.kind == "peft_adapter":
        from llamactl.interop.peft_export import load_peft_adapter_folder

        base_src, peft_model = load_peft_adapter_folder(src.path, base=base, dtype=dt, device=device)
        model = peft_model.merge_and_unload().eval()
        tok = src.tokenizer_dir or base_src.tokenizer_dir
        return LoadedModel(model, tok, src, lora_merged=True)
    art = open_run(src.path, base=base)
    model = build_run_model(art, dtype=dt, device=device)
    lora = art.is_lora
    if lora:
        model = model.merge_and_unload()
    return LoadedModel(model.eval(), run_tokenizer_dir(art), src, lora_merged=lora)


def build_run_model(art: RunArtifacts, *, dtype: str | torch.dtype | None, device: str | torch.device = "cpu",
                    meta_base: bool = False):
    """The trained model of a run: our ``Llama`` (full), or a PEFT-wrapped ``Llama`` with the
    adapter loaded (LoRA). Weights are loaded strictly: every expected weight present, no extra.

    With ``meta_base`` a LoRA run's base is built on the meta device from its config (shapes
    only): enough to export the adapter, not to run the model.
    """
    from llamactl.interop.checkpoint import load_hf_folder, load_state_into, parse_dtype, read_hf_config
    from llamactl.model.llama import Llama

    dtype = parse_dtype(dtype)
    ckpt = art.checkpoint
    if ckpt.is_lora:
        from llamactl.interop.peft_export import load_lora_weights, wrap_lora

        assert art.base is not None and art.lora is not None
        if meta_base:
            with torch.device("meta"):
                base_model = Llama(read_hf_config(art.base.path))
        else:
            base_model = load_hf_folder(art.base.path, dtype=dtype, device=device)
        check_base_matches(base_model.config, ckpt.hf_config, art.base.spec)
        peft_model = wrap_lora(base_model, art.lora)
        load_lora_weights(peft_model, ckpt.weights, origin=str(ckpt.path), base_spec=art.base.spec)
        return peft_model
    config = run_model_config(art)
    with torch.device("meta"):
        model = Llama(config)
    weights = dict(ckpt.weights)
    if config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)  # the tied head is the embedding, saved twice by state_dict
    expected = set(model.state_dict()) - ({"lm_head.weight"} if config.tie_word_embeddings else set())
    missing, extra = sorted(expected - weights.keys()), sorted(weights.keys() - expected)
    if missing or extra:
        what = f"lacks {missing[0]!r}" if missing else f"has unexpected weight {extra[0]!r}"
        raise WeightMappingError(f"{ckpt.path} {what} for a {config.num_hidden_layers}-layer model "
                                 f"({len(missing)} missing, {len(extra)} unexpected); is it from another run?")
    load_state_into(model, weights, dtype=dtype)
    return model.to(device)


def check_base_matches(config, stored_hf_config: dict[str, Any] | None, base_spec: str) -> None:
    """Raise if the architecture a checkpoint was trained on differs from ``config`` (the base's)."""
    if not stored_hf_config:
        return
    from llamactl.interop.hf import config_from_hf_dict

    try:
        stored = config_from_hf_dict(stored_hf_config)
    except Exception:  # noqa: BLE001 - an unreadable stored config cannot be compared; shapes are still checked
        return
    for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim"):
        a, b = getattr(stored, f), getattr(config, f)
        if a != b:
            raise WeightMappingError(f"the checkpoint was trained on a model with {f}={a}, but base {base_spec} "
                                     f"has {f}={b}; pass --base with the model the run started from")
