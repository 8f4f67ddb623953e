"""The in-memory shape of a dataset: what every loader in the registry returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fedfm.data.texts import TextColumn

CLASSIFICATION = "classification"
CAUSAL_LM = "causal_lm"
INSTRUCTION = "instruction"  # chat conversations; the loss on the assistant's tokens only
PREFERENCE = "preference"  # a prompt with a chosen and a rejected response (DPO)
GENERATIVE = (CAUSAL_LM, INSTRUCTION, PREFERENCE)  # tasks a causal language model serves

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": text}
Conversation = tuple[Message, ...]  # an instruction example: its last message is the response


@dataclass(frozen=True)
class PreferencePair:
    """A preference example: a prompt (a conversation ending with a user message) and two
    responses, the one preferred and the one rejected."""

    prompt: Conversation
    chosen: str
    rejected: str


def is_generative(task: str) -> bool:
    """Whether ``task`` is served by a causal language model (loaded, adapted and exported as
    one)."""
    return task in GENERATIVE


@dataclass(frozen=True)
class Split:
    """One split of a dataset.

    Attributes:
        inputs: texts for text datasets: a ``list[str]`` for the registry's, a lazy
            :class:`~fedfm.data.texts.TextColumn` over Arrow for a dataset file (indexing
            by int gives a ``str``, by an index array a smaller column); a list of
            :data:`Conversation` for instruction datasets, of :class:`PreferencePair` for
            preference datasets; or a float32 array ``(N, D)`` of features for feature
            datasets such as ``digits``.
        labels: int64 array ``(N,)`` of class ids; ``None`` for causal LM datasets; for
            instruction and preference datasets optionally a category (task) id per row,
            which partitions (Dirichlet over tasks) and per-task scores use.
        groups: str array ``(N,)`` of natural client ids (domain, speaker), or ``None``.
    """

    inputs: list[str] | TextColumn | np.ndarray | list[Conversation] | list[PreferencePair]
    labels: np.ndarray | None
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass(frozen=True)
class Dataset:
    """A dataset from the offline registry, with a seeded, stable train/test split.

    Attributes:
        name: registry name, e.g. ``"trec6"``; a dataset file's name without its suffix.
        task: ``"classification"``, ``"causal_lm"``, ``"instruction"`` or ``"preference"``.
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
