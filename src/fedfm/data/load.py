"""The dataset a config names: a registry name, or the path of the user's own file.

Example:
    >>> from fedfm.config import DataConfig
    >>> load_data(DataConfig(dataset="digits")).num_labels
    10
"""

from __future__ import annotations

from dataclasses import replace

from fedfm.config import DataConfig, RunConfig
from fedfm.data.source import ACCEPTED, looks_like_path
from fedfm.datasets import DATASETS, load_dataset
from fedfm.errors import ConfigError, closest
from fedfm.resources.types import Dataset


def is_file_dataset(name: str) -> bool:
    """Whether ``data.dataset = name`` is a file or folder (not a registry name)."""
    return name not in DATASETS and looks_like_path(name)


def load_data(cfg: DataConfig) -> Dataset:
    """The dataset ``cfg.dataset`` names, with its train/test split.

    Args:
        cfg: the ``[data]`` table; its column keys read a dataset file.

    Raises:
        ConfigError: a name that is neither registered nor a path, a task or label names
            that contradict a registry dataset, or any problem with the file (see
            :func:`~fedfm.data.file_dataset.read_file_dataset`).
    """
    if cfg.dataset in DATASETS:
        return _registry(cfg)
    if not looks_like_path(cfg.dataset):
        raise ConfigError(
            f"data.dataset = {cfg.dataset!r} is neither a registered dataset "
            f"({', '.join(DATASETS.names())}) nor a path.{closest(cfg.dataset, DATASETS.names())} "
            f"Give a registry name or the path of {ACCEPTED}"
        )
    from fedfm.data.file_dataset import read_file_dataset

    return read_file_dataset(cfg)


def _registry(cfg: DataConfig) -> Dataset:
    dataset = load_dataset(cfg.dataset)
    if cfg.task not in ("auto", dataset.task):
        raise ConfigError(
            f"data.task = {cfg.task!r}, but data.dataset = {cfg.dataset!r} is {dataset.task}: "
            "set data.task = 'auto'"
        )
    if cfg.label_names and tuple(cfg.label_names) != dataset.label_names:
        raise ConfigError(
            f"data.label_names = {list(cfg.label_names)}, but data.dataset = {cfg.dataset!r} "
            f"has the labels {list(dataset.label_names)}: set data.label_names = []"
        )
    return dataset


def resolved(cfg: RunConfig, dataset: Dataset) -> RunConfig:
    """``cfg`` with a dataset file's task and label names written in.

    The resolved config is what a run records and what ``fedfm serve`` sends its remote
    clients, so each client maps its own file's labels onto the same ids. Registry
    datasets leave ``cfg`` as it is.
    """
    if not dataset.source:
        return cfg
    data = replace(cfg.data, task=dataset.task, label_names=dataset.label_names)
    return replace(cfg, data=data)
