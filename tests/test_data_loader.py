"""The train loader over prepared MDS splits, and the embedded default dataset/tokenizer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from llamactl.data.embedded import BOS_ID, EOS_ID, PAD_ID, embedded_tokenizer_dir, ensure_embedded_dataset
from llamactl.data.loaders import build_lm_dataloader, split_info
from llamactl.errors import DataError


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Path:
    return ensure_embedded_dataset(tmp_path_factory.mktemp("data"), seq_len=64)


def test_embedded_tokenizer_matches_tiny_preset():
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from llamactl.model.presets import preset

    cfg = preset("tiny")
    tok = AutoTokenizer.from_pretrained(embedded_tokenizer_dir())
    assert len(tok) == cfg.vocab_size == 4096
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (cfg.bos_token_id, cfg.eos_token_id, PAD_ID)
    assert (BOS_ID, EOS_ID) == (cfg.bos_token_id, cfg.eos_token_id)
    text = "It is a truth universally acknowledged, that a single man in possession of a good fortune"
    ids = tok(text)["input_ids"]
    assert ids[0] == BOS_ID and tok.decode(ids, skip_special_tokens=True) == text
    assert len(ids) < len(text) / 2.5  # a real BPE, not bytes
    same = PreTrainedTokenizerFast(tokenizer_file=str(embedded_tokenizer_dir() / "tokenizer.json"))
    assert same(text)["input_ids"] == ids
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert chat == "<|bos|><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_embedded_assets_are_small_and_documented():
    assets = embedded_tokenizer_dir().parent
    total = sum(p.stat().st_size for p in assets.rglob("*") if p.is_file())
    assert (assets / "corpus" / "austen.jsonl.gz").stat().st_size <= 2 * 1024 * 1024
    assert total < 2.5 * 1024 * 1024
    notice = (assets / "NOTICE").read_text()
    assert "public domain" in notice and "r-cran-janeaustenr" in notice


def test_embedded_dataset_is_built_once_with_train_and_val(embedded: Path):
    manifest = json.loads((embedded / "llamactl-data.json").read_text())
    assert set(manifest["splits"]) == {"train", "val"}
    train, val = split_info(embedded, "train"), split_info(embedded, "val")
    assert train.seq_len == val.seq_len == 64 and train.kind == "lm"
    assert train.num_samples > 10 * val.num_samples > 0
    assert train.tokenizer == str(embedded_tokenizer_dir())
    stamp = (embedded / "train" / "index.json").stat().st_mtime_ns
    assert ensure_embedded_dataset(embedded.parent, seq_len=64) == embedded
    assert (embedded / "train" / "index.json").stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_loader_batches(embedded: Path):
    dl = build_lm_dataloader(data_dir=embedded, split="train", micro_batch_size=3, max_seq_len=40,
                             shuffle=False, seed=0)
    batch = next(iter(dl))
    assert set(batch) == {"input_ids", "labels"}
    assert batch["input_ids"].shape == (3, 40) and batch["input_ids"].dtype == torch.int64
    assert torch.equal(batch["labels"], batch["input_ids"])
    # Unshuffled, the first sample is the first 40 tokens of the first chapter: <|bos|>CHAPTER I...
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_tokenizer_dir())
    assert batch["input_ids"][0, 0].item() == BOS_ID
    assert tok.decode(batch["input_ids"][0]).startswith("<|bos|>CHAPTER I\n\n\nEmma Woodhouse")
    assert len(dl) == split_info(embedded, "train").num_samples // 3


def _hashes(dl, n: int) -> list[str]:
    out = []
    for i, b in enumerate(dl):
        if i == n:
            break
        out.append(hashlib.md5(b["input_ids"].numpy().tobytes()).hexdigest())
    return out


def test_shuffle_is_deterministic_by_seed(embedded: Path):
    def make(seed: int):
        return build_lm_dataloader(data_dir=embedded, split="train", micro_batch_size=2, max_seq_len=64,
                                   shuffle=True, seed=seed)

    a, b, c = _hashes(make(5), 6), _hashes(make(5), 6), _hashes(make(6), 6)
    assert a == b and a != c


def test_missing_split_names_the_ones_that_exist(embedded: Path, tmp_path: Path):
    with pytest.raises(DataError, match=r"no split 'train_small'; it has: train, val"):
        build_lm_dataloader(data_dir=embedded, split="train_small", micro_batch_size=2, max_seq_len=8,
                            shuffle=False, seed=0)
    with pytest.raises(DataError, match="no prepared split"):
        build_lm_dataloader(data_dir=tmp_path, split="train", micro_batch_size=2, max_seq_len=8, shuffle=False, seed=0)
    with pytest.raises(DataError, match="does not exist"):
        split_info(tmp_path / "nope", "train")


def test_composer_resumes_the_exact_batch_sequence(embedded: Path, tmp_path: Path):
    """Composer checkpoints the StreamingDataset behind our loader; a resumed run sees the same batches."""
    from composer import Callback, Trainer
    from composer.models import ComposerModel

    class Tiny(ComposerModel):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(4096, 4)
            self.out = torch.nn.Linear(4, 4096)

        def forward(self, batch):
            return self.out(self.emb(batch["input_ids"]))

        def loss(self, outputs, batch):
            return torch.nn.functional.cross_entropy(outputs[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten())

    class Record(Callback):
        def __init__(self) -> None:
            self.seen: list[str] = []

        def after_dataloader(self, state, logger) -> None:
            self.seen.append(hashlib.md5(state.batch["input_ids"].numpy().tobytes()).hexdigest())

    def fit(duration: str, *, save: str | None = None, load: str | None = None) -> list[str]:
        dl = build_lm_dataloader(data_dir=embedded, split="val", micro_batch_size=16, max_seq_len=16, shuffle=True,
                                 seed=3)
        rec = Record()
        trainer = Trainer(model=Tiny(), train_dataloader=dl, max_duration=duration, callbacks=[rec],
                          save_folder=save, save_interval="3ba", save_overwrite=True,
                          load_path=load, progress_bar=False, log_to_console=False, device="cpu", seed=1)
        trainer.fit()
        trainer.close()
        return rec.seen

    per_epoch = split_info(embedded, "val").num_samples // 16
    total = per_epoch + 2  # crosses an epoch boundary
    full = fit(f"{total}ba")
    fit("3ba", save=str(tmp_path / "ckpt"))
    resumed = fit(f"{total}ba", load=str(tmp_path / "ckpt" / "ep0-ba3-rank0.pt"))
    assert len(full) == total and resumed == full[3:]
