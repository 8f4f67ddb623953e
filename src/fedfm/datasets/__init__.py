'''The built-in datasets: one module each, registered by name in :data:`DATASETS`.

Every built-in dataset ships inside an installed package and is read offline. Its module
holds its loader, its label names and, for text classification, the description that
synthetic-data prompts use (:mod:`fedfm.synthetic.prompts` reads it from the registry
entry). The shared parts (the entry type, the seeded split, the package lookup) live in
:mod:`fedfm.datasets.common`.

Example:
    >>> ds = load_dataset("digits")
    >>> ds.task, ds.modality, ds.num_labels
    ('classification', 'features', 10)

Add a dataset: one module here plus one line in this file's import list. The minimal
module (``fedfm/datasets/mine.py``)::

    """What it is and which package ships it."""

    from fedfm.datasets.common import BuiltinDataset, classification, register
    from fedfm.resources.types import Dataset

    LABEL_NAMES = ("cat", "dog")


    def load() -> Dataset:
        rows = [("a purring text", 0), ("a barking text", 1)]  # (text, label id), read offline
        return classification("mine", rows, LABEL_NAMES)


    register(BuiltinDataset("mine", load, LABEL_NAMES))

Give ``BuiltinDataset`` a :class:`~fedfm.datasets.common.SyntheticDescription` (a prompt
template, one description per label, a few public examples) to have ``fedfm synth`` write
its labels without ``synthetic.descriptions``.
'''

from __future__ import annotations

# the built-in datasets, one module each: importing a module registers it
from fedfm.datasets import digits, instruct, sentiment4, shakespeare, sms_spam, trec6
from fedfm.datasets.common import (
    DATASETS,
    SPLIT_SEED,
    TEST_FRACTION,
    BuiltinDataset,
    SyntheticDescription,
    load_dataset,
    split_indices,
)

__all__ = [
    "DATASETS",
    "SPLIT_SEED",
    "TEST_FRACTION",
    "BuiltinDataset",
    "SyntheticDescription",
    "digits",
    "instruct",
    "load_dataset",
    "sentiment4",
    "shakespeare",
    "sms_spam",
    "split_indices",
    "trec6",
]
