"""The tiktoken engine: used only where it reproduces Hugging Face tokenizers, checked while it runs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from llamactl.data import fast_bpe
from llamactl.data.embedded import embedded_tokenizer_dir
from llamactl.data.tokenize import DocEncoder, EncodeSpec


def _spec(tok_dir: Path, engine: str = "auto", add_special_tokens: bool = True) -> EncodeSpec:
    from llamactl.data.tokenizer import load_tokenizer
    from llamactl.data.tokenize import make_encode_spec

    spec, _ = make_encode_spec(load_tokenizer(tok_dir), bos_text="", eos_text=None,
                               add_special_tokens=add_special_tokens, engine=engine)
    return spec


@pytest.mark.parametrize("name", ["llama3", "smollm2", "embedded"])
def test_engine_gives_the_ids_of_tokenizers(shared_data: Path, name: str):
    from tokenizers import Tokenizer

    tok_dir = embedded_tokenizer_dir() if name == "embedded" else shared_data / "tokenizers" / name
    spec = _spec(tok_dir)
    assert spec.engine == "tiktoken"
    texts = [json.loads(line)["text"] for line in gzip.open(shared_data / "corpora" / "lee_news.jsonl.gz", "rt")]
    texts += ["Tabs\tand\r\nCRLF, émigré café, 数字 12345, emoji 🦙🦙, <|im_end|> <|end_of_text|> literal",
              "control \x04\x06 chars and a plane-4 char \U00050000", "", "   ", "'s 'S 'LL 've"]
    hf = Tokenizer.from_str(spec.tokenizer_json)
    encoder = DocEncoder(EncodeSpec(**{**spec.__dict__, "verify_every": 10**9}))  # compare everything here
    assert encoder(texts) == [e.ids for e in hf.encode_batch(texts, add_special_tokens=True)]


def test_ineligible_tokenizers_are_refused_with_a_reason(tmp_path: Path, shared_data: Path):
    tj = json.loads((shared_data / "tokenizers" / "smollm2" / "tokenizer.json").read_text())
    tj["normalizer"] = {"type": "NFC"}
    params, why = fast_bpe.tiktoken_params(json.dumps(tj))
    assert params is None and why == "has a normalizer"
    tj["normalizer"] = None
    tj["model"]["merges"] = list(reversed(tj["model"]["merges"]))
    assert fast_bpe.tiktoken_params(json.dumps(tj)) == (None, "merge order does not follow token ids")


def test_a_disagreement_falls_back_to_tokenizers(shared_data: Path, tmp_path: Path, monkeypatch):
    from llamactl.services.prepare_data import C4Options, prepare_c4

    def opts(out: str, engine: str) -> C4Options:
        return C4Options(out=str(tmp_path / out), tokenizer=str(shared_data / "tokenizers" / "smollm2"),
                         source=str(shared_data / "c4-format"), splits=("val_small",), val_samples=30,
                         concat_tokens=128, workers=0, engine=engine)

    reference = prepare_c4(opts("ref", "tokenizers"))
    assert reference.splits[0].extra["engine"] == "tokenizers"
    real = fast_bpe.build_encoding

    class Wrong:
        def __init__(self, params):
            self.enc = real(params)

        def encode(self, text, allowed_special=()):
            return self.enc.encode(text, allowed_special=allowed_special)[1:]  # drops a token

    monkeypatch.setattr(fast_bpe, "build_encoding", Wrong)
    res = prepare_c4(opts("fallback", "auto"))
    assert res.splits[0].extra["engine"] == "tokenizers"
    assert (tmp_path / "fallback" / "val_small" / "shard.00000.mds").read_bytes() == \
        (tmp_path / "ref" / "val_small" / "shard.00000.mds").read_bytes()


def test_forcing_tiktoken_on_an_ineligible_tokenizer_is_a_clear_error(tmp_path: Path, shared_data: Path):
    from llamactl.errors import UserInputError
    from llamactl.data.tokenize import make_encode_spec

    from llamactl.data.tokenizer import load_tokenizer

    tok = load_tokenizer(shared_data / "tokenizers" / "smollm2")
    tj = json.loads(tok._tokenizer.to_str())
    tj["normalizer"] = {"type": "NFC"}
    from tokenizers import Tokenizer

    tok._tokenizer = Tokenizer.from_str(json.dumps(tj))
    with pytest.raises(UserInputError, match=r"--engine tiktoken cannot reproduce this tokenizer \(has a normalizer\)"):
        make_encode_spec(tok, bos_text="", eos_text=None, add_special_tokens=True, engine="tiktoken")
    spec, _ = make_encode_spec(tok, bos_text="", eos_text=None, add_special_tokens=True, engine="auto")
    assert spec.engine == "tokenizers"
