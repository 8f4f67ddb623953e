"""A model folder's content digest: its weights, config and tokenizer files, hashed once.

Hashing a 1 GB folder takes seconds, so each file's SHA-256 is cached in
``<cache_root>/hashes/`` under the folder's resolved path, keyed by the file's size and
modification time: a file that is rewritten gets a new mtime and is hashed again.

Example:
    >>> digest = folder_digest("models/my-llama")   # doctest: +SKIP
    >>> len(digest)
    64
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

from fedfm.io import atomic_write_json

# Files that decide what the backbone computes: weights (single or sharded), the config
# and the tokenizer. Anything else in the folder (README, training args) is ignored.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json")
SIDE_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
_CHUNK = 8 << 20


def weight_files(folder: Path) -> list[Path]:
    """The folder's weight files (``model.safetensors``, shards, ``pytorch_model.bin``)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def folder_digest(folder: str | Path, *, cache: Path | None = None) -> str:
    """SHA-256 over the names and contents of ``folder``'s weight, config and tokenizer files.

    The digest does not depend on where the folder lies, so two machines holding the same
    files agree on it.

    Args:
        folder: a Hugging Face model folder.
        cache: where per-file hashes are remembered; default ``<cache_root>/hashes``.

    Returns:
        64 hex characters.
    """
    folder = Path(folder).expanduser().resolve()
    files = weight_files(folder) + [
        folder / name for name in SIDE_FILES if (folder / name).is_file()
    ]
    store = _cache_file(folder, cache)
    known = _read(store)
    fresh: dict[str, list[int | str]] = {}
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        stat = path.stat()
        entry = known.get(path.name)
        if entry is None or entry[:2] != [stat.st_size, stat.st_mtime_ns]:
            entry = [stat.st_size, stat.st_mtime_ns, _file_sha256(path)]
        fresh[path.name] = entry
        digest.update(f"{path.name}|{entry[2]}\n".encode())
    if fresh != known:
        with contextlib.suppress(OSError):  # a read-only cache costs a re-hash next time
            atomic_write_json(store, fresh)
    return digest.hexdigest()


def _cache_file(folder: Path, cache: Path | None) -> Path:
    if cache is None:
        from fedfm.resources.models import cache_root

        cache = cache_root() / "hashes"
    key = hashlib.sha256(str(folder).encode()).hexdigest()[:24]
    return cache / f"{key}.json"


def _read(store: Path) -> dict[str, list[int | str]]:
    try:
        data = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
