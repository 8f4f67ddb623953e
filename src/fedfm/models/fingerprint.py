"""A model folder's content digest: its weights, config and tokenizer files, hashed once.

Hashing a 1 GB folder takes seconds, so each file's SHA-256 is cached (:mod:`fedfm.filehash`)
under the folder's resolved path, keyed by the file's size and modification time: a file
that is rewritten gets a new mtime and is hashed again.

Example:
    >>> digest = folder_digest("models/my-llama")   # doctest: +SKIP
    >>> len(digest)
    64
"""

from __future__ import annotations

from pathlib import Path

from fedfm.filehash import files_digest

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
    named = [(path.name, path) for path in sorted(files, key=lambda p: p.name)]
    return files_digest(folder, named, cache=cache)
