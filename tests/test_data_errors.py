"""Bad inputs to `llamactl prepare-data`: one clear error line, non-zero exit, nothing half-written."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from llamactl.cli import main


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(["prepare-data", *args])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def _one_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture()
def tok(shared_data: Path) -> str:
    return str(shared_data / "tokenizers" / "smollm2")


@pytest.fixture()
def good(tmp_path: Path) -> Path:
    p = tmp_path / "good.jsonl"
    p.write_text("".join(json.dumps({"text": f"Document number {i}. " * 20}) + "\n" for i in range(30)))
    return p


def test_missing_path(capsys, tmp_path: Path, tok: str):
    code, _, err = _cli(capsys, "jsonl", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"), "--tokenizer", tok)
    assert code == 2 and "does not exist" in _one_error(err)
    assert not (tmp_path / "o").exists()


def test_empty_file(capsys, tmp_path: Path, tok: str):
    (tmp_path / "empty.jsonl").write_text("")
    code, _, err = _cli(capsys, "jsonl", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "o"),
                        "--tokenizer", tok)
    assert code == 2 and "is empty" in _one_error(err)
    assert not (tmp_path / "o").exists()
    (tmp_path / "blank.jsonl.gz").write_bytes(gzip.compress(b"\n\n"))  # non-empty file, no records
    code, _, err = _cli(capsys, "jsonl", str(tmp_path / "blank.jsonl.gz"), "--out", str(tmp_path / "o"),
                        "--tokenizer", tok, "--concat-tokens", "16")
    assert code == 2 and "holds no records" in _one_error(err)
    assert not (tmp_path / "o").exists()


def test_wrong_field(capsys, tmp_path: Path, tok: str, good: Path):
    code, _, err = _cli(capsys, "jsonl", str(good), "--out", str(tmp_path / "o"), "--tokenizer", tok,
                        "--field", "content", "--concat-tokens", "16", "--workers", "2")
    line = _one_error(err)
    assert code == 2 and "no field 'content' (it has: text)" in line and "--field" in line
    assert not (tmp_path / "o").exists()


def test_tokenizer_not_found_offline(capsys, tmp_path: Path, good: Path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = _cli(capsys, "jsonl", str(good), "--out", str(tmp_path / "o"), "--tokenizer",
                        "nobody/no-such-tokenizer")
    line = _one_error(err)
    assert code == 2 and "could not be loaded" in line and "local tokenizer folder" in line
    code, _, err = _cli(capsys, "jsonl", str(good), "--out", str(tmp_path / "o"), "--tokenizer", str(tmp_path / "x"))
    assert code == 2 and "does not exist" in _one_error(err)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("n", ["0", "-5"])
def test_sequence_length_not_positive(capsys, tmp_path: Path, tok: str, good: Path, n: str):
    code, _, err = _cli(capsys, "jsonl", str(good), "--out", str(tmp_path / "o"), "--tokenizer", tok,
                        "--concat-tokens", n)
    assert code == 2 and "--concat-tokens must be a positive" in _one_error(err)
    code, _, err = _cli(capsys, "sft", str(good), "--out", str(tmp_path / "o"), "--tokenizer", tok, "--seq-len", n)
    assert code == 2 and "positive" in _one_error(err)
    assert not (tmp_path / "o").exists()


def test_output_dir_not_ours(capsys, tmp_path: Path, tok: str, good: Path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, _, err = _cli(capsys, "jsonl", str(good), "--out", str(out), "--tokenizer", tok, "--concat-tokens", "16")
    assert code == 2 and "was not made by llamactl" in _one_error(err)
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]


def test_input_shorter_than_one_sample(capsys, tmp_path: Path, tok: str, good: Path):
    code, _, err = _cli(capsys, "jsonl", str(good), "--out", str(tmp_path / "o"), "--tokenizer", tok,
                        "--concat-tokens", "100000")
    assert code == 2 and "fewer than one sequence" in _one_error(err)
    assert not (tmp_path / "o").exists()


def test_c4_source_without_c4_files(capsys, tmp_path: Path, tok: str):
    code, _, err = _cli(capsys, "c4", "--source", str(tmp_path), "--out", str(tmp_path / "o"), "--tokenizer", tok)
    assert code == 2 and "no c4-train.*.json.gz files" in _one_error(err)
    assert not (tmp_path / "o").exists()


def test_interrupted_run_leaves_no_half_split_and_resumes(tmp_path: Path, shared_data: Path, monkeypatch):
    """Interrupt while the second split is written: the first stays (complete), the second leaves nothing."""
    from llamactl.data.mds import read_manifest
    from llamactl.services.prepare_data import C4Options, prepare_c4

    out = tmp_path / "c4"
    opts = C4Options(out=str(out), tokenizer=str(shared_data / "tokenizers" / "smollm2"),
                     source=str(shared_data / "c4-format"), train_samples=50, val_samples=50, concat_tokens=64,
                     workers=0)

    from llamactl.data.mds import SplitWriter

    original = SplitWriter.write

    def write_then_interrupt(self, **arrays):
        original(self, **arrays)
        if self.name == "val_small":
            assert (out / ".partial-val_small").is_dir() and not (out / "val_small").exists()
            raise KeyboardInterrupt  # Ctrl-C while the split's shards are being written

    monkeypatch.setattr(SplitWriter, "write", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare_c4(opts)
    monkeypatch.setattr(SplitWriter, "write", original)
    assert sorted(p.name for p in out.iterdir()) == ["llamactl-data.json", "train_small"]
    assert list(read_manifest(out)["splits"]) == ["train_small"]
    res = prepare_c4(opts)
    assert res.reused == ["train_small"] and [s.num_samples for s in res.splits] == [50, 50]
    assert sorted(p.name for p in out.iterdir()) == ["llamactl-data.json", "train_small", "val_small"]
