"""Where documents come from: C4 (hub or a local copy), JSON lines, plain text, parquet.

C4 from the hub and C4 from ``--source DIR`` go through one code path: an ``fsspec`` filesystem
(``HfFileSystem`` for ``hf://datasets/allenai/c4``, the local filesystem for a folder laid out like
the C4 repository) is globbed for ``<subset>/c4-<split>.*.json.gz`` and each file is streamed
through gzip, line by line; nothing is downloaded ahead. JSON lines reach the tokenizer workers
as raw bytes, so parsing happens in the workers too.
"""

from __future__ import annotations

import gzip
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from llamactl.data.tokenize import RawBatch
from llamactl.errors import DataError, UserInputError

log = logging.getLogger(__name__)

C4_REPO = "allenai/c4"
# Our split name -> the C4 file split it is cut from.
C4_SPLITS = {"train": "train", "train_small": "train", "val": "validation", "val_small": "validation",
             "val_xsmall": "validation", "validation": "validation"}
JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson", ".ndjson.gz")
TEXT_SUFFIXES = (".txt", ".txt.gz", ".md", ".text")
PARQUET_SUFFIXES = (".parquet",)


def local_fs() -> Any:
    from fsspec.implementations.local import LocalFileSystem

    return LocalFileSystem()


def hub_fs() -> Any:
    """An ``HfFileSystem`` authenticated with the token from the environment (never logged)."""
    from huggingface_hub import HfFileSystem

    from llamactl.secrets import hf_token

    return HfFileSystem(token=hf_token())


@dataclass
class FileSet:
    """Files of one source, on one filesystem, with progress in compressed bytes."""

    fs: Any
    files: list[str]
    sizes: list[int] = field(default_factory=list)
    done_bytes: int = 0
    _current: Any = None

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)

    def fraction(self) -> float | None:
        """Fraction of the input read so far (by compressed bytes), or None if sizes are unknown."""
        total = self.total_bytes
        if not total:
            return None
        pos = 0
        try:
            pos = self._current.tell() if self._current is not None else 0
        except (OSError, ValueError):
            pos = 0
        return min(1.0, (self.done_bytes + pos) / total)

    def open(self, i: int) -> io.BufferedIOBase:
        try:
            raw = self.fs.open(self.files[i], "rb")
        except Exception as e:  # noqa: BLE001 - local OSError or the hub's HTTP errors alike
            from llamactl.secrets import scrub

            raise DataError(f"cannot open {self.files[i]} ({type(e).__name__}: {scrub(str(e))[:120]}); check the "
                            f"path, the network and HF_TOKEN") from None
        self._current = raw
        if self.files[i].endswith(".gz"):
            return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
        if self.files[i].endswith(".zst"):
            raise DataError(f"{self.files[i]}: .zst files are not supported; decompress it or use .gz")
        return raw

    def finish(self, i: int) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
        if i < len(self.sizes):
            self.done_bytes += self.sizes[i]


def c4_files(split: str, *, source: str | Path | None = None, subset: str = "en", fs: Any = None) -> FileSet:
    """The C4 ``json.gz`` files of one C4 split (``train`` or ``validation``), in order.

    Args:
        split: ``train`` or ``validation`` (the files' own split names).
        source: a local folder laid out like the C4 repository (``en/c4-train.*.json.gz``); None
            streams ``allenai/c4`` from the hub.
        subset: the C4 variant folder (``en``, ``en.noblocklist``, ``realnewslike``...).
        fs: a filesystem to use instead (tests pass an in-memory one standing in for the hub).
    """
    if source is not None:
        root = Path(source).expanduser()
        if not root.is_dir():
            raise DataError(f"--source {root} is not a folder; pass a folder laid out like allenai/c4 "
                            f"({subset}/c4-train.*.json.gz)")
        fs = fs or local_fs()
        base = str(root.resolve())
    else:
        fs = fs or hub_fs()
        base = f"datasets/{C4_REPO}"
    pattern = f"{base}/{subset}/c4-{split}.*.json.gz"
    try:
        files = sorted(fs.glob(pattern))
    except Exception as e:  # noqa: BLE001 - network/auth errors of the hub filesystem
        raise DataError(f"cannot list {C4_REPO} on the hub ({type(e).__name__}); check the network and "
                        f"HF_TOKEN, or pass --source DIR with a local copy") from None
    if not files and source is not None:
        # Accept a folder that holds the files directly (no subset sub-folder).
        files = sorted(fs.glob(f"{base}/c4-{split}.*.json.gz"))
    if not files:
        where = f"{source}" if source is not None else f"hf://datasets/{C4_REPO}"
        raise DataError(f"no c4-{split}.*.json.gz files under {where}/{subset}; check --source and --subset")
    sizes = []
    for f in files:
        try:
            sizes.append(int(fs.size(f)))
        except Exception:  # noqa: BLE001 - sizes only drive the progress bar
            sizes = []
            break
    return FileSet(fs=fs, files=files, sizes=sizes)


def local_files(paths: list[str | Path], suffixes: tuple[str, ...], what: str) -> FileSet:
    """Local input files: each path is a file or a folder (searched recursively for ``suffixes``)."""
    if not paths:
        raise UserInputError(f"no input given; pass one or more {what} files or folders")
    files: list[str] = []
    for p in paths:
        path = Path(p).expanduser()
        if path.is_dir():
            found = sorted(str(f) for f in path.rglob("*") if f.is_file() and f.name.endswith(suffixes))
            if not found:
                raise DataError(f"folder {path} holds no {what} files ({', '.join(suffixes)})")
            files.extend(found)
        elif path.is_file():
            files.append(str(path))
        else:
            raise DataError(f"input {path} does not exist; check the path")
    for f in files:
        if Path(f).stat().st_size == 0:
            raise DataError(f"input file {f} is empty; remove it or fill it")
    return FileSet(fs=local_fs(), files=files, sizes=[Path(f).stat().st_size for f in files])


Router = Callable[[int], str]


def fraction_router(val_fraction: float, train: str = "train", val: str = "val") -> Router:
    """Send an evenly spread ``val_fraction`` of documents (by index) to ``val``, the rest to ``train``."""
    if not 0.0 <= val_fraction < 1.0:
        raise UserInputError(f"--val-fraction must be in [0, 1), got {val_fraction}")

    def route(i: int) -> str:
        return val if int((i + 1) * val_fraction) > int(i * val_fraction) else train

    return route


def json_line_batches(fileset: FileSet, *, field: str, route: Router, batch_bytes: int = 1 << 20,
                      start_index: int = 0) -> Iterator[RawBatch]:
    """Raw JSON lines of every file, grouped into batches of about ``batch_bytes`` per split."""
    buffers: dict[str, list[bytes]] = {}
    sizes: dict[str, int] = {}
    doc = start_index
    for i, name in enumerate(fileset.files):
        nonempty = False
        with fileset.open(i) as f:
            try:
                for line in _lines(f):
                    if not line.strip():
                        continue
                    nonempty = True
                    split = route(doc)
                    doc += 1
                    buf = buffers.setdefault(split, [])
                    buf.append(line)
                    sizes[split] = sizes.get(split, 0) + len(line)
                    if sizes[split] >= batch_bytes:
                        yield RawBatch(items=buf, split=split, field=field, where=name, nbytes=sizes[split])
                        buffers[split], sizes[split] = [], 0
            except (OSError, EOFError) as e:
                raise DataError(f"{name} cannot be read ({e}); is it a complete gzip/JSON-lines file?") from None
        fileset.finish(i)
        if not nonempty:
            raise DataError(f"input file {name} holds no records; remove it or fill it")
        for split, buf in list(buffers.items()):  # flush at file ends so errors name the right file
            if buf:
                yield RawBatch(items=buf, split=split, field=field, where=name, nbytes=sizes[split])
                buffers[split], sizes[split] = [], 0


def _lines(f: Any, chunk: int = 1 << 22) -> Iterator[bytes]:
    """Lines of a binary stream, read in large chunks (``readline`` on a gzip stream is 3x slower)."""
    carry = b""
    while True:
        block = f.read(chunk)
        if not block:
            break
        parts = (carry + block).split(b"\n")
        carry = parts.pop()
        yield from parts
    if carry:
        yield carry


def text_batches(fileset: FileSet, *, route: Router, unit: str = "file",
                 batch_bytes: int = 1 << 20) -> Iterator[RawBatch]:
    """Plain-text documents: one per file (``unit="file"``), per non-empty line, or per blank-line paragraph."""
    if unit not in ("file", "line", "paragraph"):
        raise UserInputError(f"--unit must be file, line or paragraph, got {unit!r}")
    buffers: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    doc = 0
    for i, name in enumerate(fileset.files):
        with fileset.open(i) as f:
            try:
                text = f.read().decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{name} is not UTF-8 text; convert it or pass another file") from None
        fileset.finish(i)
        if unit == "file":
            docs = [text] if text.strip() else []
        elif unit == "line":
            docs = [ln for ln in text.splitlines() if ln.strip()]
        else:
            docs = [p.strip("\n") for p in text.split("\n\n") if p.strip()]
        if not docs:
            raise DataError(f"input file {name} holds no text; remove it or fill it")
        for d in docs:
            split = route(doc)
            doc += 1
            buffers.setdefault(split, []).append(d)
            sizes[split] = sizes.get(split, 0) + len(d)
            if sizes[split] >= batch_bytes:
                yield RawBatch(items=buffers[split], split=split, where=name, nbytes=sizes[split])
                buffers[split], sizes[split] = [], 0
        for split, buf in list(buffers.items()):
            if buf:
                yield RawBatch(items=buf, split=split, where=name, nbytes=sizes[split])
                buffers[split], sizes[split] = [], 0


def parquet_batches(fileset: FileSet, *, field: str, route: Router, rows_per_batch: int = 2048) -> Iterator[RawBatch]:
    """Text column ``field`` of parquet files, read in record batches (needs ``pyarrow``)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserInputError("reading parquet needs pyarrow; install it with `pip install pyarrow`") from None
    doc = 0
    for i, name in enumerate(fileset.files):
        try:
            pf = pq.ParquetFile(name)
        except Exception as e:  # noqa: BLE001 - pyarrow raises its own error types
            raise DataError(f"{name} is not a readable parquet file ({type(e).__name__})") from None
        names = pf.schema_arrow.names
        if field not in names:
            raise DataError(f"{name} has no column {field!r} (it has: {', '.join(names)}); "
                            f"pass --field with one of those")
        if pf.metadata.num_rows == 0:
            raise DataError(f"input file {name} holds no rows; remove it or fill it")
        for rb in pf.iter_batches(batch_size=rows_per_batch, columns=[field]):
            texts = rb.column(0).to_pylist()
            if texts and not all(isinstance(t, str) for t in texts if t is not None):
                raise DataError(f"{name}: column {field!r} does not hold text; pass --field naming a text column")
            per: dict[str, list[str]] = {}
            for t in texts:
                if t is None:
                    continue
                per.setdefault(route(doc), []).append(t)
                doc += 1
            for split, items in per.items():
                yield RawBatch(items=items, split=split, where=name, nbytes=sum(map(len, items)))
        fileset.done_bytes += fileset.sizes[i] if i < len(fileset.sizes) else 0
