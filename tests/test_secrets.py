"""Secrets never reach a config copy or a log line."""

from llamactl.secrets import redact, scrub


def test_redact_hides_credentials_but_not_token_counts(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefSECRET123")
    tree = {"hf_token": "hf_abcdefSECRET123", "loggers": {"wandb": {"api_key": "k-123"}},
            "sample_max_new_tokens": 32, "model": {"use_auth_token": True, "eos_token_id": 2},
            "note": "uses hf_abcdefSECRET123 inline", "list": ["hf_abcdefSECRET123"]}
    out = redact(tree)
    assert out["hf_token"] == "***" and out["loggers"]["wandb"]["api_key"] == "***"
    assert out["sample_max_new_tokens"] == 32
    assert out["model"] == {"use_auth_token": True, "eos_token_id": 2}
    assert out["note"] == "uses *** inline" and out["list"] == ["***"]


def test_scrub_removes_the_token_from_text(monkeypatch):
    monkeypatch.setenv("HUGGINGFACE_HUB_TOKEN", "hf_zzzTOKENzzz")
    assert scrub("401 for hf_zzzTOKENzzz at url") == "401 for *** at url"
