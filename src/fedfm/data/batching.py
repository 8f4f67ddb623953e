"""Tokenise a split once, then cut seeded batches padded to their own longest example."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedfm.data.texts import TextColumn
from fedfm.data.token_cache import RaggedIds, cached_ids
from fedfm.resources.types import Split

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Encoded:
    """A split ready for batching.

    Attributes:
        ids: token ids per example (text), each an int64 array of its own length (a list,
            or for a dataset file a :class:`~fedfm.data.token_cache.RaggedIds` over the
            memory-mapped token cache); or ``None`` for feature datasets.
        features: float32 ``(N, D)`` for feature datasets, else ``None``.
        labels: int64 ``(N,)`` class ids, or ``None`` for causal LM and instruction.
        pad_id: the tokenizer's pad token id.
        masks: per example a bool array as long as its ids: the tokens the loss covers (an
            instruction's assistant tokens, :mod:`fedfm.data.chat`); ``None``: every token.
        truncated_prompts: examples whose start (prompt side) was cut to fit ``max_length``.
        truncated_responses: examples whose response's end was cut (it alone did not fit).
        rejected: preference pairs (:mod:`fedfm.data.preference`): per pair the rejected
            sequence, ``ids`` holding the chosen one; ``None`` for every other task. An
            example is then a pair: ``len`` counts pairs, and a batch of ``k`` pairs is
            ``2k`` rows, the ``k`` chosen first, then the ``k`` rejected (:func:`collate`).
        rejected_masks: the rejected sequences' loss masks (set with ``rejected``).
    """

    ids: list[np.ndarray] | RaggedIds | None
    features: np.ndarray | None
    labels: np.ndarray | None
    pad_id: int = 0
    masks: list[np.ndarray] | None = None
    truncated_prompts: int = 0
    truncated_responses: int = 0
    rejected: list[np.ndarray] | None = None
    rejected_masks: list[np.ndarray] | None = None

    def __len__(self) -> int:
        if self.ids is not None:
            return len(self.ids)
        assert self.features is not None  # one of the two is always set
        return len(self.features)

    def lengths(self) -> np.ndarray:
        if self.ids is None:
            return np.ones(len(self), dtype=np.int64)
        if isinstance(self.ids, RaggedIds):
            return self.ids.lengths()
        lengths = np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))
        if self.rejected is not None:  # a pair is as long as its longer sequence
            rejected = np.fromiter((len(x) for x in self.rejected), dtype=np.int64, count=len(self))
            lengths = np.maximum(lengths, rejected)
        return lengths


def pad_token_id(tokenizer) -> int:  # noqa: ANN001
    """The id batches are padded with: the tokenizer's pad token, else 0 (never attended)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def encode(split: Split, tokenizer, *, max_length: int) -> Encoded:  # noqa: ANN001
    """Tokenise every example of ``split`` once (truncated to ``max_length``, unpadded).

    A dataset file's texts (a :class:`~fedfm.data.texts.TextColumn`) are tokenised once per
    file, tokenizer and ``max_length``, and cached on disk (:mod:`fedfm.data.token_cache`).
    """
    if tokenizer is None:
        features = np.asarray(split.inputs, dtype=np.float32)
        return Encoded(ids=None, features=features, labels=split.labels)
    pad_id = pad_token_id(tokenizer)
    if isinstance(split.inputs, TextColumn):
        ragged = cached_ids(split.inputs, tokenizer, max_length=max_length)
        return Encoded(ids=ragged, features=None, labels=split.labels, pad_id=pad_id)
    enc = tokenizer(list(split.inputs), truncation=True, max_length=max_length)
    ids = [np.asarray(x, dtype=np.int64) for x in enc["input_ids"]]
    return Encoded(ids=ids, features=None, labels=split.labels, pad_id=pad_id)


def collate(data: Encoded, indices: Sequence[int] | np.ndarray, *, causal_lm: bool) -> Batch:
    """One batch of ``indices``, padded to the longest example in it.

    Causal LM labels are the input ids, ``-100`` (ignored) on padding and, where
    ``data.masks`` exists, on every token outside the mask. Preference pairs
    (``data.rejected``) give ``2 * len(indices)`` rows: the chosen sequences in the order of
    ``indices``, then the rejected ones in the same order, padded together.
    """
    idx = np.asarray(indices)
    if data.ids is None:
        assert data.features is not None  # one of the two is always set
        batch = {"x": torch.from_numpy(data.features[idx])}
    else:
        rows = [data.ids[i] for i in idx]
        masks = None if data.masks is None else [data.masks[i] for i in idx]
        if data.rejected is not None:  # (2k, T): the k chosen, then the k rejected
            assert masks is not None and data.rejected_masks is not None  # set together
            rows += [data.rejected[i] for i in idx]
            masks += [data.rejected_masks[i] for i in idx]
        width = max(len(r) for r in rows)
        input_ids = np.full((len(rows), width), data.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for j, row in enumerate(rows):
            input_ids[j, : len(row)] = row
            mask[j, : len(row)] = 1
        batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
        if causal_lm:
            labels = batch["input_ids"].clone()
            labels[batch["attention_mask"] == 0] = -100
            if masks is not None:
                labels[~torch.from_numpy(_padded_masks(masks, width))] = -100
            batch["labels"] = labels
    if not causal_lm and data.labels is not None:
        batch["labels"] = torch.from_numpy(data.labels[idx].astype(np.int64))
    return batch


def _padded_masks(masks: list[np.ndarray], width: int) -> np.ndarray:
    """Bool ``(len(masks), width)``: each row's loss mask, ``False`` on padding."""
    out = np.zeros((len(masks), width), dtype=bool)
    for j, mask in enumerate(masks):
        out[j, : len(mask)] = mask
    return out


BUCKET_BATCHES = 50
"""Length buckets hold ``BUCKET_BATCHES`` batches: each chunk of ``batch_size * 50`` shuffled
examples is sorted by length, then cut into batches (the megabatch of Hugging Face's
``group_by_length``). Smaller: more random batches, more padding."""


def batches(
    data: Encoded,
    indices: np.ndarray,
    *,
    batch_size: int,
    causal_lm: bool,
    seed: int | None = None,
    bucket_by_length: bool = False,
) -> Iterator[Batch]:
    """Batches over ``indices``: shuffled with ``seed``, or sorted by length when ``seed`` is None.

    Sorting by length (for evaluation) minimises padding; the metrics do not depend on order.
    With a ``seed`` and ``bucket_by_length`` (training), each batch holds examples of similar
    length (:func:`length_buckets`): the same number and sizes of batches, every index once,
    less padding. Feature datasets (no token ids) ignore ``bucket_by_length``.
    """
    order = batch_order(
        data, indices, batch_size=batch_size, seed=seed, bucket_by_length=bucket_by_length
    )
    for idx in order:
        yield collate(data, idx, causal_lm=causal_lm)


def batch_order(
    data: Encoded,
    indices: np.ndarray,
    *,
    batch_size: int,
    seed: int | None = None,
    bucket_by_length: bool = False,
) -> list[np.ndarray]:
    """The indices of each batch :func:`batches` makes (same arguments), in order."""
    indices = np.asarray(indices)
    if seed is not None and bucket_by_length and data.ids is not None:
        return length_buckets(data.lengths(), indices, batch_size=batch_size, seed=seed)
    if seed is None:
        order = indices[np.argsort(data.lengths()[indices], kind="stable")]
    else:
        order = np.random.default_rng(seed).permutation(indices)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def length_buckets(
    lengths: np.ndarray, indices: np.ndarray, *, batch_size: int, seed: int
) -> list[np.ndarray]:
    """``indices`` cut into batches of ``batch_size`` examples of similar ``lengths``.

    Shuffle with ``seed``; sort each chunk of ``batch_size * BUCKET_BATCHES`` by length
    (stable: ties keep the shuffled order); cut each chunk into batches; shuffle the
    batches' order with the same generator. Each index appears once; the batch count and
    sizes are the plain shuffle's (at most one short batch: the last chunk's longest
    examples, anywhere in the epoch); which examples share a batch varies from epoch to
    epoch only through the shuffle into chunks and ties in length.

    Example:
        >>> lengths = np.array([9, 1, 9, 1, 5])
        >>> cut = length_buckets(lengths, np.arange(5), batch_size=2, seed=0)
        >>> sorted(sorted(b.tolist()) for b in cut)  # the two 1-token examples together
        [[0], [1, 3], [2, 4]]
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(np.asarray(indices))
    chunk = batch_size * BUCKET_BATCHES
    cut = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        cut += [part[s : s + batch_size] for s in range(0, len(part), batch_size)]
    return [cut[i] for i in rng.permutation(len(cut))]
