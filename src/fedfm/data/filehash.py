"""A dataset file's content digest, hashed once per version of the file.

Hashing a large file takes seconds, so each file's SHA-256 is remembered in
``<cache_root>/hashes/data-*.json`` under its resolved path, keyed by its size and
modification time: a file that is rewritten gets a new mtime and is hashed again. A folder
(``datasets.save_to_disk``) is digested over every file in it, by relative path.

Example:
    >>> digest = data_digest("reviews.parquet")   # doctest: +SKIP
    >>> len(digest)
    64
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

from fedfm.io import atomic_write_json

_CHUNK = 8 << 20


def data_digest(path: str | Path, *, cache: Path | None = None) -> str:
    """SHA-256 over the contents of a file, or the relative names and contents of a folder.

    The digest does not depend on where the data lies, so two copies agree on it.

    Args:
        path: a file, or a folder (every file under it counts).
        cache: where per-file hashes are remembered; default ``<cache_root>/hashes``.

    Returns:
        64 hex characters.
    """
    path = Path(path).expanduser().resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    store = _cache_file(path, cache)
    known = _read(store)
    fresh: dict[str, list[int | str]] = {}
    digest = hashlib.sha256()
    for file in files:
        name = file.relative_to(path).as_posix() if path.is_dir() else ""
        stat = file.stat()
        entry = known.get(name)
        if entry is None or entry[:2] != [stat.st_size, stat.st_mtime_ns]:
            entry = [stat.st_size, stat.st_mtime_ns, _file_sha256(file)]
        fresh[name] = entry
        digest.update(f"{name}|{entry[2]}\n".encode())
    if fresh != known:
        with contextlib.suppress(OSError):  # a read-only cache costs a re-hash next time
            atomic_write_json(store, fresh)
    return digest.hexdigest()


def _cache_file(path: Path, cache: Path | None) -> Path:
    if cache is None:
        from fedfm.resources.models import cache_root

        cache = cache_root() / "hashes"
    key = hashlib.sha256(str(path).encode()).hexdigest()[:24]
    return cache / f"data-{key}.json"


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
