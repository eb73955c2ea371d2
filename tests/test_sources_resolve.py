"""Model sources: local folders, hub ids (download, token, offline), GGUF files, runs; and the
errors a user sees when a source is wrong."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from convert_support import tiny_pretrained
from llamactl.errors import ModelNotFoundError
from llamactl.interop.sources import HUB_PATTERNS, load_model, resolve_model_source

TOKEN = "hf_TESTtokenNEVERshown123"


def test_local_folder(tmp_path, shared_data):
    folder = tiny_pretrained(tmp_path / "m", tokenizer_from=shared_data / "tokenizers" / "smollm2")
    src = resolve_model_source(str(folder))
    assert src.kind == "hf_folder" and src.path == folder and src.tokenizer_dir == folder
    assert src.base_name == str(folder.resolve())
    loaded = load_model(folder, dtype="bf16")
    assert loaded.model.embed_tokens.weight.dtype == torch.bfloat16 and not loaded.model.training


@pytest.mark.parametrize("spec,text", [("./no/such/model", "not found"), ("/abs/missing.gguf", "not found"),
                                       ("not a hub id!", "not found"), ("", "no model given")])
def test_missing_sources(spec, text):
    with pytest.raises(ModelNotFoundError, match=text):
        resolve_model_source(spec)


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ModelNotFoundError, match="not a model"):
        resolve_model_source(str(tmp_path))
    (tmp_path / "w.bin").write_text("x")
    with pytest.raises(ModelNotFoundError, match="cannot load"):
        resolve_model_source(str(tmp_path / "w.bin"))


def test_hub_id_downloads_with_token_and_patterns(tmp_path, monkeypatch, caplog):
    import huggingface_hub

    from huggingface_hub import constants

    # `make test` exports HF_HUB_OFFLINE=1, which huggingface_hub reads once at import; this test is
    # about the online path.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    folder = tiny_pretrained(tmp_path / "remote")
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        dest = tmp_path / "cache" / repo_id.replace("/", "--")
        if not dest.exists():
            shutil.copytree(folder, dest)
        return str(dest)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    src = resolve_model_source("someorg/tiny-llama@v1.0")
    assert src.kind == "hub" and src.hub_id == "someorg/tiny-llama" and src.base_name == "someorg/tiny-llama"
    repo, kw = calls[0]
    assert repo == "someorg/tiny-llama" and kw["revision"] == "v1.0" and kw["token"] == TOKEN
    assert kw["allow_patterns"] == HUB_PATTERNS and kw["local_files_only"] is False
    assert "*.safetensors" in kw["allow_patterns"] and not any(p.endswith(".pth") for p in kw["allow_patterns"])
    assert TOKEN not in caplog.text
    assert load_model("someorg/tiny-llama").model.config.num_hidden_layers == 2


def _fake_hub_cache(cache, repo_id, folder):
    """The on-disk layout huggingface_hub's cache uses (refs/main -> snapshots/<commit>/)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    shutil.copytree(folder, storage / "snapshots" / commit)
    return storage / "snapshots" / commit


def test_offline_mode_uses_the_cache_or_says_why_not(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model_source("meta-llama/Llama-3.2-1B")
    msg = str(info.value)
    assert "not in the local Hugging Face cache" in msg and "HF_HUB_OFFLINE" in msg and TOKEN not in msg
    snap = _fake_hub_cache(tmp_path / "hub", "someorg/cached", tiny_pretrained(tmp_path / "m"))
    src = resolve_model_source("someorg/cached")
    assert src.path == snap and src.kind == "hub"


def test_run_and_checkpoint_sources_are_recognised(tmp_path):
    run = tmp_path / "runs" / "x-20250101_000000"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    assert resolve_model_source(str(run)).kind == "run"
    pt = run / "checkpoints" / "ep0-ba1-rank0.pt"
    pt.write_bytes(b"")
    assert resolve_model_source(str(pt)).kind == "checkpoint"


def test_hub_errors_are_one_line(monkeypatch):
    import huggingface_hub

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    from huggingface_hub.errors import LocalEntryNotFoundError

    def unreachable(repo_id, **kwargs):
        raise LocalEntryNotFoundError("connection refused")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(ModelNotFoundError, match="unreachable") as info:
        resolve_model_source("org/model")
    assert "\n" not in str(info.value)


def test_model_config_of_every_kind(tmp_path):
    from convert_support import tiny_config, train_run
    from llamactl.interop.sources import model_config

    base = tiny_pretrained(tmp_path / "base", tiny_config(num_hidden_layers=3))
    assert model_config(base).num_hidden_layers == 3
    run, _ = train_run(tmp_path / "runs", base, lora={"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]},
                       steps=1)
    assert model_config(run).num_hidden_layers == 3
    scratch, _ = train_run(tmp_path / "runs", None, config=tiny_config(num_hidden_layers=1), steps=1, name="s")
    assert model_config(scratch).num_hidden_layers == 1


def test_known_model_name(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelNotFoundError, match="llamactl models import smollm2-135m"):
        resolve_model_source("smollm2-135m")
    tiny_pretrained(tmp_path / "cache" / "smollm2" / "hf")
    src = resolve_model_source("smollm2-135m")
    assert src.kind == "hf_folder" and src.path == tmp_path / "cache" / "smollm2" / "hf"
