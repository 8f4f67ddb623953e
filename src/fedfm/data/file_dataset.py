"""The user's dataset file as a :class:`~fedfm.resources.types.Dataset`, columns named by config.

The ``data.*_column`` keys name the columns (see ``DataConfig``): a text (and optionally a
second text, for pairs), a label (class names or integer ids), an optional group (the
``natural`` partition's client id) and an optional split (``train``/``test``). Without a
split column (or a ``DatasetDict``'s own ``test``), a seeded test set is held out exactly as
for the registry's datasets (:func:`~fedfm.datasets.split_indices`, fixed
``SPLIT_SEED``), stratified by label and, if there is one, by group.

``data.task = "auto"`` reads a file with a chosen and a rejected column as preference, else a
file with a messages column, or a prompt and a response column, as instruction (unless it
also has both the text and the label column), else a file with a label column as
classification, a file without one as causal LM (every text a training document). An
instruction file's rows are conversations (:func:`~fedfm.data.columns.conversations`), a
preference file's prompt, chosen and rejected responses
(:func:`~fedfm.data.columns.preference_pairs`), held in memory as Python lists; the label
column, if the file has it, gives each row a category.

Texts stay in Arrow (:class:`~fedfm.data.texts.TextColumn`); labels and groups become
numpy arrays. Rows are taken as they are: repeated texts are not dropped.

Example:
    >>> from fedfm.config import DataConfig
    >>> cfg = DataConfig(dataset="reviews.csv", group_column="shop")
    >>> ds = read_file_dataset(cfg)                            # doctest: +SKIP
    >>> ds.task, ds.label_names, len(ds.train) + len(ds.test)  # doctest: +SKIP
    ('classification', ('negative', 'positive'), 1200)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from fedfm.config import DataConfig
from fedfm.data.columns import (
    check_text,
    conversations,
    group_ids,
    label_ids,
    preference_pairs,
    prompt_response,
    test_mask,
)
from fedfm.data.source import Table, open_table
from fedfm.data.texts import TextColumn
from fedfm.datasets import split_indices
from fedfm.errors import ConfigError, closest
from fedfm.resources.types import (
    CAUSAL_LM,
    CLASSIFICATION,
    INSTRUCTION,
    PREFERENCE,
    Conversation,
    Dataset,
    PreferencePair,
    Split,
)

DEFAULT_LABEL_COLUMN = "label"
LABEL_PARTITIONS = ("dirichlet", "shards")  # the partitions that need class labels
CHAT_TASKS = (INSTRUCTION, PREFERENCE)  # rows held as Python objects; labels are categories


@dataclass(frozen=True)
class FileSpec:
    """How to read one dataset file: the path, the columns and how to phrase problems.

    Attributes:
        path: the file or ``save_to_disk`` folder.
        task: ``auto``, ``classification``, ``causal_lm``, ``instruction`` or ``preference``.
        text, pair, label, group, split: column names (``""``: none).
        prompt, response, messages: an instruction file's column names.
        chosen, rejected: a preference file's response columns (its prompt: ``prompt``).
        label_names: declared label names in id order (``()``: from the data).
        what: the file as the user named it, e.g. ``"data.dataset = 'x.csv'"``.
        keys_from: where the column keys came from, appended to a key in messages.
        min_classes: fewest distinct labels accepted (2 for a dataset; 1 for one client).
        split_optional: a split column the file lacks is ignored instead of refused.
    """

    path: str
    task: str = "auto"
    text: str = "text"
    pair: str = ""
    label: str = DEFAULT_LABEL_COLUMN
    group: str = ""
    split: str = ""
    prompt: str = "prompt"
    response: str = "response"
    messages: str = "messages"
    chosen: str = "chosen"
    rejected: str = "rejected"
    label_names: tuple[str, ...] = ()
    what: str = ""
    keys_from: str = ""
    min_classes: int = 2
    split_optional: bool = False

    @classmethod
    def of(cls, cfg: DataConfig, **overrides: object) -> FileSpec:
        """The spec of ``cfg.dataset`` read with ``cfg``'s column keys."""
        base = cls(
            path=cfg.dataset,
            task=cfg.task,
            text=cfg.text_column,
            pair=cfg.text_pair_column,
            label=cfg.label_column,
            group=cfg.group_column,
            split=cfg.split_column,
            prompt=cfg.prompt_column,
            response=cfg.response_column,
            messages=cfg.messages_column,
            chosen=cfg.chosen_column,
            rejected=cfg.rejected_column,
            label_names=tuple(cfg.label_names),
            what=f"data.dataset = {cfg.dataset!r}",
            min_classes=1 if cfg.label_names else 2,  # declared names: the file may lack some
        )
        return replace(base, **overrides)  # type: ignore[arg-type]


@dataclass(frozen=True)
class FileRows:
    """Every row of a dataset file, parsed.

    Attributes:
        task: ``classification``, ``causal_lm``, ``instruction`` or ``preference``
            (``auto`` resolved).
        texts: the texts, lazily, in file order; an instruction file's conversations, a
            preference file's pairs.
        labels: int64 ``(N,)`` class ids (an instruction or preference file's categories),
            or ``None``.
        label_names: names in id order; ``()`` without labels.
        group_codes: int64 ``(N,)``: each row's group as an index into ``group_names``,
            or ``None`` without a group column.
        group_names: the distinct groups, sorted (a numpy str array).
        is_test: bool ``(N,)`` from a split column or a ``DatasetDict``, else ``None``.
        columns: the file's columns.
    """

    task: str
    texts: TextColumn | list[Conversation] | list[PreferencePair]
    labels: np.ndarray | None
    label_names: tuple[str, ...]
    group_codes: np.ndarray | None
    group_names: np.ndarray | None
    is_test: np.ndarray | None
    columns: tuple[str, ...]

    def take(self, rows: np.ndarray) -> Split:
        """The rows ``rows`` as a :class:`Split`."""
        texts = self.texts
        return Split(
            inputs=texts[rows] if isinstance(texts, TextColumn) else [texts[i] for i in rows],
            labels=None if self.labels is None else self.labels[rows],
            groups=self.groups(rows),
        )

    def groups(self, rows: np.ndarray) -> np.ndarray | None:
        """The groups of ``rows`` as a numpy str array (made per split: a str array of every
        row would cost 4 bytes per character per row for as long as the file is cached)."""
        if self.group_codes is None or self.group_names is None:
            return None
        return self.group_names[self.group_codes[rows]]

    def strata(self) -> np.ndarray:
        """One int key per row for the stratified test split: (group, label) as available."""
        keys = np.zeros(len(self.texts), dtype=np.int64)
        if self.group_codes is not None:
            keys = np.asarray(self.group_codes, dtype=np.int64)
        if self.labels is not None:
            keys = keys * max(1, len(self.label_names)) + self.labels
        return keys


def read_file_dataset(cfg: DataConfig) -> Dataset:
    """The dataset file ``cfg.dataset``, read with ``cfg``'s column keys, split train/test.

    The parsed rows are cached per process (by the file's size and mtime and the keys);
    treat what comes back as read-only.

    Raises:
        ConfigError: see :func:`~fedfm.data.source.open_table`, and a column the file
            lacks (with the columns it has), a label column with one class, a split column
            with values other than ``train``/``test``, or ``natural`` without a group column.
    """
    spec = FileSpec.of(cfg)
    rows = read_rows(spec)
    if cfg.partition == "natural" and rows.group_codes is None:
        raise ConfigError(
            f"{spec.what}: data.partition = 'natural' makes one client per value of "
            f"data.group_column, which is empty: set data.group_column to one of "
            f"{list(rows.columns)}, or use another partition"
        )
    if rows.labels is None and cfg.partition in LABEL_PARTITIONS and rows.task in CHAT_TASKS:
        raise ConfigError(
            f"{spec.what}: data.partition = {cfg.partition!r} splits by category, but the "
            f"{rows.task} file has no category column {spec.label!r} (data.label_column): set "
            f"data.label_column to one of {list(rows.columns)}, or use data.partition = 'iid', "
            "'quantity' or 'natural'"
        )
    if rows.labels is None and cfg.partition in LABEL_PARTITIONS:
        how = "data.task = 'auto' reads it as" if cfg.task == "auto" else "it is"
        raise ConfigError(
            f"{spec.what}: the file has no label column {spec.label!r} (data.label_column), so "
            f"{how} a causal-LM corpus, but data.partition = {cfg.partition!r} splits by label: "
            f"set data.label_column to one of {list(rows.columns)}, or use data.partition = "
            "'iid', 'quantity' or 'natural'"
        )
    if rows.is_test is not None:
        train_idx, test_idx = np.flatnonzero(~rows.is_test), np.flatnonzero(rows.is_test)
        _check_both(spec, len(train_idx), len(test_idx))
    else:
        train_idx, test_idx = split_indices(rows.strata())
    path = Path(spec.path)
    name = path.stem if path.suffix else path.name
    return Dataset(
        name,
        rows.task,
        rows.take(train_idx),
        rows.take(test_idx),
        rows.label_names,
        modality="text",
        source=str(path.expanduser().resolve()),
    )


def _check_both(spec: FileSpec, n_train: int, n_test: int) -> None:
    for count, which in ((n_train, "train"), (n_test, "test")):
        if count == 0:
            raise ConfigError(
                f"{spec.what}: data.split_column = {spec.split!r} marks no row '{which}'; mark "
                "some, or set data.split_column = '' for a seeded 20% test set"
            )


def read_rows(spec: FileSpec) -> FileRows:
    """Every row of ``spec.path``, parsed (cached per process by the file's size and mtime)."""
    return _read_rows(spec, _signature(Path(spec.path)))


def _signature(path: Path) -> tuple[object, ...]:
    """What changes when the data changes: sizes and mtimes (a folder's files too)."""
    path = path.expanduser()
    if not path.exists():
        return ()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


@lru_cache(maxsize=8)
def _read_rows(spec: FileSpec, signature: tuple[object, ...]) -> FileRows:
    del signature  # part of the cache key only
    table = open_table(spec.path, what=spec.what)
    task = _task(spec, table)
    _check_columns(spec, table, task)
    if task in CHAT_TASKS:
        return _chat_rows(spec, table, task)
    data = table.data.data  # the memory-mapped pyarrow table
    check_text(data.column(spec.text), key="text_column", name=spec.text, what=spec.what)
    pair = None
    if spec.pair:
        pair = data.column(spec.pair)
        check_text(pair, key="text_pair_column", name=spec.pair, what=spec.what)
    origin = json.dumps([str(table.path), spec.text, spec.pair])
    texts = TextColumn(data.column(spec.text), pair, key=origin)
    labels: np.ndarray | None = None
    names: tuple[str, ...] = ()
    if task == CLASSIFICATION:
        labels, names = _labels(spec, table)
    codes, group_names = _groups(spec, table)
    is_test = _test_rows(spec, table)
    return FileRows(task, texts, labels, names, codes, group_names, is_test, tuple(table.columns))


def _chat_rows(spec: FileSpec, table: Table, task: str) -> FileRows:
    """An instruction file's conversations (from its messages column, else its prompt and
    response columns) or a preference file's pairs, its categories (the label column, if
    any) and groups."""
    data = table.data.data
    rows: list[Conversation] | list[PreferencePair]
    if task == PREFERENCE:
        pair = (spec.prompt, spec.chosen, spec.rejected)
        prompts, chosen, rejected = (data.column(name) for name in pair)
        rows = preference_pairs(prompts, chosen, rejected, what=spec.what, names=pair)
    elif spec.messages in table.columns:
        rows = conversations(data.column(spec.messages), what=spec.what, name=spec.messages)
    else:
        names = (spec.prompt, spec.response)
        rows = prompt_response(
            data.column(spec.prompt), data.column(spec.response), what=spec.what, names=names
        )
    labels: np.ndarray | None = None
    categories: tuple[str, ...] = ()
    if spec.label in table.columns:
        labels, categories = _label_column(spec, table)
    elif spec.label != DEFAULT_LABEL_COLUMN:  # named on purpose: a typo
        _missing(spec, table, "label_column", spec.label)
    codes, group_names = _groups(spec, table)
    is_test = _test_rows(spec, table)
    columns = tuple(table.columns)
    return FileRows(task, rows, labels, categories, codes, group_names, is_test, columns)


def _groups(spec: FileSpec, table: Table) -> tuple[np.ndarray | None, np.ndarray | None]:
    if not spec.group:
        return None, None
    return group_ids(table.data.data.column(spec.group), what=spec.what, name=spec.group)


def _chat_keys(spec: FileSpec, table: Table) -> list[tuple[str, str]]:
    """The prompt and response column keys of an instruction file without a messages
    column; a file with neither form is refused."""
    if spec.prompt not in table.columns and spec.response not in table.columns:
        raise ConfigError(
            f"{spec.what}: an instruction file has a messages column (data.messages_column = "
            f"{spec.messages!r}) or a prompt and a response column (data.prompt_column = "
            f"{spec.prompt!r}, data.response_column = {spec.response!r}){spec.keys_from}, "
            f"but the columns of {table.path.name} are {table.columns}: set those keys to "
            "the file's columns"
        )
    return [("prompt_column", spec.prompt), ("response_column", spec.response)]


def _task(spec: FileSpec, table: Table) -> str:
    """``spec.task`` with ``auto`` resolved: preference when the chosen and the rejected
    columns exist, else instruction when the chat columns exist (and not both the text and
    the label column), else classification when the label column exists, else causal LM."""
    if spec.task in (CLASSIFICATION, CAUSAL_LM, INSTRUCTION, PREFERENCE):
        return spec.task
    columns = table.columns
    if spec.chosen in columns and spec.rejected in columns:
        return PREFERENCE
    chat = spec.messages in columns or (spec.prompt in columns and spec.response in columns)
    if chat and not (spec.text in columns and spec.label in columns):
        return INSTRUCTION
    if spec.label in columns:
        return CLASSIFICATION
    if spec.label != DEFAULT_LABEL_COLUMN:  # named on purpose: a typo, not a text corpus
        _missing(spec, table, "label_column", spec.label)
    return CAUSAL_LM


def _check_columns(spec: FileSpec, table: Table, task: str) -> None:
    """Refuse a column key that names no column of the file, listing the file's columns."""
    named = [("text_column", spec.text), ("text_pair_column", spec.pair)]
    if task == INSTRUCTION:
        named = [] if spec.messages in table.columns else _chat_keys(spec, table)
    if task == PREFERENCE:
        keys = ("prompt_column", "chosen_column", "rejected_column")
        named = list(zip(keys, (spec.prompt, spec.chosen, spec.rejected), strict=True))
    if task == CLASSIFICATION:
        named.append(("label_column", spec.label))
    named.append(("group_column", spec.group))
    if not spec.split_optional:
        named.append(("split_column", spec.split))
    for key, column in named:
        if column and column not in table.columns:
            _missing(spec, table, key, column)


def _missing(spec: FileSpec, table: Table, key: str, column: str) -> None:
    hint = closest(column, table.columns)
    raise ConfigError(
        f"{spec.what}: data.{key} = {column!r}{spec.keys_from} is not a column of "
        f"{table.path.name}, whose columns are {table.columns}.{hint} Rename the column or "
        f"set data.{key}"
    )


def _label_column(spec: FileSpec, table: Table) -> tuple[np.ndarray, tuple[str, ...]]:
    import datasets

    feature = table.data.features.get(spec.label)
    class_names = tuple(feature.names) if isinstance(feature, datasets.ClassLabel) else ()
    return label_ids(
        table.data.data.column(spec.label),
        what=spec.what,
        name=spec.label,
        class_names=class_names,
        declared=spec.label_names,
        declared_by="data.label_names" + spec.keys_from,
    )


def _labels(spec: FileSpec, table: Table) -> tuple[np.ndarray, tuple[str, ...]]:
    labels, names = _label_column(spec, table)
    present = np.unique(labels)
    if len(present) < spec.min_classes:
        raise ConfigError(
            f"{spec.what}: data.label_column = {spec.label!r} holds {len(present)} class "
            f"({names[int(present[0])]!r}) in all {len(labels)} rows; classification needs "
            "at least 2: fix the column, or set data.task = 'causal_lm' to model the text"
        )
    return labels, names


def _test_rows(spec: FileSpec, table: Table) -> np.ndarray | None:
    """Which rows are test: from the split column, or a ``DatasetDict``'s ``test``."""
    if spec.split and spec.split in table.columns:
        column = table.data.data.column(spec.split)
        return test_mask(column, what=spec.what, name=spec.split)
    if table.test_from is not None:
        mask = np.zeros(table.data.num_rows, dtype=bool)
        mask[table.test_from :] = True
        return mask
    return None
