"""A federation: the clients, each with its own local train and eval indices."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedfm.config import DataConfig
from fedfm.data.partition import natural_groups, partition
from fedfm.data.texts import TextColumn
from fedfm.resources.types import Split


@dataclass(frozen=True)
class ClientData:
    """One client's share of the training pool (indices into ``dataset.train``)."""

    id: int
    name: str
    train: np.ndarray
    eval: np.ndarray

    @property
    def num_examples(self) -> int:
        return len(self.train)


@dataclass(frozen=True)
class Federation:
    clients: tuple[ClientData, ...]

    def __len__(self) -> int:
        return len(self.clients)

    def __getitem__(self, client_id: int) -> ClientData:
        return self.clients[client_id]

    def pooled(self) -> ClientData:
        """One client holding every client's train and eval indices (the centralised baseline)."""
        return ClientData(
            id=len(self.clients),
            name="pooled",
            train=np.sort(np.concatenate([c.train for c in self.clients])),
            eval=np.sort(np.concatenate([c.eval for c in self.clients])),
        )


def take(split: Split, indices: np.ndarray) -> Split:
    """The sub-split at ``indices``."""
    inputs = (
        split.inputs[indices]  # a feature array, or a dataset file's lazy TextColumn
        if isinstance(split.inputs, np.ndarray | TextColumn)
        else [split.inputs[i] for i in indices]
    )
    labels = None if split.labels is None else split.labels[indices]
    groups = None if split.groups is None else split.groups[indices]
    return Split(inputs=inputs, labels=labels, groups=groups)


def subsample(split: Split, limit: int, *, seed: int) -> Split:
    """A seeded subsample of ``limit`` examples (the split itself if ``limit`` is 0 or larger)."""
    if limit <= 0 or limit >= len(split):
        return split
    idx = np.sort(np.random.default_rng(seed).choice(len(split), size=limit, replace=False))
    return take(split, idx)


def _hold_out(
    indices: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    n_eval = int(fraction * len(indices))
    shuffled = rng.permutation(indices)
    return np.sort(shuffled[n_eval:]), np.sort(shuffled[:n_eval])


def build_federation(train: Split, cfg: DataConfig, *, seed: int) -> Federation:
    """Partition ``train`` into clients as ``cfg`` says, then hold out each client's eval split."""
    num_clients = cfg.num_clients
    names: list[str] | None = None
    if cfg.partition == "natural":
        names = (
            natural_groups(
                train.groups,
                num_clients=num_clients or None,
                seed=seed,
                min_size=cfg.min_client_size,
            )
            if train.groups is not None
            else None
        )
        num_clients = len(names) if names is not None else num_clients
    parts = partition(
        cfg.partition,
        num_examples=len(train),
        labels=train.labels,
        groups=train.groups,
        num_clients=num_clients,
        seed=seed,
        min_size=cfg.min_client_size,
        alpha=cfg.alpha,
        shards_per_client=cfg.shards_per_client,
    )
    rng = np.random.default_rng([seed, 1])
    clients = []
    for i, idx in enumerate(parts):
        tr, ev = _hold_out(idx, cfg.client_eval_fraction, rng)
        clients.append(
            ClientData(id=i, name=names[i] if names else f"client-{i}", train=tr, eval=ev)
        )
    return Federation(clients=tuple(clients))
