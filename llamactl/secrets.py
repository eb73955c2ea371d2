"""Hugging Face tokens: found in the environment, used, never written or shown."""

from __future__ import annotations

import os
import re
from typing import Any

TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGINGFACE_TOKEN", "HUGGINGFACE_HUB_TOKEN")
# A key *named* like a credential (hf_token, api_key, password), not one that merely contains
# "token" (max_new_tokens, eos_token_id).
_SECRET_KEY = re.compile(r"(?:^|_)(token|secret|password|passwd|api_key|apikey|access_key)$", re.IGNORECASE)
REDACTED = "***"


def hf_token() -> str | None:
    """The first Hugging Face token set in the environment, or None."""
    for var in TOKEN_ENV_VARS:
        value = os.environ.get(var)
        if value:
            return value
    return None


def redact(obj: Any) -> Any:
    """A copy of a config tree with every secret-looking key's value, and any token value found
    in the environment, replaced by ``***``. Used before a config is written or shown."""
    token = hf_token()
    if isinstance(obj, dict):
        return {k: (REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) and isinstance(v, str) and v
                    else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, str) and token and token in obj:
        return obj.replace(token, REDACTED)
    return obj


def scrub(text: str) -> str:
    """Remove any token value found in the environment from a piece of text."""
    for var in TOKEN_ENV_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, REDACTED)
    return text
