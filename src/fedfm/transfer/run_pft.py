"""``fedfm transfer pft``: one-shot FedPFT on a config's data and partition, against its two
references, into a run folder (``config.toml``, ``summary.json``).

The three heads, all on the same frozen features of the same clients:

- ``pft``: each client's per-class mixtures (``[pft]``) serialised as they would travel, read
  back by the server, sampled and used to train the head; one upload per client, nothing
  sent down (the head is the server's);
- ``centralized``: the head trained on every client's real features pooled (the ceiling);
- ``fedavg``: the head trained by FedAvg over the clients (plain FL), ``pft.fedavg_rounds``
  rounds of every client; bytes = the head down and up per client and round.

Each is scored on the global test set's features. A feature dataset (``digits``) is its own
feature space: no encoder runs.

Example:
    >>> summary = run_pft(load_config(None, ["data.dataset=digits"]), Path("runs/pft"))
    ... # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedfm.config import RunConfig, to_toml
from fedfm.data.federation import Federation, build_federation, subsample
from fedfm.data.load import load_data, resolved
from fedfm.errors import ConfigError
from fedfm.io import atomic_write_json, atomic_write_text
from fedfm.models.params import deserialize, serialize
from fedfm.resources.types import CLASSIFICATION
from fedfm.run_files import CONFIG_FILE, SUMMARY_FILE
from fedfm.transfer.head import accuracy, fedavg_head, head_bytes, make_head, train_head
from fedfm.transfer.pft import (
    ClassMixture,
    fit_client_mixtures,
    mixture_tensors,
    mixtures_from_tensors,
    sample_features,
)


def pft_run_name(cfg: RunConfig) -> str:
    """``name``, or ``<dataset>-pft-<partition>-s<seed>``."""
    return cfg.name or f"{Path(cfg.data.dataset).stem}-pft-{cfg.data.partition}-s{cfg.seed}"


@dataclass(frozen=True)
class FeatureData:
    """The frozen features of a config's data: the training pool, the test set, the clients."""

    train: np.ndarray  # (N, d)
    train_labels: np.ndarray  # (N,)
    test: np.ndarray
    test_labels: np.ndarray
    federation: Federation
    num_labels: int
    seconds: float  # embedding time (0 when read from the cache or a feature dataset)


def feature_data(cfg: RunConfig) -> FeatureData:
    """Load, subsample and partition ``cfg``'s data as a run would, and embed it with
    ``pft.encoder`` (cached on disk) unless it is a feature dataset already."""
    dataset = load_data(cfg.data)
    cfg = resolved(cfg, dataset)
    if dataset.task != CLASSIFICATION:
        raise ConfigError(
            f"data.dataset = {cfg.data.dataset!r} is {dataset.task}: FedPFT trains a "
            "classifier head, so it needs a classification dataset"
        )
    train = subsample(dataset.train, cfg.data.max_train_examples, seed=cfg.seed)
    test = subsample(dataset.test, cfg.data.max_test_examples, seed=cfg.seed)
    federation = build_federation(train, cfg.data, seed=cfg.seed)
    started = time.perf_counter()
    if dataset.modality == "features":
        x_train = np.asarray(train.inputs, dtype=np.float32)
        x_test = np.asarray(test.inputs, dtype=np.float32)
    else:
        from fedfm.transfer.features import cached_embeddings, load_encoder

        encoder = load_encoder(cfg.pft.encoder)
        x_train, x_test = (
            cached_embeddings(
                encoder, [str(t) for t in split.inputs], max_length=cfg.data.max_length
            )
            for split in (train, test)
        )
    assert train.labels is not None and test.labels is not None  # classification
    return FeatureData(
        x_train,
        np.asarray(train.labels),
        x_test,
        np.asarray(test.labels),
        federation,
        dataset.num_labels,
        time.perf_counter() - started,
    )


def client_uploads(cfg: RunConfig, data: FeatureData) -> tuple[list[list[ClassMixture]], list[int]]:
    """Every client's mixtures as the server reads them back from the bytes that travelled,
    and each upload's size."""
    received, sizes = [], []
    for client in data.federation.clients:
        mixtures = fit_client_mixtures(
            data.train[client.train],
            data.train_labels[client.train],
            components=cfg.pft.components,
            covariance=cfg.pft.covariance,
            seed=cfg.seed,
        )
        wire = serialize(mixture_tensors(mixtures))
        sizes.append(len(wire))
        received.append(mixtures_from_tensors(deserialize(wire)))
    return received, sizes


def run_pft(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """FedPFT and its references on ``cfg``'s data; writes ``config.toml`` and
    ``summary.json`` into ``run_dir`` and returns the summary."""
    pft = cfg.pft
    data = feature_data(cfg)
    dim, k = data.train.shape[1], data.num_labels
    test = (data.test, data.test_labels)

    def fresh() -> Any:
        return make_head(dim, k, kind=pft.head, hidden=pft.hidden, seed=cfg.seed)

    train_kw: dict[str, Any] = {
        "epochs": pft.epochs,
        "lr": pft.lr,
        "batch_size": pft.batch_size,
        "seed": cfg.seed,
    }
    seconds: dict[str, float] = {"embed": data.seconds}

    started = time.perf_counter()
    received, sizes = client_uploads(cfg, data)
    seconds["clients_fit"] = time.perf_counter() - started
    started = time.perf_counter()
    x_syn, y_syn = sample_features(received, per_class=pft.samples_per_class, seed=cfg.seed)
    head = fresh()
    train_head(head, x_syn, y_syn, **train_kw)
    seconds["server"] = time.perf_counter() - started

    started = time.perf_counter()
    pooled = np.sort(np.concatenate([c.train for c in data.federation.clients]))
    central = fresh()
    train_head(central, data.train[pooled], data.train_labels[pooled], **train_kw)
    seconds["centralized"] = time.perf_counter() - started

    started = time.perf_counter()
    parts = [(data.train[c.train], data.train_labels[c.train]) for c in data.federation.clients]
    fed = fedavg_head(
        fresh(),
        parts,
        rounds=pft.fedavg_rounds,
        epochs=pft.fedavg_epochs,
        lr=pft.lr,
        batch_size=pft.batch_size,
        seed=cfg.seed,
        test=test,
    )
    seconds["fedavg"] = time.perf_counter() - started

    summary: dict[str, Any] = {
        "method": "fedpft",
        "dataset": cfg.data.dataset,
        "num_clients": len(data.federation),
        "feature_dim": dim,
        "train_examples": int(len(pooled)),
        "test_examples": int(len(data.test_labels)),
        "synthetic_examples": int(len(y_syn)),
        "mixtures": sum(len(m) for m in received),  # (client, class) pairs sent
        "accuracy": {
            "pft": accuracy(head, *test),
            "centralized": accuracy(central, *test),
            "fedavg": fed.accuracies[-1] if fed.accuracies else float("nan"),
        },
        "fedavg_accuracy_by_round": fed.accuracies,
        "bytes": {
            "pft_up": int(sum(sizes)),
            "pft_per_client": sizes,
            "pft_down": 0,
            "fedavg": fed.bytes,
            "head": head_bytes(head),
        },
        "seconds": seconds,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, to_toml(cfg))
    atomic_write_json(run_dir / SUMMARY_FILE, summary)
    return summary
