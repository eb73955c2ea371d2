"""LoRA runs -> stock PEFT adapter folders and merged HF folders, proven by reloading in stock
transformers + PEFT and comparing logits with our trained model (fp32, CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from convert_support import (composer_reference, ours_logits, service_run, stock_logits, tiny_config, tiny_pretrained,
                             train_run)
from llamactl.errors import ModelNotFoundError, WeightMappingError
from llamactl.services.convert import ConvertRequest, convert

LORA = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def _stock_peft(base, adapter):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    return PeftModel.from_pretrained(hf, str(adapter)).eval()


def _stock(folder):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


V = 4096  # the bundled tokenizer's vocabulary


@pytest.fixture(scope="module")
def tiny_lora_run(tmp_path_factory):
    """A LoRA run made by ``llamactl.services.train`` from a tiny pretrained folder; the reference
    model is the checkpoint as Composer itself restores it into our adapter."""
    root = tmp_path_factory.mktemp("lora")
    base = tiny_pretrained(root / "base", tiny_config(vocab_size=V))
    run = service_run(root / "runs", base, tmp_path_factory.getbasetemp() / "embedded-data", lora=LORA, steps=4)
    model = composer_reference(run / "checkpoints" / "latest-rank0.pt", base, LORA)
    return root, base, run, model


def test_lora_run_exports_stock_peft_adapter(tiny_lora_run):
    root, base, run, model = tiny_lora_run
    res = convert(ConvertRequest(source=str(run), out=root / "adapter"))
    assert res.to == "peft" and res.dtype == "fp32"
    adapter = root / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(res.files)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(base.resolve())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and sorted(cfg["target_modules"]) == ["k_proj", "o_proj",
                                                                                           "q_proj", "v_proj"]
    from safetensors.torch import load_file

    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    bs = [v for k, v in tensors.items() if "lora_B" in k]
    assert len(bs) == 2 * 4 and all(torch.count_nonzero(b) > 0 for b in bs), "an exported lora_B is all zero"
    assert res.lora_b_nonzero == (8, 8)
    assert all(k.startswith("base_model.model.model.layers.") for k in tensors)

    ids = torch.randint(0, V, (2, 24), generator=torch.Generator().manual_seed(0))
    ours = ours_logits(model, ids)
    theirs = stock_logits(_stock_peft(cfg["base_model_name_or_path"], adapter), ids)
    assert (ours - theirs).abs().max().item() <= 1e-5
    # and the adapter really changes the model
    assert (stock_logits(_stock(base), ids) - ours).abs().max().item() > 1e-3


def test_lora_run_merges_into_full_hf_folder(tiny_lora_run):
    root, base, run, model = tiny_lora_run
    res = convert(ConvertRequest(source=str(run), out=root / "merged", merge=True, dtype="fp32"))
    assert res.to == "hf" and res.merged
    ids = torch.randint(0, V, (2, 24), generator=torch.Generator().manual_seed(1))
    diff = (ours_logits(model, ids) - stock_logits(_stock(root / "merged"), ids)).abs().max().item()
    assert diff <= 1e-4


def test_load_model_merges_lora_run(tiny_lora_run):
    from llamactl.interop.sources import load_model

    root, base, run, model = tiny_lora_run
    loaded = load_model(run)
    assert loaded.lora_merged and loaded.source.kind == "run"
    ids = torch.randint(0, V, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = (loaded.model(ids).logits - ours_logits(model, ids)).abs().max().item()
    assert diff <= 1e-4


def test_adapter_folder_roundtrip_and_rebase(tiny_lora_run):
    """A stock adapter folder is itself a source: re-export it (bf16) and merge it."""
    root, base, run, model = tiny_lora_run
    adapter = root / "adapter2"
    convert(ConvertRequest(source=str(run), out=adapter))
    res = convert(ConvertRequest(source=str(adapter), out=root / "adapter-bf16", dtype="bf16"))
    from safetensors.torch import load_file

    assert {v.dtype for v in load_file(str(root / "adapter-bf16" / "adapter_model.safetensors")).values()} \
        == {torch.bfloat16}
    assert res.to == "peft"
    convert(ConvertRequest(source=str(adapter), out=root / "merged2", to="hf", dtype="fp32"))
    ids = torch.randint(0, V, (1, 16), generator=torch.Generator().manual_seed(3))
    assert (ours_logits(model, ids) - stock_logits(_stock(root / "merged2"), ids)).abs().max().item() <= 1e-4


def test_adapter_for_a_different_base_is_refused(tiny_lora_run):
    root, base, run, model = tiny_lora_run
    other = tiny_pretrained(root / "other-base", tiny_config(vocab_size=V, hidden_size=96, num_attention_heads=6))
    with pytest.raises(WeightMappingError, match="different base model|hidden_size"):
        convert(ConvertRequest(source=str(run), out=root / "bad", base=str(other), merge=True))
    assert not (root / "bad").exists()
    deeper = tiny_pretrained(root / "deeper-base", tiny_config(vocab_size=V, num_hidden_layers=1))
    adapter = root / "adapter3"
    convert(ConvertRequest(source=str(run), out=adapter))
    with pytest.raises(WeightMappingError, match="different base model"):
        convert(ConvertRequest(source=str(adapter), out=root / "bad2", base=str(deeper), merge=True))


def test_missing_base_model_is_a_clear_error(tiny_lora_run, tmp_path):
    root, base, run, model = tiny_lora_run
    with pytest.raises(ModelNotFoundError, match="--base"):
        convert(ConvertRequest(source=str(run), out=tmp_path / "x", base=str(tmp_path / "nope")))


@pytest.mark.parametrize("variant", [{"use_rslora": True}, {"use_dora": True}, {"bias": "all"}])
def test_lora_variants_roundtrip(tmp_path, variant):
    base = tiny_pretrained(tmp_path / "base", tiny_config(attention_bias=bool(variant.get("bias"))))
    lora = {**LORA, "target_modules": ["q_proj", "v_proj", "down_proj"], **variant}
    run, model = train_run(tmp_path / "runs", base, lora=lora, steps=2)
    convert(ConvertRequest(source=str(run), out=tmp_path / "adapter"))
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    for k, v in variant.items():
        assert cfg[k] == v
    ids = torch.randint(0, 211, (2, 16), generator=torch.Generator().manual_seed(0))
    ours = ours_logits(model, ids)
    assert (ours - stock_logits(_stock_peft(base, tmp_path / "adapter"), ids)).abs().max().item() <= 1e-5
    convert(ConvertRequest(source=str(run), out=tmp_path / "merged", merge=True))
    assert (ours - stock_logits(_stock(tmp_path / "merged"), ids)).abs().max().item() <= 1e-4


@pytest.mark.slow
def test_smollm2_lora_roundtrip(smollm2_dir, tmp_path):
    """The real pretrained model: a short LoRA run on SmolLM2-135M, exported and reloaded stock."""
    lora = {**LORA, "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    run, model = train_run(tmp_path / "runs", smollm2_dir, lora=lora, steps=2, lr=5e-3, seq=16)
    res = convert(ConvertRequest(source=str(run), out=tmp_path / "adapter"))
    assert res.lora_b_nonzero == (60, 60)
    assert (tmp_path / "adapter" / "tokenizer.json").is_file()  # the base's tokenizer ships with it
    ids = torch.randint(0, 49152, (1, 12), generator=torch.Generator().manual_seed(0))
    ours = ours_logits(model, ids)
    assert (ours - stock_logits(_stock_peft(smollm2_dir, tmp_path / "adapter"), ids)).abs().max().item() <= 1e-5
    convert(ConvertRequest(source=str(run), out=tmp_path / "merged", merge=True, dtype="fp32"))
    assert (ours - stock_logits(_stock(tmp_path / "merged"), ids)).abs().max().item() <= 1e-4


def test_lora_only_biases_lost_by_composer_are_reported(tmp_path):
    """Composer 0.32.1 leaves biases trained with bias='lora_only' out of PEFT-only checkpoints;
    exporting must say so instead of shipping the base's untrained biases."""
    base = tiny_pretrained(tmp_path / "base", tiny_config(attention_bias=True))
    run, _ = train_run(tmp_path / "runs", base, lora={**LORA, "bias": "lora_only"}, steps=1)
    with pytest.raises(WeightMappingError, match="lora_only"):
        convert(ConvertRequest(source=str(run), out=tmp_path / "adapter"))


def test_stock_hf_model_run_is_exported_too(tmp_path):
    """A run of the stock transformers model (model.impl: hf, Composer's own HuggingFaceModel) names
    weights the HF way (model.base_model.model.model.layers...); export handles it the same."""
    from composer import Trainer
    from composer.models import HuggingFaceModel
    from peft import LoraConfig
    from torch.utils.data import DataLoader
    from transformers import LlamaForCausalLM

    from convert_support import RandomTokens
    from llamactl.interop.hf import to_transformers_config

    torch.manual_seed(0)
    hf = LlamaForCausalLM(to_transformers_config(tiny_config()))
    hf.save_pretrained(str(tmp_path / "base"))
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(f"model:\n  impl: hf\n  pretrained_model_name_or_path: {tmp_path / 'base'}\n")
    model = HuggingFaceModel(hf, tokenizer=None, use_logits=True, should_save_peft_only=True,
                             peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                    task_type="CAUSAL_LM"))
    dl = DataLoader(RandomTokens(8, 16, 211), batch_size=4)
    trainer = Trainer(model=model, train_dataloader=dl, max_duration="2ba", device="cpu", progress_bar=False,
                      optimizers=torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2),
                      save_folder=str(run / "checkpoints"), save_interval="2ba", log_to_console=False)
    trainer.fit()
    trainer.close()
    res = convert(ConvertRequest(source=str(run), out=tmp_path / "adapter"))
    assert res.lora_b_nonzero == (4, 4)
    ids = torch.randint(0, 211, (1, 12), generator=torch.Generator().manual_seed(0))
    model.model.eval()
    with torch.no_grad():
        ours = model.model(input_ids=ids).logits
    assert (ours - stock_logits(_stock_peft(tmp_path / "base", tmp_path / "adapter"), ids)).abs().max() <= 1e-5
