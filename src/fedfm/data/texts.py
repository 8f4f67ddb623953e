"""A column of texts that stays in Arrow: a dataset file's texts, read only when asked for.

A million-row file held as ``list[str]`` costs a Python object per row (about 50 bytes
each beyond the text itself); a :class:`TextColumn` holds the memory-mapped Arrow column
and, for a split or a client, an int64 array of row numbers. Indexing by an int gives one
``str``; indexing by an index array or a slice gives a smaller column without copying
any text.

Example:
    >>> import pyarrow as pa
    >>> col = TextColumn(pa.chunked_array([["a", "b", "c", "d"]]))
    >>> col[1], len(col[[3, 0]]), list(col[[3, 0]])
    ('b', 2, ['d', 'a'])
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

PAIR_SEPARATOR = "\n"  # between a pair's two texts where one string stands for the pair
_CHUNK_ROWS = 8192  # rows converted to Python strings at a time when iterating


class TextColumn(Sequence[str]):
    """Texts of an Arrow column (and optionally a second, paired column), lazily.

    Args:
        text: the texts of every row of the source table.
        pair: the second text of each row (sentence pairs), or ``None``.
        rows: which rows of the source this column holds, in order; ``None`` = all.
        key: identifies the source's content and columns (the tokenisation cache key);
            empty when unknown.

    A pair reads as one string, the two texts joined by a newline, where a single string
    is needed (triggers, synthetic data); tokenisation encodes it as a real pair.
    """

    def __init__(
        self,
        text: pa.ChunkedArray,
        pair: pa.ChunkedArray | None = None,
        *,
        rows: np.ndarray | None = None,
        key: str = "",
    ) -> None:
        self.text = text
        self.pair = pair
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.key = key

    def __len__(self) -> int:
        return len(self.text) if self.rows is None else len(self.rows)

    @property
    def source_rows(self) -> np.ndarray:
        """The row numbers in the source table of this column's items, int64 ``(len,)``."""
        return np.arange(len(self.text), dtype=np.int64) if self.rows is None else self.rows

    @overload
    def __getitem__(self, index: int | np.integer) -> str: ...

    @overload
    def __getitem__(self, index: slice | Sequence[int] | np.ndarray) -> TextColumn: ...

    def __getitem__(self, index: Any) -> str | TextColumn:
        if isinstance(index, int | np.integer):
            i = int(index)
            if not -len(self) <= i < len(self):
                raise IndexError(f"row {i} is out of range for {len(self)} texts")
            row = int(self.source_rows[i])
            return self._join([self.text[row].as_py()], self._pair_at([row]))[0]
        rows = self.source_rows[index]
        return TextColumn(self.text, self.pair, rows=rows, key=self.key)

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self), _CHUNK_ROWS):
            yield from self.batch(start, start + _CHUNK_ROWS)

    def batch(self, start: int, stop: int) -> list[str]:
        """Items ``start:stop`` as Python strings (one conversion for the whole range)."""
        texts, pairs = self.columns(start, stop)
        return self._join(texts, pairs)

    def columns(self, start: int, stop: int) -> tuple[list[str], list[str] | None]:
        """Items ``start:stop`` as ``(texts, pairs)``; ``pairs`` is ``None`` without pairs."""
        rows = self.source_rows[start:stop]
        texts = _take(self.text, rows, contiguous=self.rows is None)
        pairs = None if self.pair is None else _take(self.pair, rows, self.rows is None)
        return texts, pairs

    def _pair_at(self, rows: list[int]) -> list[str] | None:
        return None if self.pair is None else [self.pair[r].as_py() for r in rows]

    @staticmethod
    def _join(texts: list[str], pairs: list[str] | None) -> list[str]:
        if pairs is None:
            return texts
        return [f"{a}{PAIR_SEPARATOR}{b}" for a, b in zip(texts, pairs, strict=True)]

    def __repr__(self) -> str:
        pair = ", paired" if self.pair is not None else ""
        return f"TextColumn({len(self)} of {len(self.text)} rows{pair})"


def _take(column: pa.ChunkedArray, rows: np.ndarray, contiguous: bool) -> list[str]:
    """``column[rows]`` as Python strings: a zero-copy slice when the rows are a range."""
    if len(rows) == 0:
        return []
    if contiguous:
        return column.slice(int(rows[0]), len(rows)).to_pylist()
    return column.take(rows).to_pylist()
