"""The in-memory shape of a dataset: what every loader in the registry returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fedfm.data.texts import TextColumn

CLASSIFICATION = "classification"
CAUSAL_LM = "causal_lm"


@dataclass(frozen=True)
class Split:
    """One split of a dataset.

    Attributes:
        inputs: texts for text datasets: a ``list[str]`` for the registry's, a lazy
            :class:`~fedfm.data.texts.TextColumn` over Arrow for a dataset file (indexing
            by int gives a ``str``, by an index array a smaller column); or a float32 array
            ``(N, D)`` of features for feature datasets such as ``digits``.
        labels: int64 array ``(N,)`` of class ids; ``None`` for causal LM datasets.
        groups: str array ``(N,)`` of natural client ids (domain, speaker), or ``None``.
    """

    inputs: list[str] | TextColumn | np.ndarray
    labels: np.ndarray | None
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass(frozen=True)
class Dataset:
    """A dataset from the offline registry, with a seeded, stable train/test split.

    Attributes:
        name: registry name, e.g. ``"trec6"``; a dataset file's name without its suffix.
        task: ``"classification"`` or ``"causal_lm"``.
        train: the training pool (partitioned across clients).
        test: the global held-out test set.
        label_names: class names in id order; empty for causal LM.
        modality: ``"text"`` or ``"features"``.
        source: the file or folder a dataset file was read from; ``""`` for the registry's.
    """

    name: str
    task: str
    train: Split
    test: Split
    label_names: tuple[str, ...] = ()
    modality: str = "text"
    source: str = ""

    @property
    def num_labels(self) -> int:
        return len(self.label_names)
