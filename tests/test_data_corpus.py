"""`prepare-data text|jsonl|parquet` on local corpora, validation splits, the CLI and `info`."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from llamactl.cli import main
from llamactl.data.embedded import embedded_tokenizer_dir
from llamactl.data.loaders import split_info
from llamactl.services.prepare_data import CorpusOptions, prepare_corpus

TOK = str(embedded_tokenizer_dir())


def _stream(out: Path, split: str) -> np.ndarray:
    from streaming import StreamingDataset

    ds = StreamingDataset(local=str(out), split=split, shuffle=False, batch_size=1)
    return np.concatenate([ds[i]["tokens"] for i in range(ds.num_samples)])


def _tokens(texts: list[str]) -> np.ndarray:
    """Documents tokenized directly; the embedded tokenizer marks each with <|bos|>, so no EOS is appended."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOK)
    return np.asarray([t for x in texts for t in tok(x)["input_ids"]])


def test_jsonl_val_fraction_routes_every_nth_document(shared_data: Path, tmp_path: Path):
    src = shared_data / "corpora" / "lee_news.jsonl.gz"
    docs = [json.loads(line)["text"] for line in gzip.open(src, "rt")]
    out = tmp_path / "lee"
    res = prepare_corpus(CorpusOptions(kind="jsonl", paths=[str(src)], out=str(out), tokenizer=TOK,
                                       val_fraction=0.1, concat_tokens=64, workers=2))
    train, val = res.splits
    assert (train.documents, val.documents) == (len(docs) - len(docs) // 10, len(docs) // 10)
    val_docs = [d for i, d in enumerate(docs) if int((i + 1) * 0.1) > int(i * 0.1)]
    train_docs = [d for i, d in enumerate(docs) if not int((i + 1) * 0.1) > int(i * 0.1)]
    for split, texts in (("train", train_docs), ("val", val_docs)):
        expected = _tokens(texts)
        got = _stream(out, split)
        assert got.size == expected.size // 64 * 64
        np.testing.assert_array_equal(got, expected[:got.size])


def test_text_files_with_validation_file(tmp_path: Path):
    texts = [f"Chapter {i}.\n\n" + "The rain in Spain falls mainly on the plain. " * (10 + i) for i in range(5)]
    for i, t in enumerate(texts):
        (tmp_path / f"doc{i}.txt").write_text(t)
    out = tmp_path / "txt"
    res = prepare_corpus(CorpusOptions(kind="text", paths=[str(tmp_path / f"doc{i}.txt") for i in range(4)],
                                       val_paths=[str(tmp_path / "doc4.txt")], out=str(out), tokenizer=TOK,
                                       concat_tokens=32, workers=0))
    assert [s.documents for s in res.splits] == [4, 1]
    got = _stream(out, "val")
    np.testing.assert_array_equal(got, _tokens(texts[4:])[:got.size])
    res = prepare_corpus(CorpusOptions(kind="text", paths=[str(tmp_path / "doc0.txt")], out=str(tmp_path / "par"),
                                       tokenizer=TOK, unit="paragraph", concat_tokens=8, workers=0))
    assert res.splits[0].documents == 2


def test_parquet(tmp_path: Path):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        (tmp_path / "x.parquet").write_bytes(b"PAR1")
        from llamactl.errors import UserInputError

        with pytest.raises(UserInputError, match="pip install pyarrow"):
            prepare_corpus(CorpusOptions(kind="parquet", paths=[str(tmp_path / "x.parquet")],
                                         out=str(tmp_path / "o"), tokenizer=TOK, concat_tokens=8))
        assert not (tmp_path / "o").exists()
        return
    texts = [f"Row {i} says hello to the parquet reader." * 3 for i in range(50)]
    pq.write_table(pa.table({"body": texts, "n": list(range(50))}), tmp_path / "x.parquet")
    out = tmp_path / "pq"
    prepare_corpus(CorpusOptions(kind="parquet", paths=[str(tmp_path / "x.parquet")], out=str(out), tokenizer=TOK,
                                 field="body", concat_tokens=16, workers=0))
    got = _stream(out, "train")
    np.testing.assert_array_equal(got, _tokens(texts)[:got.size])


def test_cli_end_to_end_and_info(shared_data: Path, tmp_path: Path, capsys):
    out = tmp_path / "cli"
    main(["prepare-data", "c4", "--source", str(shared_data / "c4-format"), "--tokenizer", TOK,
          "--out", str(out), "--train-samples", "20", "--val-samples", "5", "--concat-tokens", "128",
          "--workers", "0"])
    text = capsys.readouterr().out
    assert "train_small" in text and "val_small" in text and "tokens/s" in text
    assert split_info(out, "train_small").num_samples == 20
    main(["prepare-data", "info", str(out), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in info["splits"]] == ["train_small", "val_small"]
    assert info["seq_len"] == 128 and info["vocab_size"] == 4096 and info["tokenizer"] == TOK
    assert info["sample_text"].startswith("<|bos|>CHAPTER")
    main(["prepare-data", "info", str(out)])
    shown = capsys.readouterr().out
    assert "train_small" in shown and "decoded" in shown and "CHAPTER" in shown


def test_info_reads_a_dataset_without_manifest(tmp_path: Path):
    """An LLM Foundry-made folder (MDS `tokens` int32, bytes-free, no manifest) is readable too."""
    from streaming import MDSWriter

    from llamactl.services.prepare_data import dataset_info

    with MDSWriter(columns={"tokens": "ndarray:int32"}, out=str(tmp_path / "lf" / "train")) as w:
        for i in range(6):
            w.write({"tokens": np.arange(i, i + 10, dtype=np.int32)})
    info = dataset_info(str(tmp_path / "lf"))
    assert info.splits[0].num_samples == 6 and info.seq_len == 10 and info.tokenizer is None
    assert info.sample_tokens == list(range(10)) and "LLM Foundry" in info.note


def test_packer_counts_only_documents_it_used():
    from llamactl.data.packing import TokenPacker

    lengths = np.array([5, 5, 5, 5])
    flat = np.arange(20)
    p = TokenPacker(4, wrap=True)
    out = p.add(flat, lengths, max_samples=2)  # 8 tokens: documents 0 and 1
    assert out.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]] and p.docs == 2 and p.tokens == 8
    q = TokenPacker(4, wrap=False)
    out = q.add(flat, lengths, max_samples=1)
    assert out.tolist() == [[0, 1, 2, 3]] and q.docs == 1
    r = TokenPacker(4, wrap=False)
    assert r.add(flat, lengths).tolist() == [[0, 1, 2, 3], [5, 6, 7, 8], [10, 11, 12, 13], [15, 16, 17, 18]]
