"""Content digests of files, each file hashed once per version of it.

Hashing a large file (a 1 GB model's weights, a million-row dataset) takes seconds, so each
file's SHA-256 is remembered in ``<cache_root>/hashes/<prefix><key>.json`` (``key`` from the
resolved root path), keyed by the file's size and modification time: a file that is
rewritten gets a new mtime and is hashed again. The digest covers the files' names relative
to their root and their contents, so two copies of the same files, wherever they lie, agree.

Example:
    >>> from pathlib import Path
    >>> root = Path("models/my-llama")                               # doctest: +SKIP
    >>> digest = files_digest(root, [("config.json", root / "config.json")])  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from fedfm.io import atomic_write_json

_CHUNK = 8 << 20


def files_digest(
    root: Path, files: Sequence[tuple[str, Path]], *, cache: Path | None = None, prefix: str = ""
) -> str:
    """SHA-256 over ``name|sha256(file)`` lines of ``files``, in the order given.

    Args:
        root: the resolved folder (or file) the names are relative to; it keys the cache.
        files: ``(name, path)`` pairs.
        cache: where per-file hashes are remembered; default ``<cache_root>/hashes``.
        prefix: the cache file's name prefix (one kind of digest per prefix).

    Returns:
        64 hex characters.
    """
    store = _cache_file(root, cache, prefix)
    known = _read(store)
    fresh: dict[str, list[int | str]] = {}
    digest = hashlib.sha256()
    for name, path in files:
        stat = path.stat()
        entry = known.get(name)
        if entry is None or entry[:2] != [stat.st_size, stat.st_mtime_ns]:
            entry = [stat.st_size, stat.st_mtime_ns, _file_sha256(path)]
        fresh[name] = entry
        digest.update(f"{name}|{entry[2]}\n".encode())
    if fresh != known:
        with contextlib.suppress(OSError):  # a read-only cache costs a re-hash next time
            atomic_write_json(store, fresh)
    return digest.hexdigest()


def _cache_file(root: Path, cache: Path | None, prefix: str) -> Path:
    if cache is None:
        from fedfm.resources.models import cache_root

        cache = cache_root() / "hashes"
    key = hashlib.sha256(str(root).encode()).hexdigest()[:24]
    return cache / f"{prefix}{key}.json"


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
