"""`prepare-data c4` on the C4-layout fixture: the shards hold exactly the tokenized, packed documents."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

from llamactl.data.loaders import build_lm_dataloader, split_info
from llamactl.services.prepare_data import C4Options, prepare_c4


def _docs(folder: Path, pattern: str) -> list[str]:
    return [json.loads(line)["text"] for f in sorted(folder.glob(pattern)) for line in gzip.open(f, "rt")]


def _expected_samples(tok, docs: list[str], seq_len: int, n: int | None, *, eos: list[int], wrap: bool = True):
    """Tokenize documents directly with transformers and pack them as LLM Foundry's ConcatTokensDataset does."""
    out, buf = [], []
    for d in docs:
        buf = buf + tok(d)["input_ids"] + eos
        while len(buf) >= seq_len:
            out.append(buf[:seq_len])
            buf = buf[seq_len:] if wrap else []
            if n is not None and len(out) == n:
                return np.asarray(out)
    return np.asarray(out)


@pytest.fixture(scope="module")
def c4_dir(shared_data: Path) -> Path:
    return shared_data / "c4-format"


@pytest.fixture(scope="module")
def smollm2_tok(shared_data: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(shared_data / "tokenizers" / "smollm2")


@pytest.fixture(scope="module")
def prepared(c4_dir: Path, shared_data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("c4") / "c4_small"
    prepare_c4(C4Options(out=str(out), tokenizer=str(shared_data / "tokenizers" / "smollm2"), source=str(c4_dir),
                         train_samples=300, val_samples=None, concat_tokens=256, workers=2))
    return out


def test_round_trip_through_our_loader_and_streaming_dataset(prepared: Path, c4_dir: Path, smollm2_tok):
    from streaming import StreamingDataset

    # SmolLM2's tokenizer adds no BOS/EOS by itself, so its EOS is appended to every document.
    eos = [smollm2_tok.eos_token_id]
    assert eos == [2]
    for split, pattern, n in (("train_small", "en/c4-train.*.json.gz", 300),
                              ("val_small", "en/c4-validation.*.json.gz", None)):
        expected = _expected_samples(smollm2_tok, _docs(c4_dir, pattern), 256, n, eos=eos)
        if n is not None:
            assert len(expected) == n
        ds = StreamingDataset(local=str(prepared), split=split, shuffle=False, batch_size=1)
        got = np.stack([ds[i]["tokens"] for i in range(ds.num_samples)])
        assert got.dtype == np.uint16  # vocab 49,152 fits
        np.testing.assert_array_equal(got, expected)
        dl = build_lm_dataloader(data_dir=prepared, split=split, micro_batch_size=4, max_seq_len=256,
                                 shuffle=False, seed=0, drop_last=False)
        ours = np.concatenate([b["input_ids"].numpy() for b in dl])
        np.testing.assert_array_equal(ours, expected)
    info = split_info(prepared, "train_small")
    assert (info.num_samples, info.seq_len, info.kind) == (300, 256, "lm")


def test_workers_do_not_change_the_output(prepared: Path, c4_dir: Path, shared_data: Path, tmp_path: Path):
    out = tmp_path / "one"
    prepare_c4(C4Options(out=str(out), tokenizer=str(shared_data / "tokenizers" / "smollm2"), source=str(c4_dir),
                         splits=("train_small",), train_samples=300, concat_tokens=256, workers=0))
    a = (prepared / "train_small" / "shard.00000.mds").read_bytes()
    assert (out / "train_small" / "shard.00000.mds").read_bytes() == a


def test_llama3_ids_are_int32_and_no_wrap_starts_samples_at_documents(c4_dir: Path, shared_data: Path,
                                                                      tmp_path: Path):
    from transformers import AutoTokenizer

    from streaming import StreamingDataset

    tok_dir = shared_data / "tokenizers" / "llama3"
    tok = AutoTokenizer.from_pretrained(tok_dir)
    out = tmp_path / "l3"
    res = prepare_c4(C4Options(out=str(out), tokenizer=str(tok_dir), source=str(c4_dir), splits=("val_small",),
                               val_samples=40, concat_tokens=128, no_wrap=True, bos_text="<|begin_of_text|>",
                               eos_text="<|end_of_text|>", workers=0))
    assert res.splits[0].columns == {"tokens": "ndarray:int32"}
    bos, eos = tok.convert_tokens_to_ids(["<|begin_of_text|>", "<|end_of_text|>"])
    docs = _docs(c4_dir, "en/c4-validation.*.json.gz")
    expected, buf = [], []
    for d in docs:  # LLM Foundry's no-wrap: the buffer is dropped after every cut
        buf = buf + [bos] + tok(d)["input_ids"] + [eos]
        if len(buf) >= 128:
            expected.append(buf[:128])
            buf = []
        if len(expected) == 40:
            break
    ds = StreamingDataset(local=str(out), split="val_small", shuffle=False, batch_size=1)
    got = np.stack([ds[i]["tokens"] for i in range(ds.num_samples)])
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, np.asarray(expected))
    assert (got[:, 0] == bos).all()


def test_compressed_shards_read_back(c4_dir: Path, shared_data: Path, tmp_path: Path):
    out = tmp_path / "z"
    prepare_c4(C4Options(out=str(out), tokenizer=str(shared_data / "tokenizers" / "smollm2"), source=str(c4_dir),
                         splits=("val_small",), val_samples=20, concat_tokens=64, compression="zstd", workers=0))
    assert list((out / "val_small").glob("*.mds.zstd"))
    dl = build_lm_dataloader(data_dir=out, split="val_small", micro_batch_size=5, max_seq_len=64, shuffle=False,
                             seed=0)
    assert sum(b["input_ids"].shape[0] for b in dl) == 20


def test_hub_streaming_uses_the_same_code_path(c4_dir: Path, shared_data: Path, tmp_path: Path, monkeypatch,
                                               prepared: Path):
    """The hub cannot be reached here: an in-memory filesystem stands in for hf://datasets/allenai/c4."""
    import fsspec

    from llamactl.data import sources

    mem = fsspec.filesystem("memory")
    for f in sorted((c4_dir / "en").glob("*.json.gz")):
        mem.pipe(f"/datasets/allenai/c4/en/{f.name}", f.read_bytes())
    monkeypatch.setattr(sources, "hub_fs", lambda: mem)
    secret = "hf_testsecret_do_not_leak_123"
    monkeypatch.setenv("HF_TOKEN", secret)
    out = tmp_path / "hub"
    prepare_c4(C4Options(out=str(out), tokenizer=str(shared_data / "tokenizers" / "smollm2"), source=None,
                         splits=("train_small",), train_samples=300, concat_tokens=256, workers=0))
    assert (out / "train_small" / "shard.00000.mds").read_bytes() == \
        (prepared / "train_small" / "shard.00000.mds").read_bytes()
    for p in out.rglob("*"):
        if p.is_file():
            assert secret.encode() not in p.read_bytes()
    assert json.loads((out / "llamactl-data.json").read_text())["splits"]["train_small"]["source"] == \
        "c4 en/train from hf://datasets/allenai/c4"


def test_done_splits_are_kept_and_changed_settings_refused(prepared: Path, c4_dir: Path, shared_data: Path):
    from llamactl.errors import DataError

    stamp = os.stat(prepared / "train_small" / "index.json").st_mtime_ns
    opts = C4Options(out=str(prepared), tokenizer=str(shared_data / "tokenizers" / "smollm2"), source=str(c4_dir),
                     train_samples=300, val_samples=None, concat_tokens=256, workers=2)
    res = prepare_c4(opts)
    assert sorted(res.reused) == ["train_small", "val_small"]
    assert os.stat(prepared / "train_small" / "index.json").st_mtime_ns == stamp
    opts.concat_tokens = 128
    with pytest.raises(DataError, match="other settings; pass --overwrite"):
        prepare_c4(opts)
    assert os.stat(prepared / "train_small" / "index.json").st_mtime_ns == stamp
