"""A remote client's own file (``fedfm join --data FILE``), read as the server's config says.

The client reads its file with the same reader and the same column keys
(``data.text_column``, ``data.text_pair_column``, ``data.label_column``) as the server's
config declares, and maps its labels onto the server's label names (a name, or an id below
their count). A file without one of those columns, or with a label the server does not know,
is refused with both sides listed. A client may hold only some of the classes (label skew is
the point of federated learning); the group column is not needed (the whole file is one
client) and a split column, if the file has one, keeps only its ``train`` rows.

Example:
    >>> split = read_own_data("clinic.csv", cfg)   # doctest: +SKIP
    >>> len(split), split.labels[:3]               # doctest: +SKIP
    (812, array([0, 2, 1]))
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from fedfm.config import RunConfig
from fedfm.data.file_dataset import FileSpec, read_rows
from fedfm.data.load import is_file_dataset, load_data
from fedfm.resources.types import Split

_KEYS = ("text_column", "text_pair_column", "label_column")


def server_labels(cfg: RunConfig) -> tuple[str, tuple[str, ...]]:
    """The server's task and label names: from its config (a dataset file's, resolved by
    the server) or, for a registry dataset, from the dataset itself (it ships with fedfm)."""
    if is_file_dataset(cfg.data.dataset):
        return cfg.data.task, tuple(cfg.data.label_names)
    dataset = load_data(cfg.data)
    return dataset.task, dataset.label_names


def read_own_data(path: str | Path, cfg: RunConfig) -> Split:
    """Every training row of the client's own file, labelled with the server's label ids.

    Args:
        path: the client's file (any format ``data.dataset`` takes).
        cfg: the server's config (its column keys and, for a file, its label names).

    Raises:
        ConfigError: the file is unreadable, lacks a column the server's config names, or
            holds labels the server's dataset does not have (both sides listed).
    """
    task, names = server_labels(cfg)
    declared = ", ".join(
        f"{key} = {getattr(cfg.data, key)!r}" for key in _KEYS if getattr(cfg.data, key)
    )
    spec = FileSpec.of(
        cfg.data,
        path=str(path),
        task=task,
        label_names=names,
        group="",
        what=f"--data {path}",
        keys_from=f" (the server's config: {declared})",
        min_classes=1,
        split_optional=True,
    )
    rows = read_rows(spec)
    keep = np.arange(len(rows.texts)) if rows.is_test is None else np.flatnonzero(~rows.is_test)
    return rows.take(keep)


def own_job_config(cfg: RunConfig, path: str | Path) -> RunConfig:
    """The config a client builds its job from when it brings its own file.

    A registry dataset ships with fedfm, so the client builds the server's job as is. A
    server's dataset file is not on the client: the client's own file stands in for it, with
    the server's task and label names (so the model's head matches) and a partition that
    fits any file (its federation is replaced by the client's own rows anyway).
    """
    if not is_file_dataset(cfg.data.dataset):
        return cfg
    task, names = server_labels(cfg)
    data = replace(
        cfg.data,
        dataset=str(path),
        task=task,
        label_names=names,
        partition="iid",
        min_client_size=1,
        client_eval_fraction=0.0,
        max_train_examples=0,
        max_test_examples=0,
        group_column="",
        split_column="",
    )
    return replace(cfg, data=data)
