"""The outer Composer adapter: a real Trainer fits our model on CPU, checkpoints, resumes; LoRA
trains only adapter weights."""

from __future__ import annotations

import torch
from convert_support import RandomTokens
from torch.utils.data import DataLoader

from llamactl.model import Llama, LlamaConfig
from llamactl.training.adapter import LlamactlComposerModel


def tiny_config() -> LlamaConfig:
    return LlamaConfig(vocab_size=211, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64)


def make_trainer(model, save_folder, *, max_duration="4ba", load_path=None, lr=1e-2):
    from composer import Trainer
    from composer.optim import DecoupledAdamW

    dl = DataLoader(RandomTokens(16, 32, 211), batch_size=4, shuffle=False)
    params = [p for p in model.parameters() if p.requires_grad]
    return Trainer(model=model, train_dataloader=dl, max_duration=max_duration, optimizers=DecoupledAdamW(params, lr=lr),
                   device="cpu", precision="fp32", seed=3, save_folder=str(save_folder), save_interval="2ba",
                   save_filename="ep{epoch}-ba{batch}-rank{rank}.pt", progress_bar=False, log_to_console=False,
                   load_path=load_path, save_overwrite=True)


def test_fit_checkpoint_and_resume(tmp_path):
    torch.manual_seed(0)
    llama = Llama(tiny_config())
    llama.init_weights(seed=1)
    before = {k: v.clone() for k, v in llama.state_dict().items()}
    model = LlamactlComposerModel(llama)
    trainer = make_trainer(model, tmp_path / "ck")
    trainer.fit()
    assert int(trainer.state.timestamp.batch) == 4
    after = llama.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "training changed no weight"
    ckpt = tmp_path / "ck" / "ep0-ba2-rank0.pt"
    assert ckpt.is_file()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    keys = state["state"]["model"].keys()
    assert "model.layers.0.self_attn.q_proj.weight" in keys
    assert state["state"]["integrations"]["huggingface"]["model"]["config"]["content"]["model_type"] == "llama"
    final = {k: v.clone() for k, v in llama.state_dict().items()}
    trainer.close()

    # resume from the step-2 checkpoint in a fresh model: the final weights are identical
    llama2 = Llama(tiny_config())
    llama2.init_weights(seed=99)
    trainer2 = make_trainer(LlamactlComposerModel(llama2), tmp_path / "ck2", load_path=str(ckpt))
    assert int(trainer2.state.timestamp.batch) == 2
    trainer2.fit()
    for k, v in llama2.state_dict().items():
        assert torch.equal(v, final[k]), f"{k} differs after resume"
    trainer2.close()


def test_lora_trains_only_adapters(tmp_path):
    llama = Llama(tiny_config())
    llama.init_weights(seed=1)
    frozen = {k: v.clone() for k, v in llama.state_dict().items()}
    model = LlamactlComposerModel(llama, peft_config={"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4,
                                                      "lora_alpha": 8, "lora_dropout": 0.0,
                                                      "target_modules": ["q_proj", "v_proj"]})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    trainer = make_trainer(model, tmp_path / "ck")
    trainer.fit()
    changed = [n for n, p in model.named_parameters() if "lora_" in n and not torch.equal(p, lora_before[n])]
    assert any("lora_B" in n for n in changed) and any("lora_A" in n for n in changed)
    base = model.model.get_base_model()
    for name, p in base.named_parameters():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        assert torch.equal(p, frozen[key]), f"frozen weight {key} changed"
    state = torch.load(tmp_path / "ck" / "ep0-ba4-rank0.pt", map_location="cpu", weights_only=False)
    keys = list(state["state"]["model"])
    assert keys and all("lora_" in k for k in keys), "a LoRA checkpoint holds only adapter weights"
    trainer.close()


def test_eval_metrics_and_flops():
    from llamactl.training.adapter import TokenCrossEntropy, TokenPerplexity

    llama = Llama(tiny_config())
    llama.init_weights(seed=1)
    model = LlamactlComposerModel(llama).eval()
    batch = RandomTokens(2, 32, 211)[0]
    batch = {k: v[None] for k, v in batch.items()}
    batch["labels"][0, :10] = -100
    out = model.eval_forward(batch)
    ce, ppl = TokenCrossEntropy(), TokenPerplexity()
    model.update_metric(batch, out, ce)
    model.update_metric(batch, out, ppl)
    logits = llama(batch["input_ids"]).logits[0, :-1]
    ref = torch.nn.functional.cross_entropy(logits, batch["labels"][0, 1:], ignore_index=-100)
    assert torch.allclose(ce.compute(), ref, atol=1e-5)
    assert torch.allclose(ppl.compute(), ref.exp(), rtol=1e-5)
    assert int(out["tokens"]) == 31 - 9
    cfg = llama.config
    assert model.flops_per_batch(batch) == cfg.flops_per_token(32) * 32


def test_the_inner_model_is_registered_once():
    """Every weight appears once in the Composer model's state (and so in checkpoints): a module
    registered under two names is saved twice and is sharded twice by FSDP."""
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    inner = Llama(cfg)
    model = LlamactlComposerModel(inner)
    keys = list(model.state_dict())
    assert keys and all(k.startswith("model.") for k in keys), sorted({k.split(".")[0] for k in keys})
    assert len(keys) == len(inner.state_dict())
    assert model.llama is inner
    assert sum(1 for m in model.modules() if m is inner) == 1
    lora = LlamactlComposerModel(Llama(cfg), peft_config={"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                                                           "target_modules": ["q_proj"]})
    assert isinstance(lora.llama, Llama)


def test_lora_only_bias_is_refused_where_checkpoints_would_lose_it():
    import pytest

    from llamactl.errors import ConfigError
    from llamactl.training.adapter import check_lora_bias

    peft = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "bias": "lora_only"}
    with_bias = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=4, num_key_value_heads=2, attention_bias=True)
    with pytest.raises(ConfigError, match="bias: all"):
        check_lora_bias(Llama(with_bias), peft)
    no_bias = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=4, num_key_value_heads=2)
    check_lora_bias(Llama(no_bias), peft)  # nothing to lose: allowed
    check_lora_bias(Llama(with_bias), {**peft, "bias": "all"})
