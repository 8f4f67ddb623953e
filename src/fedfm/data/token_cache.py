"""Token ids of a dataset file, computed once and kept on disk by content key.

The key joins the file's content digest (:func:`~fedfm.data.filehash.data_digest`, itself
cached by size and mtime), the text columns, the tokenizer's identity (its full serialised
vocabulary and rules) and ``max_length``: a second run of the same file with the same model
maps the ids from disk in milliseconds instead of tokenising again. Every row of the file is
tokenised (train and test share the cache); a split or a client indexes into it.

Layout: ``<cache_root>/tokens/<key>/ids.bin`` (raw int32, every row's ids one after
another, written a chunk at a time) and ``offsets.npy`` (int64, ``N + 1``: row ``i`` is
``ids[offsets[i]:offsets[i + 1]]``), written into a temporary folder that is renamed into
place, so a crash leaves no half cache. Both are memory-mapped when read.

Example:
    >>> ids = cached_ids(split.inputs, tokenizer, max_length=64)   # doctest: +SKIP
    >>> ids[0].dtype, len(ids) == len(split)                       # doctest: +SKIP
    (dtype('int64'), True)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from fedfm.data.texts import TextColumn

FORMAT = 2  # bump when the layout or the tokenisation call changes
_CHUNK_ROWS = 4096  # rows tokenised per call (the tokenizer holds a chunk's encodings)
_PER_CALL = ("truncation", "padding")  # a fast tokenizer keeps its last call's settings here
_KEYS: weakref.WeakKeyDictionary[Any, tuple[int, str]] = weakref.WeakKeyDictionary()


class RaggedIds(Sequence[np.ndarray]):
    """Variable-length rows of token ids over one flat array, optionally a subset of rows.

    Args:
        flat: every row's ids one after another (int32, possibly memory-mapped).
        offsets: int64 ``(R + 1,)``: row ``r`` is ``flat[offsets[r]:offsets[r + 1]]``.
        rows: which rows this sequence holds, in order; ``None`` = all ``R``.
    """

    def __init__(self, flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray | None = None):
        self.flat = flat
        self.offsets = offsets
        self.rows = rows

    def __len__(self) -> int:
        return len(self.offsets) - 1 if self.rows is None else len(self.rows)

    @overload
    def __getitem__(self, index: int | np.integer) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice | Sequence[int] | np.ndarray) -> RaggedIds: ...

    def __getitem__(self, index: Any) -> np.ndarray | RaggedIds:
        if isinstance(index, int | np.integer):
            r = int(index if self.rows is None else self.rows[index])
            r = r + len(self) if r < 0 else r
            return np.asarray(self.flat[self.offsets[r] : self.offsets[r + 1]], dtype=np.int64)
        rows = np.arange(len(self.offsets) - 1) if self.rows is None else self.rows
        return RaggedIds(self.flat, self.offsets, rows[index])

    def lengths(self) -> np.ndarray:
        """Tokens per row, int64 ``(len,)``."""
        per_row = np.diff(self.offsets)
        return per_row if self.rows is None else per_row[self.rows]

    def __add__(self, other: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``self`` then ``other`` as a plain list (pools joined for attacks, synthetic data)."""
        return list(self) + list(other)

    def __radd__(self, other: Sequence[np.ndarray]) -> list[np.ndarray]:
        return list(other) + list(self)


def tokenizer_key(tokenizer: Any) -> str:
    """SHA-256 of what decides a tokenizer's ids: its class, vocabulary, rules and options.

    Serialising a vocabulary takes a few hundred milliseconds, so the key is remembered per
    tokenizer object (and its size: adding a token makes a new key).
    """
    try:
        known = _KEYS.get(tokenizer)
    except TypeError:  # not weakly referenceable: no memo
        return _tokenizer_key(tokenizer)
    if known is not None and known[0] == len(tokenizer):
        return known[1]
    key = _tokenizer_key(tokenizer)
    _KEYS[tokenizer] = (len(tokenizer), key)
    return key


def _tokenizer_key(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # without the per-call state each call leaves behind
        state = json.loads(backend.to_str())
        body = json.dumps({k: v for k, v in state.items() if k not in _PER_CALL}, sort_keys=True)
    else:  # a slow tokenizer: its vocabulary and where it came from
        body = json.dumps(
            [getattr(tokenizer, "name_or_path", ""), sorted(tokenizer.get_vocab().items())]
        )
    head = [type(tokenizer).__name__, getattr(tokenizer, "truncation_side", "right")]
    return hashlib.sha256((json.dumps(head) + body).encode()).hexdigest()


def cached_ids(
    texts: TextColumn, tokenizer: Any, *, max_length: int, cache: Path | None = None
) -> RaggedIds:
    """Token ids of ``texts`` (truncated to ``max_length``), from the cache or made and cached.

    Args:
        texts: a column of a dataset file (its ``key`` names the file and columns; an empty
            key is tokenised in memory, uncached).
        tokenizer: a Hugging Face tokenizer.
        max_length: truncation length, as ``encode``'s.
        cache: the cache folder; default ``<cache_root>/tokens``.

    Returns:
        One int64 array per item of ``texts``, in order.
    """
    if not texts.key:  # no file behind it: tokenise in a scratch folder, keep it in memory
        with tempfile.TemporaryDirectory(prefix="fedfm-tokens-") as scratch:
            offsets = _tokenize(texts, tokenizer, max_length, Path(scratch) / "ids.bin")
            flat = np.fromfile(Path(scratch) / "ids.bin", dtype=np.int32)
        return RaggedIds(flat, offsets)
    folder = _cache_dir(cache) / content_key(texts, tokenizer, max_length)
    if not (folder / "offsets.npy").is_file():
        whole = TextColumn(texts.text, texts.pair)  # every row: train and test share it
        _write(folder, whole, tokenizer, max_length)
    offsets = np.load(folder / "offsets.npy", mmap_mode="r")
    return RaggedIds(_ids(folder / "ids.bin"), offsets, texts.source_rows)


def content_key(texts: TextColumn, tokenizer: Any, max_length: int) -> str:
    """The cache key: file digest, columns, tokenizer identity and ``max_length``."""
    from fedfm.data.filehash import data_digest

    path, text_column, pair_column = json.loads(texts.key)
    parts = [FORMAT, data_digest(path), text_column, pair_column]
    parts += [tokenizer_key(tokenizer), max_length]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def _tokenize(texts: TextColumn, tokenizer: Any, max_length: int, out: Path) -> np.ndarray:
    """Write the ids of every item of ``texts`` to ``out`` (raw int32, a chunk at a time, so
    memory holds one chunk) and return the int64 offsets ``(len + 1,)``."""
    sizes: list[np.ndarray] = []
    with out.open("wb") as f:
        for start in range(0, len(texts), _CHUNK_ROWS):
            first, second = texts.columns(start, start + _CHUNK_ROWS)
            args = (first,) if second is None else (first, second)
            ids = tokenizer(
                *args,
                truncation=True,
                max_length=max_length,
                return_attention_mask=False,  # only the ids are kept: half the conversion
                return_token_type_ids=False,
            )["input_ids"]
            lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            flat = itertools.chain.from_iterable(ids)
            f.write(np.fromiter(flat, dtype=np.int32, count=int(lengths.sum())).tobytes())
            sizes.append(lengths)
    per_row = np.concatenate(sizes) if sizes else np.zeros(0, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(per_row)]).astype(np.int64)


def _write(folder: Path, texts: TextColumn, tokenizer: Any, max_length: int) -> None:
    """Tokenise into a temporary sibling of ``folder`` and rename it into place (atomic)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        offsets = _tokenize(texts, tokenizer, max_length, tmp / "ids.bin")
        np.save(tmp / "offsets.npy", offsets)
        os.replace(tmp, folder)
    except OSError:
        if not (folder / "offsets.npy").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a rename; left by a lost race


def _ids(path: Path) -> np.ndarray:
    """The raw int32 ids, memory-mapped (an empty file, which cannot be mapped, as [])."""
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=np.int32)
    return np.memmap(path, dtype=np.int32, mode="r")


def _cache_dir(cache: Path | None) -> Path:
    if cache is not None:
        return cache
    from fedfm.resources.models import cache_root

    return cache_root() / "tokens"
