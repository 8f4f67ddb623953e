"""The synthetic dataset file: versioned JSONL rows plus a metadata sidecar, written atomically.

``NAME.jsonl`` holds one example per line, each recording how it was made::

    {"format": "fedfm-synthetic/1", "text": "...", "label": 3, "label_name": "human",
     "generator": "...", "template": "...", "sampling": {...}, "seed": 0, "batch": 2,
     "batch_seed": 123, "topic": "music"}

``NAME.jsonl.meta.json`` holds what the filters removed, the label agreement rate, the
contamination check and the generation cost. The data file is written first, the sidecar
last, each by an atomic rename: a set without its sidecar is incomplete and never read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedfm.errors import ConfigError
from fedfm.io import atomic_write_json, atomic_write_text

FORMAT = "fedfm-synthetic/1"
META_SUFFIX = ".meta.json"


@dataclass(frozen=True)
class SyntheticSet:
    """A synthetic dataset read from disk.

    Attributes:
        rows: one dict per example (see the module docstring).
        meta: the sidecar: filter counts, agreement, contamination, cost.
        path: the JSONL file.
    """

    rows: list[dict[str, Any]]
    meta: dict[str, Any]
    path: Path

    @property
    def texts(self) -> list[str]:
        return [r["text"] for r in self.rows]

    @property
    def labels(self) -> np.ndarray:
        return np.array([r["label"] for r in self.rows], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)


def content_key(obj: Any) -> str:
    """A short hash of a JSON-able description (the cache key of what it describes)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def meta_path(path: Path) -> Path:
    return path.with_name(path.name + META_SUFFIX)


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Rows as JSONL, atomically."""
    return atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def write_set(path: Path, rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> SyntheticSet:
    """Write the rows, then the sidecar (which marks the set complete)."""
    write_rows(path, rows)
    atomic_write_json(meta_path(path), {"format": FORMAT, **meta})
    return SyntheticSet(list(rows), {"format": FORMAT, **meta}, path)


def is_complete(path: Path) -> bool:
    return path.is_file() and meta_path(path).is_file()


def read_set(path: str | Path, *, label_names: Sequence[str] | None = None) -> SyntheticSet:
    """Read a synthetic set, checking its format and (if given) its label names.

    Raises:
        ConfigError: a missing file or sidecar, another format, an empty set, or labels
            that are not the dataset's.
    """
    path = Path(path)
    if not is_complete(path):
        missing = path if not path.is_file() else meta_path(path)
        raise ConfigError(
            f"synthetic.path = '{path}': {missing} does not exist; write a set with "
            "`fedfm synth --out FILE` (it writes FILE and FILE.meta.json)"
        )
    meta = json.loads(meta_path(path).read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ConfigError(
            f"synthetic.path = '{path}' has format {meta.get('format')!r}, not {FORMAT!r}"
        )
    rows = read_rows(path)
    if not rows:
        raise ConfigError(f"synthetic.path = '{path}' holds no examples")
    if label_names is not None and list(meta.get("label_names", [])) != list(label_names):
        raise ConfigError(
            f"synthetic.path = '{path}' was written for the labels {meta.get('label_names')}, "
            f"but the dataset's labels are {list(label_names)}: generate a set for this dataset"
        )
    return SyntheticSet(rows, meta, path)


def synthetic_summary(synthetic: SyntheticSet, mode: str) -> dict[str, Any]:
    """What a run records about the synthetic set it used (``summary.json``)."""
    meta = synthetic.meta
    contamination = meta.get("contamination", {})
    return {
        "synthetic_mode": mode,
        "synthetic_path": str(synthetic.path),
        "synthetic_examples": len(synthetic),
        "synthetic_generated": meta.get("generated"),
        "synthetic_removed": meta.get("removed"),
        "synthetic_label_agreement": meta.get("label_agreement"),
        "synthetic_contamination_dropped": contamination.get("dropped"),
        "synthetic_nearest_test_similarity": contamination.get("nearest_similarity_mean"),
        "synthetic_generation_seconds": meta.get("generation_seconds"),
        "synthetic_samples_per_second": meta.get("samples_per_second"),
    }
