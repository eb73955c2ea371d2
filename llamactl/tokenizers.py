"""Tokenizer loading shared by every command: ``embedded``, a local folder, or a hub id."""

from __future__ import annotations

from pathlib import Path

from llamactl.errors import ModelNotFoundError
from llamactl.secrets import hf_token

EMBEDDED = "embedded"


def tokenizer_path(name: str) -> str:
    """Resolve ``embedded`` to the bundled tokenizer folder; other names pass through."""
    if name == EMBEDDED:
        from llamactl.data.embedded import embedded_tokenizer_dir

        return str(embedded_tokenizer_dir())
    return name


def load_tokenizer(name: str | Path):
    """A transformers fast tokenizer from ``embedded``, a local folder, or a hub id (token from the
    environment; offline mode honoured). Raises a one-line error when it cannot be found."""
    from transformers import AutoTokenizer

    target = tokenizer_path(str(name))
    local = Path(target).expanduser()
    looks_local = local.exists() or target.startswith((".", "/", "~")) or target.count("/") > 1
    if looks_local and not local.is_dir():
        raise ModelNotFoundError(f"tokenizer folder {target} does not exist")
    try:
        return AutoTokenizer.from_pretrained(str(local) if looks_local else target,
                                             token=None if looks_local else hf_token())
    except OSError as e:
        where = "folder" if looks_local else "hub id"
        raise ModelNotFoundError(f"cannot load tokenizer from {where} {target!r} (offline, or no tokenizer files "
                                 f"there); pass a local tokenizer folder") from e
