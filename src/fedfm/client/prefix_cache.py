"""The frozen-prefix activation cache (``client.prefix_cache``): when every trainable tensor
sits in layer ``L`` or above, the embeddings and layers ``0..L-1`` compute the same states
for an example in every round and for every client, so they run once per example.

:meth:`PrefixCache.batches` stands in for :func:`fedfm.data.batching.batches` (same
arguments, same batches in the same order): the first time an example is asked for, the
whole model computes the hidden states entering layer ``L`` (eval mode: no dropout, no
gradients) and keeps them, ``(tokens, hidden)`` per example; a batch then carries
``inputs_embeds`` ``(B, T, hidden)``, padded with zeros, in place of ``input_ids``. Inside
:meth:`PrefixCache.suffix_only` the model runs only layers ``L..`` and the head on them.

Exactness: the cached path is the uncached one with dropout off below ``L`` (see
``docs/prefix-cache.md``). The cache is bound to the prefix's tensors as they were when it
was filled: a frozen tensor written in place (a new version or storage) or a trainable one
below ``L`` with another value empties it, and it fills again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from fedfm.data.batching import Batch, Encoded, batch_order, collate
from fedfm.errors import ConfigError
from fedfm.models.prefix import KEY, LayerStack, prefix_states, suffix_only

MiB = 2**20


@dataclass
class _Store:
    """One split's cached states (``None``: not computed yet); holds ``data`` so that its
    ``id`` stays its own."""

    data: Encoded
    states: list[torch.Tensor | None] = field(default_factory=list)


class _Guard:
    """Whether the prefix's tensors are still those the cache was filled with: a frozen
    tensor by its storage and version counter (every in-place write bumps it), a trainable
    one (a LoRA factor a resource profile freezes) by value."""

    def __init__(self, modules: list[torch.nn.Module], trainable: frozenset[int]) -> None:
        tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
        self.frozen = [(t, t.data_ptr(), t._version) for t in tensors if id(t) not in trainable]
        self.live = [(t, t.detach().clone()) for t in tensors if id(t) in trainable]

    def holds(self) -> bool:
        return all(t.data_ptr() == ptr and t._version == v for t, ptr, v in self.frozen) and all(
            torch.equal(t.detach(), value) for t, value in self.live
        )


class PrefixCache:
    """Hidden states entering layer ``split`` of ``model``, per example of each split asked
    for, computed once and reused by every client and round.

    Args:
        model: the shared model (a peft wrapper or not).
        stack: its layers (:func:`fedfm.models.prefix.layer_stack`).
        split: ``L``, the lowest layer any client trains (``1 <= L <= len(layers)``).
        max_bytes: the most the states may take; one more example is refused.
        batch_size: examples per forward while filling (the job passes
            ``client.batch_size``: a fill forward then holds less than a training step).

    Example:
        >>> cache = PrefixCache(model, layer_stack(model, generative=False), 5,  # doctest: +SKIP
        ...                     max_bytes=512 * 2**20, batch_size=256)
        >>> with cache.suffix_only():  # doctest: +SKIP
        ...     for batch in cache.batches(train, idx, batch_size=32, causal_lm=False, seed=1):
        ...         logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    """

    def __init__(
        self,
        model: torch.nn.Module,
        stack: LayerStack,
        split: int,
        *,
        max_bytes: int,
        batch_size: int,
    ) -> None:
        if not 1 <= split <= len(stack.layers):
            raise ValueError(f"split = {split} must lie in [1, {len(stack.layers)}]")
        self.model, self.stack, self.split = model, stack, split
        # what is trainable now, before any client's training switches its frozen tensors'
        # gradients off (the guard compares those by value: set_params rewrites them)
        self._trainable = frozenset(id(t) for t in model.parameters() if t.requires_grad)
        self.max_bytes, self.batch_size = max_bytes, batch_size
        self._stores: dict[int, _Store] = {}
        self._guard: _Guard | None = None
        self.nbytes = 0  # the states held now
        self.computed = 0  # examples whose states were computed (refills count again)
        self.refills = 0  # times the guard emptied the cache
        self.fill_seconds = 0.0

    def batches(
        self,
        data: Encoded,
        indices: np.ndarray,
        *,
        batch_size: int,
        causal_lm: bool,
        seed: int | None = None,
        bucket_by_length: bool = False,
    ) -> Iterator[Batch]:
        """:func:`~fedfm.data.batching.batches`' batches with ``inputs_embeds`` (the states
        entering layer ``split``) in place of ``input_ids``; the missing states are computed
        now, before the first batch is asked for."""
        order = batch_order(
            data, indices, batch_size=batch_size, seed=seed, bucket_by_length=bucket_by_length
        )
        store = self._fill(data, np.asarray(indices))
        return self._gather(data, store, order, causal_lm)

    @contextlib.contextmanager
    def suffix_only(self) -> Iterator[None]:
        """The model runs layers ``split..`` and the head on ``inputs_embeds`` in the block."""
        with suffix_only(self.stack, self.split):
            yield

    def _gather(
        self, data: Encoded, store: _Store, order: list[np.ndarray], causal_lm: bool
    ) -> Iterator[Batch]:
        for idx in order:
            batch = collate(data, idx, causal_lm=causal_lm)
            del batch["input_ids"]
            rows = [store.states[i] for i in idx]
            embeds = pad_sequence(rows, batch_first=True)  # type: ignore[arg-type]  # filled
            yield {"inputs_embeds": embeds, **batch}  # (B, T, hidden), T = the mask's width

    def _fill(self, data: Encoded, indices: np.ndarray) -> _Store:
        """The store of ``data`` with the states of every example of ``indices``."""
        if self._guard is not None and not self._guard.holds():
            self._stores.clear()
            self.nbytes, self._guard = 0, None
            self.refills += 1
        if self._guard is None:
            self._guard = _Guard(self.stack.prefix_modules(self.split), self._trainable)
        store = self._stores.get(id(data))
        if store is None:
            store = self._stores[id(data)] = _Store(data, [None] * len(data))
        wanted = np.unique(indices)
        missing = np.array([i for i in wanted if store.states[i] is None], dtype=np.int64)
        if len(missing):
            started = time.perf_counter()
            self._compute(store, missing)
            self.fill_seconds += time.perf_counter() - started
        return store

    def _compute(self, store: _Store, missing: np.ndarray) -> None:
        lengths = store.data.lengths()
        order = missing[np.argsort(lengths[missing], kind="stable")]  # little padding
        device = next(self.model.parameters()).device
        training = self.model.training
        self.model.eval()  # no dropout in the prefix: see the module's docstring
        try:
            # normal tensors even when asked from an evaluation under inference_mode: the
            # states are inputs that training saves for its backward pass
            with torch.inference_mode(False), torch.no_grad():
                for start in range(0, len(order), self.batch_size):
                    idx = order[start : start + self.batch_size]
                    batch = collate(store.data, idx, causal_lm=False)
                    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
                    states = prefix_states(self.model, self.stack, self.split, inputs)
                    for j, i in enumerate(idx):
                        self._keep(store, int(i), states[j, : lengths[i]].clone())
        finally:
            self.model.train(training)

    def _keep(self, store: _Store, index: int, states: torch.Tensor) -> None:
        size = states.numel() * states.element_size()
        if self.nbytes + size > self.max_bytes:
            raise ConfigError(
                f"{KEY}_mb = {self.max_bytes / MiB:g}: the cached states already take "
                f"{self.nbytes / MiB:.1f} MiB and example {index} needs more; raise "
                f"{KEY}_mb or set {KEY} = false"
            )
        store.states[index] = states
        self.nbytes += size
        self.computed += 1


def states_bytes(lengths: np.ndarray, stack: LayerStack, dtype: torch.dtype) -> int:
    """What caching examples of these token ``lengths`` takes: tokens x hidden x element."""
    element = torch.tensor([], dtype=dtype).element_size()
    return int(lengths.sum()) * stack.hidden_size * element
