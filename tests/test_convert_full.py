"""Full fine-tunes and from-scratch runs -> HF folders that stock transformers reloads with our
logits; checkpoints are read without unpickling code; every error is one clear sentence."""

from __future__ import annotations

import json
import os

import pytest
import torch

from convert_support import (composer_reference, ours_logits, service_run, stock_logits, tiny_config, tiny_pretrained,
                             train_run)
from llamactl.errors import ModelNotFoundError, UserInputError, WeightMappingError
from llamactl.services.convert import ConvertRequest, convert


def _stock(folder, dtype=torch.float32):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(folder), dtype=dtype).eval()


V = 4096  # the bundled tokenizer's vocabulary


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """A full fine-tune made by ``llamactl.services.train`` (bundled corpus and tokenizer) from a tiny
    pretrained folder; the reference is the checkpoint as Composer itself restores it."""
    root = tmp_path_factory.mktemp("full")
    base = tiny_pretrained(root / "base", tiny_config(vocab_size=V, hidden_size=32, intermediate_size=64,
                                                      num_attention_heads=4, tie_word_embeddings=False))
    (base / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2,
                                                             "temperature": 0.3, "do_sample": True}))
    run = service_run(root / "runs", base, tmp_path_factory.getbasetemp() / "embedded-data", steps=3)
    model = composer_reference(run / "checkpoints" / "latest-rank0.pt", base)
    return root, base, run, model


def test_full_finetune_exports_hf_folder_with_equal_logits(full_run):
    root, base, run, model = full_run
    res = convert(ConvertRequest(source=str(run), out=root / "hf", dtype="fp32"))
    assert res.to == "hf" and res.dtype == "fp32" and not res.merged
    files = set(res.files)
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= files
    gen = json.loads((root / "hf" / "generation_config.json").read_text())
    assert gen["temperature"] == 0.3  # the base's generation config carries over
    ids = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(0))
    ours = ours_logits(model, ids)
    assert (ours - stock_logits(_stock(root / "hf"), ids)).abs().max().item() <= 1e-5
    assert (ours - stock_logits(_stock(base), ids)).abs().max().item() > 1e-4  # training changed it
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(root / "hf"))("hello world").input_ids


def test_checkpoint_file_and_bf16_output(full_run):
    root, base, run, model = full_run
    pt = next((run / "checkpoints").glob("ep*-ba*-rank0.pt"))
    res = convert(ConvertRequest(source=str(pt), out=root / "hf-bf16", dtype="bf16"))
    from safetensors.torch import load_file

    assert {v.dtype for v in load_file(str(root / "hf-bf16" / "model.safetensors")).values()} == {torch.bfloat16}
    assert json.loads((root / "hf-bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert res.dtype == "bf16"
    ids = torch.randint(0, V, (1, 12), generator=torch.Generator().manual_seed(1))
    diff = (ours_logits(model, ids) - stock_logits(_stock(root / "hf-bf16", torch.bfloat16), ids)).abs().max()
    assert diff.item() < 0.1  # bf16 weights and compute: close, not equal


def test_load_model_of_a_full_run_is_the_trained_model(full_run):
    from llamactl.interop.sources import load_model

    root, base, run, model = full_run
    from llamactl.data.embedded import embedded_tokenizer_dir

    loaded = load_model(run)
    assert not loaded.lora_merged and loaded.tokenizer_dir == embedded_tokenizer_dir()  # the run's tokenizer
    ids = torch.randint(0, V, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, ours_logits(model, ids))


def test_from_scratch_run_uses_the_architecture_in_the_checkpoint(tmp_path):
    cfg = tiny_config(num_hidden_layers=3, tie_word_embeddings=False)
    run, model = train_run(tmp_path / "runs", None, config=cfg, steps=2)
    res = convert(ConvertRequest(source=str(run), out=tmp_path / "hf"))
    assert res.dtype == "fp32" and "no tokenizer" in " ".join(res.warnings)
    ids = torch.randint(0, 211, (1, 12), generator=torch.Generator().manual_seed(0))
    assert (ours_logits(model, ids) - stock_logits(_stock(tmp_path / "hf"), ids)).abs().max().item() <= 1e-5


def test_error_cases_are_one_clear_sentence(full_run, tmp_path):
    root, base, run, model = full_run
    empty_run = tmp_path / "empty-run"
    (empty_run / "checkpoints").mkdir(parents=True)
    (empty_run / "config.yaml").write_text("model: {}\n")
    existing = tmp_path / "existing"
    existing.mkdir()
    cases = [
        (ConvertRequest(source=str(empty_run), out=tmp_path / "o1"), ModelNotFoundError, "no Composer checkpoint"),
        (ConvertRequest(source=str(tmp_path / "nope.pt"), out=tmp_path / "o2"), ModelNotFoundError, "not found"),
        (ConvertRequest(source=str(run), out=tmp_path / "o3", dtype="fp8"), UserInputError, "unknown dtype 'fp8'"),
        (ConvertRequest(source=str(run), out=tmp_path / "o4.gguf", dtype="q3_k"), UserInputError,
         "unknown GGUF type"),
        (ConvertRequest(source=str(run), out=existing), UserInputError, "already exists"),
        (ConvertRequest(source=str(run), out=root), UserInputError, "overwrite the source"),
        (ConvertRequest(source=str(base), out=base), UserInputError, "overwrite the source"),
        (ConvertRequest(source=str(run), out=tmp_path / "o5", to="peft"), UserInputError, "not a LoRA run"),
    ]
    for req, exc, text in cases:
        with pytest.raises(exc) as info:
            convert(req)
        msg = str(info.value)
        assert text in msg and "\n" not in msg, msg
        assert not req.out.exists() or req.out in (root, base, existing)


def test_overwrite_replaces_only_after_success(full_run, tmp_path):
    root, base, run, model = full_run
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(UserInputError):
        convert(ConvertRequest(source=str(run), out=out, dtype="bogus", overwrite=True))
    assert (out / "keep.txt").read_text() == "old"  # a failed conversion leaves the old output alone
    convert(ConvertRequest(source=str(run), out=out, overwrite=True))
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/llamactl-pwned-by-checkpoint",))


def test_checkpoint_needing_arbitrary_unpickling_is_refused(tmp_path):
    from llamactl.interop.composer_ckpt import read_composer_checkpoint

    marker = "/tmp/llamactl-pwned-by-checkpoint"
    if os.path.exists(marker):
        os.remove(marker)
    bad = tmp_path / "ep0-ba1-rank0.pt"
    torch.save({"state": {"model": {"model.embed_tokens.weight": torch.zeros(2, 2)}, "x": _Evil()}}, bad)
    with pytest.raises(WeightMappingError, match="posix.system|os.system") as info:
        read_composer_checkpoint(bad)
    assert "arbitrary code" in str(info.value)
    assert not os.path.exists(marker)


def test_real_composer_checkpoint_loads_with_weights_only(full_run):
    """Composer 0.32.1 checkpoints hold timedelta, TorchVersion and numpy RNG state besides tensors:
    exactly those are allowlisted, and the file loads with weights_only=True."""
    from llamactl.interop.composer_ckpt import read_composer_checkpoint, torch_load_safe

    root, base, run, model = full_run
    raw = torch_load_safe(run / "checkpoints" / "latest-rank0.pt")
    assert "rng" in raw and "state" in raw
    ck = read_composer_checkpoint(run)
    assert not ck.is_lora and ck.batches == 3 and ck.hf_config["model_type"] == "llama"
    assert "layers.0.self_attn.q_proj.weight" in ck.weights
    assert "tokenizer.json" in ck.tokenizer_files  # Composer keeps the run's tokenizer in the checkpoint


def test_tokenizer_stored_in_the_checkpoint_is_used_when_the_configured_one_is_gone(full_run, tmp_path, monkeypatch):
    import shutil

    import yaml

    from llamactl.interop.sources import load_model

    root, base, run, model = full_run
    moved = tmp_path / "run"
    shutil.copytree(run, moved, symlinks=True)
    cfg = yaml.safe_load((moved / "config.yaml").read_text())
    cfg["tokenizer"]["name"] = str(tmp_path / "deleted-tokenizer")
    (moved / "config.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path / "cache"))
    tok_dir = load_model(moved).tokenizer_dir
    assert tok_dir is not None and str(tok_dir).startswith(str(tmp_path / "cache"))
    from transformers import AutoTokenizer

    from llamactl.data.embedded import embedded_tokenizer_dir

    text = "It is a truth universally acknowledged."
    assert AutoTokenizer.from_pretrained(str(tok_dir))(text).input_ids == \
        AutoTokenizer.from_pretrained(str(embedded_tokenizer_dir()))(text).input_ids
