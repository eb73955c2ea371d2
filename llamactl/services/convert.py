"""``llamactl convert``: runs, checkpoints, adapters, HF folders and GGUF files into each other.

=================================  =======================================================
source                              outputs
=================================  =======================================================
run dir / Composer ``.pt`` (full)   HF folder, GGUF
run dir / ``.pt`` (LoRA)            PEFT adapter folder (default), merged HF folder, GGUF
PEFT adapter folder                 PEFT adapter (re-based / re-typed), merged HF folder, GGUF
HF folder / hub id / ``.gguf``      HF folder (re-typed), GGUF
=================================  =======================================================

Outputs are built next to the target and moved into place only when complete, so a failed
conversion leaves nothing half-written and never touches an existing output unless
``overwrite`` is set. ``push_to_hub`` then uploads the result (private by default).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from llamactl.errors import LlamactlError, ModelNotFoundError, UserInputError

log = logging.getLogger(__name__)

Target = Literal["auto", "hf", "peft", "gguf"]
Progress = Callable[[str, int, int], None]  # (stage, done, total)
HF_DTYPES = ("fp32", "bf16", "fp16")


@dataclass
class ConvertRequest:
    """What to convert, and how.

    Attributes:
        source: run directory, Composer ``.pt``, PEFT adapter folder, HF folder, hub id or ``.gguf``.
        out: output folder (HF / PEFT) or ``.gguf`` file.
        to: ``hf``, ``peft``, ``gguf``; ``auto`` picks ``gguf`` for a ``.gguf`` path, ``peft`` for a
            LoRA source unless ``merge``, else ``hf``.
        merge: merge a LoRA adapter into its base (implied by ``to='hf'`` for LoRA sources).
        dtype: HF/PEFT: ``fp32``/``bf16``/``fp16`` (default: keep the source's); GGUF: ``f32``,
            ``f16`` (default), ``bf16``, ``q8_0``, ``q5_1``, ``q5_0``, ``q4_1``, ``q4_0``.
        base: base model for LoRA sources (default: the one the run / adapter names).
        tokenizer: tokenizer folder to ship (default: the source's).
        overwrite: replace an existing output.
        push_to_hub: repo id to upload the result to.
        private: create the hub repo private (default True).
    """

    source: str
    out: Path
    to: Target = "auto"
    merge: bool = False
    dtype: str | None = None
    base: str | None = None
    tokenizer: str | None = None
    overwrite: bool = False
    push_to_hub: str | None = None
    private: bool = True


@dataclass
class ConvertResult:
    source: str
    source_kind: str
    to: str
    out: Path
    dtype: str
    files: list[str]
    size_bytes: int
    base: str | None = None
    merged: bool = False
    lora_b_nonzero: tuple[int, int] | None = None  # (non-zero lora_B tensors, all lora_B tensors)
    hub_url: str | None = None
    warnings: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------ helpers
def _check_dtype(to: str, dtype: str | None) -> str | None:
    if dtype is None:
        return None
    if to == "gguf":
        from llamactl.interop.gguf import parse_gguf_type

        return parse_gguf_type(dtype)
    from llamactl.interop.checkpoint import parse_dtype

    try:
        parse_dtype(dtype)
    except LlamactlError:
        raise UserInputError(f"unknown dtype {dtype!r}; use one of {', '.join(HF_DTYPES)} "
                             f"(or a GGUF type with a .gguf output)") from None
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(dtype.lower(), dtype.lower())


def _check_out(out: Path, source_path: Path | None, overwrite: bool) -> None:
    if source_path is not None:
        src, dst = source_path.resolve(), out.resolve()
        if src == dst or dst in src.parents:
            raise UserInputError(f"output {out} would overwrite the source {source_path}; choose another path")
    if out.exists() and not overwrite:
        raise UserInputError(f"output {out} already exists; choose another path or pass --overwrite")


def _copy_tokenizer(tok_dir: Path | None, dest: Path) -> list[str]:
    from llamactl.interop.sources import TOKENIZER_FILES

    if tok_dir is None:
        return []
    copied = []
    for name in TOKENIZER_FILES:
        if (tok_dir / name).is_file():
            shutil.copy2(tok_dir / name, dest / name)
            copied.append(name)
    return copied


def _generation_config(folder: Path | None) -> dict[str, Any]:
    if folder is None or not (folder / "generation_config.json").is_file():
        return {}
    data = json.loads((folder / "generation_config.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_") and k != "transformers_version"}


def _stored_dtype(folder: Path) -> str:
    """The dtype an HF folder's weights are stored in (from config.json), as fp32/bf16/fp16."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return "fp32"
    name = str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32")
    return {"bfloat16": "bf16", "float16": "fp16"}.get(name, "fp32")


def _model_card(dest: Path, *, kind: str, base: str | None) -> None:
    lines = ["---"]
    if kind == "peft":
        lines.append("library_name: peft")
    else:
        lines.append("library_name: transformers")
    if base:
        lines.append(f"base_model: {base}")
    lines += ["tags:", "- llamactl", "- llama", "---", "",
              f"{'LoRA adapter' if kind == 'peft' else 'Llama model'} exported by llamactl convert."]
    (dest / "README.md").write_text("\n".join(lines) + "\n")


def _finish(tmp: Path, out: Path) -> None:
    """Move a complete output into place; an existing one is removed only after that succeeds."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def _size(path: Path) -> tuple[list[str], int]:
    if path.is_file():
        return [path.name], path.stat().st_size
    files = sorted(p.name for p in path.iterdir() if p.is_file())
    return files, sum((path / f).stat().st_size for f in files)


# ------------------------------------------------------------------------------------ service
def convert(req: ConvertRequest, progress: Progress | None = None) -> ConvertResult:
    """Convert ``req.source`` into ``req.out``; see the module docstring for what goes where.

    Raises:
        UserInputError: bad dtype, output exists, contradictory options.
        ModelNotFoundError: the source, its checkpoint or its base model is missing.
        WeightMappingError: weights that do not fit (e.g. an adapter for a different base).
    """
    from llamactl.interop.sources import open_run, resolve_model_source

    def step(stage: str, done: int = 0, total: int = 0) -> None:
        log.info("%s", stage)
        if progress is not None:
            progress(stage, done, total)

    out = Path(req.out).expanduser()
    to = req.to
    if req.merge and to == "peft":
        raise UserInputError("--merge makes a full model, not a PEFT adapter; drop --merge or use --to hf/gguf")
    guess = "gguf" if (to == "gguf" or (to == "auto" and out.suffix == ".gguf")) else "hf"
    dtype = _check_dtype(guess if to == "auto" else to, req.dtype)
    if to in ("hf", "peft") and out.suffix == ".gguf":
        raise UserInputError(f"--to {to} writes a folder, but {out} ends in .gguf; drop --to or rename the output")
    if req.push_to_hub:
        _check_push(req.push_to_hub)
    src_path = Path(req.source).expanduser()
    _check_out(out, src_path if src_path.exists() else None, req.overwrite)

    step(f"reading {req.source}")
    src = resolve_model_source(req.source)
    art = open_run(src.path, base=req.base) if src.kind in ("run", "checkpoint") else None
    adapter_cfg = None
    if src.kind == "peft_adapter":
        from llamactl.interop.peft_export import read_adapter_folder

        adapter_cfg = read_adapter_folder(src.path)[0]
    is_lora = (art is not None and art.is_lora) or src.kind == "peft_adapter"
    if to == "auto":
        to = "gguf" if out.suffix == ".gguf" else ("peft" if is_lora and not req.merge else "hf")
    if to == "peft" and not is_lora:
        raise UserInputError(f"{req.source} is not a LoRA run or adapter, so it has no adapter to export; "
                             f"use --to hf or --to gguf")
    if req.base and not is_lora and src.kind not in ("run", "checkpoint"):
        raise UserInputError("--base applies to LoRA runs and adapters only; drop it")
    tok_override = Path(req.tokenizer).expanduser() if req.tokenizer else None
    if tok_override is not None and not tok_override.is_dir():
        raise ModelNotFoundError(f"tokenizer folder {tok_override} does not exist")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    result = ConvertResult(source=req.source, source_kind=src.kind, to=to, out=out, dtype="", files=[],
                           size_bytes=0, merged=is_lora and to != "peft")
    try:
        if to == "peft":
            _to_peft(req, src, art, adapter_cfg, tmp, dtype or "fp32", tok_override, result, step)
        else:
            folder_tmp = tmp if to == "hf" else out.with_name(f".{out.name}.hf-{os.getpid()}")
            hf_folder = _to_hf(req, src, art, folder_tmp, dtype if to == "hf" else "fp32", tok_override,
                               result, step, reuse_source=to == "gguf")
            if to == "gguf":
                from llamactl.interop.gguf import hf_folder_to_gguf

                gtype = dtype or "f16"
                result.dtype = gtype
                tok_dir = tok_override or hf_folder
                step(f"writing GGUF ({gtype})")
                hf_folder_to_gguf(hf_folder, tmp, gguf_type=gtype, tokenizer_dir=tok_dir, name=out.stem,
                                  progress=lambda d, n: step(f"writing GGUF ({gtype})", d, n))
                if folder_tmp.exists():
                    shutil.rmtree(folder_tmp)
        _finish(tmp, out)
    except BaseException:
        for leftover in (tmp, out.with_name(f".{out.name}.hf-{os.getpid()}")):
            if leftover.exists():
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        raise
    result.files, result.size_bytes = _size(out)
    if req.push_to_hub:
        step(f"uploading to {req.push_to_hub}")
        result.hub_url = push_to_hub(out, req.push_to_hub, private=req.private)
    return result


def _to_peft(req, src, art, adapter_cfg, tmp: Path, dtype: str, tok_override, result: ConvertResult, step) -> None:
    from llamactl.interop.checkpoint import parse_dtype
    from llamactl.interop.peft_export import lora_b_nonzero, load_peft_adapter_folder, save_adapter_folder
    from llamactl.interop.sources import build_run_model, run_tokenizer_dir

    if art is not None:
        step("reading the adapter")
        peft_model = build_run_model(art, dtype=None, meta_base=True)
        lora, base_src, tok_dir = art.lora, art.base, run_tokenizer_dir(art)
    else:
        step("reading the adapter")
        base_src, peft_model = load_peft_adapter_folder(src.path, base=req.base, meta_base=True)
        lora, tok_dir = adapter_cfg, src.tokenizer_dir or base_src.tokenizer_dir
    step("writing PEFT adapter")
    state = save_adapter_folder(peft_model, tmp, lora=lora, base_name=base_src.base_name, dtype=parse_dtype(dtype))
    copied = _copy_tokenizer(tok_override or tok_dir, tmp)
    _model_card(tmp, kind="peft", base=base_src.base_name)
    result.dtype, result.base = dtype, base_src.base_name
    result.lora_b_nonzero = lora_b_nonzero(state)
    nz, n = result.lora_b_nonzero
    if nz == 0:
        result.warnings.append(f"all {n} lora_B matrices are zero: the adapter does nothing (was it trained?)")
    if not copied:
        result.warnings.append("no tokenizer found to ship with the adapter; pass --tokenizer to add one")


def _to_hf(req, src, art, folder: Path, dtype: str | None, tok_override, result: ConvertResult, step, *,
           reuse_source: bool) -> Path:
    """Write an HF folder for the source into ``folder`` (or, for GGUF output from an HF source,
    return the source folder itself). Returns the folder holding the model."""
    from llamactl.interop.checkpoint import load_hf_folder, save_hf_folder
    from llamactl.interop.peft_export import lora_b_nonzero, load_peft_adapter_folder
    from llamactl.interop.sources import build_run_model, run_tokenizer_dir

    if src.kind in ("hf_folder", "hub", "gguf"):
        if reuse_source and (tok_override or src.tokenizer_dir):
            return src.path
        step(f"loading {src.spec}")
        model = load_hf_folder(src.path, dtype=dtype)
        base_dir, tok_dir = src.path, src.tokenizer_dir
        out_dtype = dtype or _stored_dtype(src.path)
    elif src.kind == "peft_adapter":
        step("loading the adapter and its base (fp32 for the merge)")
        base_src, peft_model = load_peft_adapter_folder(src.path, base=req.base, dtype="fp32")
        result.lora_b_nonzero = lora_b_nonzero({k: v for k, v in peft_model.state_dict().items() if "lora_B" in k})
        model = peft_model.merge_and_unload()
        base_dir, tok_dir = base_src.path, src.tokenizer_dir or base_src.tokenizer_dir
        result.base = base_src.base_name
        out_dtype = dtype or _stored_dtype(base_src.path)
    else:
        lora = art.is_lora
        step(f"loading {'base and adapter (fp32 for the merge)' if lora else 'checkpoint'}")
        model = build_run_model(art, dtype="fp32" if lora else None)
        if lora:
            result.lora_b_nonzero = lora_b_nonzero({k: v for k, v in model.state_dict().items() if "lora_B" in k})
            model = model.merge_and_unload()
        base_dir = art.base.path if art.base is not None else None
        tok_dir = run_tokenizer_dir(art)
        result.base = art.base.base_name if art.base is not None else None
        out_dtype = dtype or (_stored_dtype(art.base.path) if lora else
                              {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(
                                  str(next(iter(art.checkpoint.weights.values())).dtype), "fp32"))
    step(f"writing HF folder ({out_dtype})")
    save_hf_folder(model, folder, dtype=out_dtype, generation_config=_generation_config(base_dir))
    copied = _copy_tokenizer(tok_override or tok_dir, folder)
    _model_card(folder, kind="hf", base=result.base)
    result.dtype = out_dtype
    if not copied:
        result.warnings.append("no tokenizer found to ship with the model; pass --tokenizer to add one")
    if result.lora_b_nonzero and result.lora_b_nonzero[0] == 0:
        result.warnings.append("all lora_B matrices are zero: the merged model equals its base (was it trained?)")
    return folder


# ------------------------------------------------------------------------------------ hub
def _check_push(repo: str) -> None:
    from huggingface_hub import constants

    from llamactl.secrets import hf_token

    if constants.HF_HUB_OFFLINE:
        raise UserInputError("--push-to-hub needs the network but HF_HUB_OFFLINE=1 is set; unset it to upload")
    if not hf_token():
        raise UserInputError("--push-to-hub needs a Hugging Face token; set HF_TOKEN to a token with write access")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise UserInputError(f"--push-to-hub {repo!r} is not a repo id; use the form user/name or org/name")


def push_to_hub(path: Path, repo: str, *, private: bool = True) -> str:
    """Create ``repo`` (private unless told otherwise; an existing repo is kept) and upload ``path``
    (a folder, or one file such as a GGUF). Returns the repo URL. The token never leaves the call."""
    from huggingface_hub import HfApi

    from llamactl.secrets import hf_token, scrub

    _check_push(repo)
    api = HfApi(token=hf_token())
    try:
        url = api.create_repo(repo_id=repo, repo_type="model", private=private, exist_ok=True)
        message = f"Upload {path.name} with llamactl convert"
        if path.is_dir():
            api.upload_folder(repo_id=repo, repo_type="model", folder_path=str(path), commit_message=message)
        else:
            api.upload_file(repo_id=repo, repo_type="model", path_or_fileobj=str(path), path_in_repo=path.name,
                            commit_message=message)
    except Exception as e:  # noqa: BLE001 - network/auth errors become one line, token scrubbed
        first = scrub(str(e)).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise LlamactlError(f"upload to {repo} failed: {first}; the converted files are kept at {path}") from None
    return str(url)
