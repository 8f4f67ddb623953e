"""scikit-learn's 8x8 handwritten digits, as features (no synthetic description: not text)."""

from __future__ import annotations

import numpy as np

from fedfm.datasets.common import BuiltinDataset, build, register
from fedfm.resources.types import CLASSIFICATION, Dataset

LABEL_NAMES = tuple(str(d) for d in range(10))


def load() -> Dataset:
    """digits with its stable split: features ``(N, 64)`` scaled to [0, 1], float32."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    return build(
        "digits",
        CLASSIFICATION,
        x,
        y,
        strata=[str(label) for label in y],
        label_names=LABEL_NAMES,
        modality="features",
    )


register(BuiltinDataset("digits", load, LABEL_NAMES))
