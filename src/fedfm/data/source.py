"""Open the user's dataset file as a memory-mapped Arrow table, or say clearly why not.

``data.dataset`` (and ``fedfm join --data``) takes a CSV, TSV, JSON Lines (or JSON array),
Parquet or plain-text file (one document per non-blank line, column ``text``), or a folder
written by ``datasets``' ``save_to_disk``. Files are read with
the Hugging Face ``datasets`` library, which converts them once into Arrow files under
``<cache_root>/datasets`` and memory-maps them: a million rows cost pages of a file, not
Python objects.

Example:
    >>> table = open_table("reviews.csv", what="data.dataset = 'reviews.csv'")  # doctest: +SKIP
    >>> table.columns, table.test_from                                          # doctest: +SKIP
    (['text', 'label'], None)
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedfm.errors import ConfigError

if TYPE_CHECKING:
    import datasets

# suffix -> the `datasets` reader that takes it
READERS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".txt": "text",  # one document per non-blank line, in a column named "text"
}
# Rows per record batch of the Arrow cache. Opening a memory-mapped Arrow stream reads each
# batch's header, and the kernel's read-ahead around those reads pulls in the pages between:
# with `datasets`' default 1,000-row batches, opening a million-row file made all of it
# resident (55 MB); with 100,000-row batches, under 1 MB.
BATCH_ROWS = 100_000
ACCEPTED = "a .csv, .tsv, .jsonl, .json, .parquet or .txt file, or a folder from save_to_disk"


@dataclass(frozen=True)
class Table:
    """A dataset file opened as Arrow.

    Attributes:
        data: every row, memory-mapped (a folder's ``train`` then ``test`` split, if it
            held a ``DatasetDict``).
        path: the resolved file or folder.
        test_from: row where a ``DatasetDict``'s ``test`` split starts; ``None`` if the
            source has no splits of its own.
    """

    data: datasets.Dataset
    path: Path
    test_from: int | None = None

    @property
    def columns(self) -> list[str]:
        return list(self.data.column_names)


def looks_like_path(name: str) -> bool:
    """Whether ``data.dataset = name`` means a file or folder rather than a registry name."""
    path = Path(name).expanduser()
    return "/" in name or "\\" in name or bool(path.suffix) or path.exists()


def open_table(path: str | Path, *, what: str) -> Table:
    """Open ``path`` as Arrow (converted once, cached, memory-mapped).

    Args:
        path: the file or ``save_to_disk`` folder.
        what: how the user named it, for messages, e.g. ``"data.dataset = 'x.csv'"``.

    Raises:
        ConfigError: a missing path, a suffix fedfm cannot read, an empty file, a folder
            not written by ``save_to_disk``, a malformed JSON line (with its 1-based line
            number) or CSV, or a file with no rows.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(
            f"{what}: no such file or folder ({path.resolve()}); give the path of "
            f"{ACCEPTED} (a relative path starts at {Path.cwd()})"
        )
    path = path.resolve()
    table = _open_folder(path, what) if path.is_dir() else Table(_open_file(path, what), path)
    if table.data.num_rows == 0:
        raise ConfigError(f"{what}: {path.name} holds no rows (a header only?); add examples")
    return table


def _open_file(path: Path, what: str) -> datasets.Dataset:
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise ConfigError(
            f"{what}: fedfm cannot read '{suffix or path.name}' files; give {ACCEPTED} "
            "(rename the file if it is one of these)"
        )
    if path.stat().st_size == 0:
        raise ConfigError(f"{what}: {path.name} is empty (0 bytes); write the examples into it")
    import datasets

    reader = {
        "csv": datasets.Dataset.from_csv,
        "json": datasets.Dataset.from_json,
        "parquet": datasets.Dataset.from_parquet,
        "text": datasets.Dataset.from_text,
    }[READERS[suffix]]
    kwargs: dict[str, Any] = {"writer_batch_size": BATCH_ROWS}
    if suffix == ".tsv":
        kwargs["sep"] = "\t"
    try:
        with _quiet():
            ds = reader(str(path), cache_dir=str(_arrow_cache()), **kwargs)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - every reader failure becomes one clear line
        raise _read_error(path, what, err) from None
    if READERS[suffix] == "text":
        with _quiet():
            ds = ds.filter(_not_blank, batched=True, writer_batch_size=BATCH_ROWS)
    return _flat(ds)


def _not_blank(batch: dict[str, list[str]]) -> list[bool]:
    return [bool(line.strip()) for line in batch["text"]]


def _open_folder(path: Path, what: str) -> Table:
    import datasets

    try:
        with _quiet():
            loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise ConfigError(
            f"{what}: {path} is a folder but not one written by datasets' save_to_disk (no "
            f"dataset_info.json / state.json); give {ACCEPTED}"
        ) from None
    if isinstance(loaded, datasets.Dataset):
        return Table(_flat(loaded), path)
    if "train" not in loaded:
        raise ConfigError(
            f"{what}: {path.name} holds the splits {sorted(loaded)} but no 'train'; save a "
            "DatasetDict with 'train' (and optionally 'test') or a single Dataset"
        )
    if "test" not in loaded:
        return Table(_flat(loaded["train"]), path)
    train, test = _flat(loaded["train"]), _flat(loaded["test"])
    if train.features != test.features:
        raise ConfigError(
            f"{what}: {path.name}'s 'train' and 'test' splits have different columns or types "
            f"({train.features} vs {test.features}); save them with the same features"
        )
    return Table(datasets.concatenate_datasets([train, test]), path, test_from=len(train))


def _flat(ds: datasets.Dataset) -> datasets.Dataset:
    """``ds`` without an indices mapping (a ``select``ed dataset), so rows are table rows."""
    if ds._indices is None:
        return ds
    with _quiet():
        return ds.flatten_indices(writer_batch_size=BATCH_ROWS)


def _read_error(path: Path, what: str, err: Exception) -> ConfigError:
    """One line for a reader's failure: the JSON line at fault, or the parser's own words."""
    cause = err.__cause__ or err.__context__ or err
    if "corresponds to no data" in str(err):  # `datasets` on a header without rows
        return ConfigError(f"{what}: {path.name} holds no rows (a header only?); add examples")
    if READERS[path.suffix.lower()] == "json":
        bad = bad_json_line(path)
        if bad is not None:
            line, problem = bad
            return ConfigError(
                f"{what}: {path.name} line {line} is not a JSON object ({problem}); fix or "
                "delete that line (JSON Lines: one object per line)"
            )
    detail = " ".join(str(cause).split())[:300]
    kind = READERS[path.suffix.lower()].replace("csv", "CSV").replace("json", "JSON")
    return ConfigError(
        f"{what}: {path.name} could not be read as {kind} ({type(cause).__name__}: {detail}); "
        "check the file's format and that every row has the same fields and types"
    )


def bad_json_line(path: Path) -> tuple[int, str] | None:
    """The first line of a JSON Lines file that is not a JSON object: ``(1-based line,
    problem)``; ``None`` if every line is one, or the file is one JSON array."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            if number == 1 and line.startswith(b"["):
                return None  # a JSON array, not JSON Lines: the reader's message stands
            try:
                obj = json.loads(line)
            except ValueError as err:
                return number, str(err)
            if not isinstance(obj, dict):
                return number, f"a {type(obj).__name__}, not an object"
    return None


def _arrow_cache() -> Path:
    from fedfm.resources.models import cache_root

    return cache_root() / "datasets"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars or error logs from ``datasets`` while it reads (fedfm reports)."""
    import datasets

    bars_were_on = datasets.is_progress_bar_enabled()
    logger = logging.getLogger("datasets")
    level = logger.level
    datasets.disable_progress_bars()
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
        if bars_were_on:
            datasets.enable_progress_bars()
