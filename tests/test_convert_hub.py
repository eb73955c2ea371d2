"""--push-to-hub: exactly the huggingface_hub calls we expect, against a fake HfApi (never the
real hub); private by default; the token is passed to the client and shown nowhere."""

from __future__ import annotations

import pytest

from convert_support import tiny_pretrained
from llamactl.errors import LlamactlError, UserInputError
from llamactl.services.convert import ConvertRequest, convert

TOKEN = "hf_TESTtokenNEVERshown456"


class FakeApi:
    calls: list = []
    fail_with: str | None = None

    def __init__(self, token=None, **kwargs):
        FakeApi.calls.append(("HfApi", {"token": token, **kwargs}))

    def create_repo(self, **kwargs):
        FakeApi.calls.append(("create_repo", kwargs))
        return f"https://huggingface.co/{kwargs['repo_id']}"

    def upload_folder(self, **kwargs):
        if FakeApi.fail_with:
            raise RuntimeError(FakeApi.fail_with)
        FakeApi.calls.append(("upload_folder", kwargs))

    def upload_file(self, **kwargs):
        FakeApi.calls.append(("upload_file", kwargs))


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    FakeApi.calls = []
    FakeApi.fail_with = None
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return FakeApi


def test_push_folder_private_by_default(tmp_path, fake_hub):
    src = tiny_pretrained(tmp_path / "m")
    res = convert(ConvertRequest(source=str(src), out=tmp_path / "out", push_to_hub="me/tiny"))
    assert res.hub_url == "https://huggingface.co/me/tiny"
    assert fake_hub.calls == [
        ("HfApi", {"token": TOKEN}),
        ("create_repo", {"repo_id": "me/tiny", "repo_type": "model", "private": True, "exist_ok": True}),
        ("upload_folder", {"repo_id": "me/tiny", "repo_type": "model", "folder_path": str(tmp_path / "out"),
                           "commit_message": "Upload out with llamactl convert"}),
    ]


def test_push_gguf_file_public(tmp_path, fake_hub, shared_data):
    from convert_support import tiny_config

    src = tiny_pretrained(tmp_path / "m", tiny_config(vocab_size=49152, hidden_size=32, num_attention_heads=4),
                          tokenizer_from=shared_data / "tokenizers" / "smollm2")
    convert(ConvertRequest(source=str(src), out=tmp_path / "m.gguf", push_to_hub="me/tiny-gguf", private=False))
    assert fake_hub.calls[1][1]["private"] is False
    assert fake_hub.calls[2] == ("upload_file", {"repo_id": "me/tiny-gguf", "repo_type": "model",
                                                 "path_or_fileobj": str(tmp_path / "m.gguf"),
                                                 "path_in_repo": "m.gguf",
                                                 "commit_message": "Upload m.gguf with llamactl convert"})


def test_push_needs_a_token_and_checks_before_work(tmp_path, fake_hub, monkeypatch):
    for var in ("HF_TOKEN", "HUGGINGFACE_TOKEN", "HUGGINGFACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    src = tiny_pretrained(tmp_path / "m")
    with pytest.raises(UserInputError, match="HF_TOKEN"):
        convert(ConvertRequest(source=str(src), out=tmp_path / "out", push_to_hub="me/tiny"))
    assert not (tmp_path / "out").exists() and fake_hub.calls == []
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(UserInputError, match="not a repo id"):
        convert(ConvertRequest(source=str(src), out=tmp_path / "out", push_to_hub="just-a-name"))


def test_upload_failure_keeps_files_and_hides_token(tmp_path, fake_hub):
    fake_hub.fail_with = f"401 Unauthorized for token {TOKEN}"
    src = tiny_pretrained(tmp_path / "m")
    with pytest.raises(LlamactlError) as info:
        convert(ConvertRequest(source=str(src), out=tmp_path / "out", push_to_hub="me/tiny"))
    msg = str(info.value)
    assert TOKEN not in msg and "401" in msg and "kept at" in msg
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_cli_push_never_prints_the_token(tmp_path, fake_hub, capsys):
    from llamactl.cli import main

    src = tiny_pretrained(tmp_path / "m")
    main(["convert", str(src), str(tmp_path / "out"), "--push-to-hub", "me/tiny", "--json"])
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err
    assert '"hub_url": "https://huggingface.co/me/tiny"' in out.out
