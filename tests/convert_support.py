"""Helpers for the convert/sources tests: tiny pretrained folders and real Composer runs.

A "run" here is made by the real pieces: ``new_run_dir`` + the train service's config writer, our
``LlamactlComposerModel`` (LoRA through PEFT exactly as ``llamactl train`` applies it) and a real
Composer ``Trainer`` saving real checkpoints, on random tokens so it needs no dataset.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from llamactl.model import Llama, LlamaConfig

SMOLLM2_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


class RandomTokens(Dataset):
    def __init__(self, n: int, seq: int, vocab: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.data = torch.randint(0, vocab, (n, seq), generator=g)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.data[i], "labels": self.data[i].clone()}


def tiny_config(**overrides: Any) -> LlamaConfig:
    base = dict(vocab_size=211, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
                num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    return LlamaConfig(**{**base, **overrides})


def tiny_pretrained(folder: Path, config: LlamaConfig | None = None, *, seed: int = 1,
                    tokenizer_from: Path | None = None) -> Path:
    """A random-init Llama saved as an HF folder (fp32), optionally with a tokenizer copied in."""
    from llamactl.interop.checkpoint import save_hf_folder

    model = Llama(config or tiny_config())
    model.init_weights(seed=seed)
    save_hf_folder(model, folder, dtype="fp32")
    if tokenizer_from is not None:
        for name in SMOLLM2_TOKENIZER:
            if (tokenizer_from / name).is_file():
                shutil.copy(tokenizer_from / name, folder / name)
    return folder


def train_run(runs_dir: Path, base: Path | None, *, lora: dict[str, Any] | None = None, steps: int = 4,
              lr: float = 1e-2, seq: int = 32, config: LlamaConfig | None = None, name: str = "t"):
    """Train a run with a real Composer Trainer and our adapter; returns (run_dir, composer_model).

    ``base``: an HF folder to start from (loaded with ``load_model``, as ``llamactl train`` does),
    or None to train ``config`` from scratch.
    """
    from composer import Trainer
    from composer.optim import DecoupledAdamW

    from llamactl.config.schema import TrainConfig
    from llamactl.interop.sources import load_model
    from llamactl.runs import new_run_dir
    from llamactl.services.train import _write_config
    from llamactl.training.adapter import LlamactlComposerModel

    cfg = TrainConfig(run_name=name, runs_dir=str(runs_dir), max_duration=f"{steps}ba", precision="fp32")
    if base is not None:
        cfg.model.pretrained_model_name_or_path = str(base)
        llama = load_model(base).model.train()
    else:
        llama = Llama(config or tiny_config())
        llama.init_weights(seed=1)
    if lora:
        cfg.model.peft_config = dict(lora)
    run = new_run_dir(runs_dir, name)
    _write_config(cfg, run)
    model = LlamactlComposerModel(llama, peft_config=dict(lora) if lora else None)
    vocab = llama.config.vocab_size
    dl = DataLoader(RandomTokens(4 * steps, seq, vocab), batch_size=4, shuffle=False)
    params = [p for p in model.parameters() if p.requires_grad]
    trainer = Trainer(model=model, train_dataloader=dl, max_duration=f"{steps}ba",
                      optimizers=DecoupledAdamW(params, lr=lr), device="cpu", precision="fp32", seed=3,
                      save_folder=str(run / "checkpoints"), save_interval=f"{steps}ba",
                      save_filename="ep{epoch}-ba{batch}-rank{rank}.pt", progress_bar=False, log_to_console=False)
    trainer.fit()
    trainer.close()
    model.eval()
    return run, model


def ours_logits(composer_model, ids: torch.Tensor) -> torch.Tensor:
    """Logits of the trained inner model (PEFT-wrapped for LoRA), eval mode, fp32."""
    with torch.no_grad():
        return composer_model.model(ids).logits.float()


def stock_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()


def tiny_bpe_tokenizer(folder: Path, corpus_file: Path, *, vocab_size: int = 320) -> Path:
    """Train a small byte-level BPE tokenizer (GPT-2 style, ChatML specials) on a slice of a corpus
    and save it as an HF tokenizer folder: small vocabularies keep GGUF tests fast."""
    import gzip
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = []
    with gzip.open(corpus_file, "rt") as f:
        for line in f:
            texts.append(json.loads(line)["text"][:4000])
            if len(texts) >= 20:
                break
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                          "{% endfor %}")
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return folder


def service_run(runs_dir: Path, base: Path, data_root: Path, *, lora: dict[str, Any] | None = None, steps: int = 4,
                seq: int = 64, lr: float = 5e-3, name: str = "svc") -> Path:
    """A run made by ``llamactl.services.train`` itself (what ``llamactl train`` runs): the bundled
    corpus and tokenizer, ``base`` as ``model.pretrained_model_name_or_path``. Returns the run dir."""
    from llamactl.config.load import config_from_dict
    from llamactl.services.train import train

    model: dict[str, Any] = {"pretrained_model_name_or_path": str(base)}
    if lora:
        model["peft_config"] = dict(lora)
    cfg = config_from_dict({
        "run_name": name, "runs_dir": str(runs_dir), "data_root": str(data_root), "max_seq_len": seq,
        "model": model, "tokenizer": {"name": "embedded"},
        "train_loader": {"name": "embedded", "dataset": {"split": "train"}},
        "optimizer": {"name": "decoupled_adamw", "lr": lr}, "scheduler": {"name": "constant_with_warmup"},
        "max_duration": f"{steps}ba", "global_train_batch_size": 4, "device_train_microbatch_size": 4,
        "precision": "fp32", "save_interval": f"{steps}ba", "log_interval": "1ba"})
    return train(cfg, sample=False).run_dir


def composer_reference(checkpoint: Path, base: Path, lora: dict[str, Any] | None = None):
    """The trained model as *Composer* restores it: a fresh ``LlamactlComposerModel`` on the base,
    filled by Composer's own checkpoint loading (``Trainer(load_path=..., load_weights_only=True)``).
    Independent of llamactl's checkpoint reader, so it is the reference exports are checked against."""
    from composer import Trainer

    from llamactl.interop.sources import load_model
    from llamactl.training.adapter import LlamactlComposerModel

    model = LlamactlComposerModel(load_model(base).model, peft_config=dict(lora) if lora else None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # non-strict: a PEFT-only checkpoint holds the adapter alone (Composer's default is strict)
    trainer = Trainer(model=model, load_path=str(checkpoint), load_weights_only=True, load_strict_model_weights=False,
                      device="cpu", progress_bar=False, log_to_console=False)
    trainer.close()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "Composer restored nothing: the reference would be the base model"
    if lora:
        assert all(".lora_" in k for k in changed)
    return model.eval()
