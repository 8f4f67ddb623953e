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

from pathlib import Path

from fedfm.filehash import files_digest


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
    if not path.is_dir():
        return files_digest(path, [("", path)], cache=cache, prefix="data-")
    files = sorted(p for p in path.rglob("*") if p.is_file())
    named = [(file.relative_to(path).as_posix(), file) for file in files]
    return files_digest(path, named, cache=cache, prefix="data-")
