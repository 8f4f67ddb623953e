"""Score a finished run again (``fedfm eval``): its final params on its test set or new data.

The model is built as the run built it (same config, seed, backbone: the backbone hash in
``adapter.safetensors`` is checked), the final params and FLoRA's merged rounds are loaded,
and the task's metrics are computed exactly as a round computes them, so on the configured
test set the numbers are the run's last record's.

Example:
    >>> result = rescore_run("runs/demo")  # doctest: +SKIP
    >>> result["metrics"]["accuracy"]  # doctest: +SKIP
    0.92
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedfm.config import RunConfig, load_config
from fedfm.data.batching import batches
from fedfm.data.federation import subsample
from fedfm.data.load import is_file_dataset, load_data
from fedfm.data.texts import TextColumn
from fedfm.errors import ConfigError
from fedfm.io import atomic_write_json
from fedfm.models.adapters import apply_adapter
from fedfm.models.export import read_labels
from fedfm.models.params import load_params_file
from fedfm.resources.models import load_model
from fedfm.resources.types import CLASSIFICATION, Dataset, Split, is_generative
from fedfm.run_files import MERGED_FILE, PARAMS_FILE, check_can_score
from fedfm.runtime.job import encode_split, resolve_device
from fedfm.runtime.run_folder import CONFIG_FILE
from fedfm.tasks import TASKS


def rescore_run(
    run_dir: str | Path, *, data: str | None = None, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Score the run's final global params; see the module docstring.

    Args:
        run_dir: a finished run folder (``config.toml``, ``adapter.safetensors``).
        data: a dataset in place of the run's ``data.dataset``: a file (CSV, JSONL, Parquet,
            ... read with the run's column keys) is scored whole, every row; a registry name
            by its test split (``data.max_test_examples`` applies).
        overrides: further ``key=value`` config overrides (e.g. the new file's columns).

    Returns:
        ``{"run", "dataset", "task", "examples", "metrics"}``.

    Raises:
        FedFMError: not a finished run, a personalised run, or data whose task or label
            names do not match the run's.
    """
    run_dir = Path(run_dir)
    cfg = _run_config(run_dir, data, overrides)
    dataset = load_data(cfg.data)
    if data is not None and is_file_dataset(data):  # new data: every row of the file
        test = _all_rows(dataset)
    else:
        test = subsample(dataset.test, cfg.data.max_test_examples, seed=cfg.seed)
    task_name = _run_task(run_dir, default=dataset.task)
    if dataset.task != task_name:
        raise ConfigError(
            f"data.dataset = {cfg.data.dataset!r} is a {dataset.task} dataset, but the run "
            f"trained a {task_name} model: score it on {task_name} data"
        )
    labels = dataset.label_names
    if task_name == CLASSIFICATION:
        labels = read_labels(run_dir) or labels
        test = align_labels(test, dataset.label_names, labels, source=cfg.data.dataset)
    input_dim = np.asarray(test.inputs).shape[1] if dataset.modality == "features" else 0
    model, tokenizer = _model(cfg, run_dir, task_name, len(labels), input_dim)
    encoded = encode_split(test, tokenizer, task=task_name, cfg=cfg)
    task = TASKS.get(task_name).from_config(cfg, len(labels))
    metrics = task.evaluate(
        model,
        batches(
            encoded,
            np.arange(len(encoded)),
            batch_size=cfg.eval.batch_size,
            causal_lm=is_generative(task_name),
        ),
    )
    return {
        "run": str(run_dir),
        "dataset": cfg.data.dataset,
        "task": task_name,
        "examples": len(encoded),
        "metrics": metrics,
    }


def write_result(result: dict[str, Any], path: str | Path) -> Path:
    """Save :func:`rescore_run`'s result as JSON (atomic)."""
    return atomic_write_json(path, result)


def default_result_path(run_dir: str | Path, data: str | None) -> Path:
    """``RUN/eval.json``, or ``RUN/eval-<name>.json`` for ``--data``."""
    if data is None:
        return Path(run_dir) / "eval.json"
    return Path(run_dir) / f"eval-{Path(data).stem or 'data'}.json"


def _run_config(run_dir: Path, data: str | None, overrides: Sequence[str]) -> RunConfig:
    check_can_score(run_dir)
    extra = [f"data.dataset={json.dumps(str(data))}"] if data is not None else []
    return load_config(run_dir / CONFIG_FILE, [*overrides, *extra])


def _run_task(run_dir: Path, *, default: str) -> str:
    summary = run_dir / "summary.json"
    if not summary.is_file():
        return default
    return str(json.loads(summary.read_text()).get("task") or default)


def _all_rows(dataset: Dataset) -> Split:
    """Train and test rows of ``dataset`` together (a new file is all test data)."""
    train, test = dataset.train, dataset.test
    labels = None
    if train.labels is not None and test.labels is not None:
        labels = np.concatenate([train.labels, test.labels])
    if isinstance(train.inputs, np.ndarray) and isinstance(test.inputs, np.ndarray):
        return Split(np.concatenate([train.inputs, test.inputs]), labels)
    if isinstance(train.inputs, TextColumn) and isinstance(test.inputs, TextColumn):
        # one view of the file's Arrow columns: sentence pairs stay pairs, tokens stay cached
        column = train.inputs
        rows = np.concatenate([column.source_rows, test.inputs.source_rows])
        return Split(TextColumn(column.text, column.pair, rows=rows, key=column.key), labels)
    return Split([*train.inputs, *test.inputs], labels)


def align_labels(
    split: Split, names: Sequence[str], run_names: Sequence[str], *, source: str
) -> Split:
    """``split``'s label ids re-indexed from ``names`` to the run's ``run_names`` by name.

    Raises:
        ConfigError: a label the run never saw (lists both sets of names).
    """
    if tuple(names) == tuple(run_names) or split.labels is None:
        return split
    unknown = sorted(set(names) - set(run_names))
    if unknown:
        raise ConfigError(
            f"data.dataset = {source!r} has labels {list(names)}, but the run was trained on "
            f"{list(run_names)} ({unknown} unknown to it): score it on data with the run's "
            "label names"
        )
    to_run = np.array([list(run_names).index(n) for n in names], dtype=np.int64)
    return Split(split.inputs, to_run[split.labels], split.groups)


def _model(
    cfg: RunConfig, run_dir: Path, task: str, num_labels: int, input_dim: int
) -> tuple[torch.nn.Module, Any]:
    """The run's model (built as ``build_job`` builds it) with its final params loaded."""
    torch.manual_seed(cfg.seed)  # as build_job: the same initial head and LoRA A (FFA-LoRA)
    loaded = load_model(
        cfg.model.name,
        task=task,
        num_labels=num_labels,
        pretrained=cfg.model.pretrained,
        input_dim=input_dim,
        dtype=cfg.model.dtype,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    model = apply_adapter(loaded.model, cfg.adapter, architecture=loaded.architecture, task=task)
    model.to(resolve_device(cfg.device)).eval()
    load_params_file(model, run_dir / PARAMS_FILE)
    _add_merged(model, run_dir / MERGED_FILE)
    return model, loaded.tokenizer


@torch.no_grad()
def _add_merged(model: torch.nn.Module, path: Path) -> None:
    """FLoRA's merged rounds (already scaled): frozen weight += delta, as the run did."""
    if not path.is_file():
        return
    from safetensors.torch import load_file

    named = dict(model.named_parameters())
    for name, delta in load_file(str(path)).items():
        weight = named[name]
        weight.copy_(weight + delta.to(weight.device, weight.dtype))
