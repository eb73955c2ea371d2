"""Loading a Hugging Face tokenizer (hub id or local folder) with errors a person can act on."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from llamactl.errors import DataError, UserInputError

log = logging.getLogger(__name__)


def load_tokenizer(name_or_path: str | Path) -> Any:
    """A fast ``transformers`` tokenizer from a local folder, a hub id, or ``embedded`` (the bundled one).

    The hub token is taken from ``HF_TOKEN`` / ``HUGGINGFACE_TOKEN`` / ``HUGGINGFACE_HUB_TOKEN`` and is
    never logged. Raises :class:`DataError` when the tokenizer cannot be found (offline, typo, gated).
    """
    from llamactl.secrets import hf_token, scrub

    name = str(name_or_path)
    if name == "embedded":
        from llamactl.data.embedded import embedded_tokenizer_dir

        name = str(embedded_tokenizer_dir())
    if not name.strip():
        raise UserInputError("the tokenizer name is empty; pass a hub id (e.g. meta-llama/Llama-3.2-1B) or a folder")
    path = Path(name).expanduser()
    looks_local = path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local and not path.is_dir():
        raise DataError(f"tokenizer folder {name} does not exist; pass a folder holding tokenizer.json or a hub id")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from transformers import AutoTokenizer

    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    try:
        if looks_local:
            tok = AutoTokenizer.from_pretrained(str(path))
        else:
            # local_files_only: huggingface_hub reads HF_HUB_OFFLINE once at import; honour it now.
            tok = AutoTokenizer.from_pretrained(name, token=hf_token(), local_files_only=offline)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError/ValueError/HTTP errors alike
        hint = ("the hub is unreachable or HF_HUB_OFFLINE=1 is set; pass a local tokenizer folder"
                if offline or not looks_local else "check that the folder holds tokenizer.json")
        log.debug("tokenizer load failed: %s", scrub(str(e)))
        raise DataError(f"tokenizer {name!r} could not be loaded ({hint})") from None
    if not getattr(tok, "is_fast", False) or getattr(tok, "_tokenizer", None) is None:
        raise DataError(f"tokenizer {name!r} has no fast (tokenizers) backend; use a tokenizer with a tokenizer.json")
    tok.model_max_length = int(1e30)  # we pack to our own length; silence "sequence too long" warnings
    return tok


def tokenizer_ref(name_or_path: str | Path) -> str:
    """How a tokenizer is recorded in a manifest: an absolute path for a local folder, else the hub id."""
    path = Path(str(name_or_path)).expanduser()
    return str(path.resolve()) if path.is_dir() else str(name_or_path)


def token_ids_of(tok: Any, text: str | None) -> list[int]:
    """Token ids of a separator text such as ``<|endoftext|>`` (no special tokens added)."""
    if not text:
        return []
    return list(tok(text, add_special_tokens=False)["input_ids"])


def token_dtype(vocab_size: int) -> str:
    """The narrowest MDS token encoding for a vocabulary: ``uint16`` when every id fits, else ``int32``."""
    return "uint16" if vocab_size <= 65536 else "int32"


def vocab_size_of(tok: Any) -> int:
    """Number of ids the tokenizer can emit (base vocabulary plus added tokens)."""
    return int(len(tok))
