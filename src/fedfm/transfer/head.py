"""A classifier head on frozen FM features, trained centrally or by FedAvg over clients.

The three heads FedPFT is compared by share this module: one trained on the server's
synthetic features (FedPFT), one on the pooled real features (the centralised ceiling) and
one by plain FedAvg over the clients' real features (every client each round; bytes = the
head's payload down and up per client and round).

Example:
    >>> head = make_head(384, 6, kind="linear", seed=0)
    >>> train_head(head, x, y, epochs=30, lr=1e-2, batch_size=64, seed=0)  # doctest: +SKIP
    >>> accuracy(head, x_test, y_test)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fedfm.models.params import payload_bytes
from fedfm.transfer.choices import HEADS


def make_head(dim: int, num_labels: int, *, kind: str, hidden: int = 128, seed: int) -> nn.Module:
    """A fresh head ``dim -> num_labels``: ``linear``, or ``mlp`` (one ReLU hidden layer)."""
    if kind not in HEADS:
        raise ValueError(f"head = {kind!r} is not one of {HEADS}")
    torch.manual_seed(seed)
    if kind == "linear":
        return nn.Linear(dim, num_labels)
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_labels))


def train_head(
    head: nn.Module,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> float:
    """Train ``head`` in place with Adam and cross-entropy (a seeded shuffle each epoch);
    return the last epoch's mean loss."""
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    head.train()
    loss_sum = 0.0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        loss_sum = 0.0
        for start in range(0, len(x), batch_size):
            rows = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(head(x[rows]), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(rows)
    return loss_sum / max(1, len(x))


@torch.inference_mode()
def accuracy(head: nn.Module, features: np.ndarray, labels: np.ndarray) -> float:
    """Share of ``features`` whose arg-max class is the label."""
    head.eval()
    logits = head(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)))
    return float((logits.argmax(-1).numpy() == np.asarray(labels)).mean())


def head_bytes(head: nn.Module) -> int:
    """One transfer of the head's tensors (safetensors)."""
    return payload_bytes({k: v for k, v in head.state_dict().items()})


@dataclass
class FedAvgResult:
    """The plain-FL reference: the final head, its accuracy after each round and the bytes."""

    head: nn.Module
    accuracies: list[float] = field(default_factory=list)
    bytes: int = 0


def fedavg_head(
    head: nn.Module,
    clients: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    rounds: int,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    test: tuple[np.ndarray, np.ndarray] | None = None,
) -> FedAvgResult:
    """FedAvg of ``head`` over ``clients`` (their ``(features, labels)``), every client every
    round: each starts from the global head, trains ``epochs`` (fresh Adam), and the server
    takes the example-weighted mean. Bytes: the head down and up, per client and round.

    ``head`` is trained in place (it ends as the global head); with ``test`` the global head's
    accuracy is recorded after every round.
    """
    result = FedAvgResult(head)
    sizes = np.array([len(y) for _, y in clients], dtype=np.float64)
    weights = sizes / sizes.sum()
    one_way = head_bytes(head)
    for round_ in range(1, rounds + 1):
        start = {k: v.detach().clone() for k, v in head.state_dict().items()}
        mean = {k: torch.zeros_like(v) for k, v in start.items()}
        for cid, (x, y) in enumerate(clients):
            head.load_state_dict(start)
            train_head(
                head,
                x,
                y,
                epochs=epochs,
                lr=lr,
                batch_size=batch_size,
                seed=seed + 7919 * round_ + cid,
            )
            for k, v in head.state_dict().items():
                mean[k] += float(weights[cid]) * v
        head.load_state_dict(mean)
        result.bytes += 2 * one_way * len(clients)
        if test is not None:
            result.accuracies.append(accuracy(head, *test))
    return result
