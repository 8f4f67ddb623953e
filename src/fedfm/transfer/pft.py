"""FedPFT (Beitollahi et al., 2024): one-shot transfer of per-class Gaussian mixtures of frozen
FM features.

Each client fits, for every class it holds, a Gaussian mixture to its own frozen features
(:func:`fit_client_mixtures`) and sends only the mixtures' parameters: weights, means and
covariances as float32, plus the class's row count (:func:`mixture_tensors`; the upload's
bytes are those of that safetensors payload). The server reads them back
(:func:`mixtures_from_tensors`), draws synthetic features from every client's mixtures
(:func:`sample_features`, seeded) and trains a classifier head on them
(:mod:`fedfm.transfer.head`).

Example:
    >>> mixtures = fit_client_mixtures(x, y, components=2, covariance="diag", seed=0)
    ... # doctest: +SKIP
    >>> x_syn, y_syn = sample_features([mixtures], per_class=0, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedfm.models.params import Params, payload_bytes
from fedfm.transfer.choices import COVARIANCES

ROWS_PER_COMPONENT = 2  # a class with n rows gets at most n // 2 components (at least 1)
REG_COVAR = 1e-6  # sklearn's default, added to every variance (a lone row's is 0)


@dataclass(frozen=True)
class ClassMixture:
    """One client's Gaussian mixture of one class's features.

    Attributes:
        label: the class id.
        count: the client's rows of that class.
        weights: ``(k,)`` component weights, summing to 1.
        means: ``(k, d)``.
        covariances: ``(k, d)`` variances (``diag``) or ``(k, d, d)`` matrices (``full``).
    """

    label: int
    count: int
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray

    @property
    def covariance(self) -> str:
        return "full" if self.covariances.ndim == 3 else "diag"


def components_for(rows: int, components: int) -> int:
    """Components a class of ``rows`` rows gets: ``components``, fewer when it has fewer than
    :data:`ROWS_PER_COMPONENT` rows per component, never less than 1."""
    return max(1, min(components, rows // ROWS_PER_COMPONENT))


def fit_client_mixtures(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    components: int,
    covariance: str = "diag",
    seed: int,
) -> list[ClassMixture]:
    """A mixture for every class present in ``labels`` (sorted by class id).

    Args:
        features: ``(N, d)`` one client's frozen features.
        labels: ``(N,)`` their class ids.
        components: components per class (see :func:`components_for`).
        covariance: ``diag`` or ``full``.
        seed: seeds k-means initialisation (the fit is a pure function of its inputs).
    """
    from sklearn.mixture import GaussianMixture

    if covariance not in COVARIANCES:
        raise ValueError(f"covariance = {covariance!r} is not one of {COVARIANCES}")
    mixtures = []
    for label in np.unique(labels):
        rows = features[labels == label].astype(np.float64)
        if len(rows) == 1:  # sklearn needs 2 rows: one Gaussian at the row, variance REG_COVAR
            mixtures.append(_single_row(int(label), rows[0], covariance))
            continue
        k = components_for(len(rows), components)
        gmm = GaussianMixture(
            n_components=k, covariance_type=covariance, reg_covar=REG_COVAR, random_state=seed
        ).fit(rows)
        mixtures.append(
            ClassMixture(
                label=int(label),
                count=len(rows),
                weights=gmm.weights_.astype(np.float32),
                means=gmm.means_.astype(np.float32),
                covariances=gmm.covariances_.astype(np.float32),
            )
        )
    return mixtures


def _single_row(label: int, row: np.ndarray, covariance: str) -> ClassMixture:
    d = len(row)
    variances = np.full(d, REG_COVAR)
    covariances = variances[None] if covariance == "diag" else np.diag(variances)[None]
    return ClassMixture(
        label,
        1,
        np.ones(1, np.float32),
        row[None].astype(np.float32),
        covariances.astype(np.float32),
    )


def mixture_tensors(mixtures: Sequence[ClassMixture]) -> Params:
    """What a client sends: ``class<c>/{count,weights,means,covariances}`` per class."""
    tensors: Params = {}
    for m in mixtures:
        tensors[f"class{m.label}/count"] = torch.tensor(m.count, dtype=torch.int64)
        tensors[f"class{m.label}/weights"] = torch.from_numpy(m.weights)
        tensors[f"class{m.label}/means"] = torch.from_numpy(m.means)
        tensors[f"class{m.label}/covariances"] = torch.from_numpy(m.covariances)
    return tensors


def mixtures_from_tensors(tensors: Params) -> list[ClassMixture]:
    """The server's reading of :func:`mixture_tensors` (classes in id order)."""
    labels = sorted({int(k.split("/")[0].removeprefix("class")) for k in tensors})
    return [
        ClassMixture(
            label=c,
            count=int(tensors[f"class{c}/count"]),
            weights=tensors[f"class{c}/weights"].numpy(),
            means=tensors[f"class{c}/means"].numpy(),
            covariances=tensors[f"class{c}/covariances"].numpy(),
        )
        for c in labels
    ]


def upload_bytes(mixtures: Sequence[ClassMixture]) -> int:
    """The exact bytes of a client's upload (its mixtures as a safetensors payload)."""
    return payload_bytes(mixture_tensors(mixtures))


def sample_mixture(mixture: ClassMixture, n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, d)`` float32 draws from ``mixture``: a component by its weight, then its Gaussian."""
    weights = mixture.weights.astype(np.float64)
    per_component = rng.multinomial(n, weights / weights.sum())
    d = mixture.means.shape[1]
    draws = []
    for j, count in enumerate(per_component):
        noise = rng.standard_normal((count, d))
        cov = mixture.covariances[j].astype(np.float64)
        if mixture.covariance == "diag":
            scaled = noise * np.sqrt(cov)
        else:  # L L^T = cov; a near-singular one gets the jitter sklearn fitted it with
            scaled = noise @ np.linalg.cholesky(cov + REG_COVAR * np.eye(d)).T
        draws.append(mixture.means[j].astype(np.float64) + scaled)
    return np.concatenate(draws).astype(np.float32) if draws else np.zeros((0, d), np.float32)


def sample_features(
    clients: Sequence[Sequence[ClassMixture]], *, per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The server's synthetic training set: from every client's mixture of every class,
    ``per_class`` draws (0: as many as the client's rows of that class).

    Each (client, class) draws from its own generator seeded by ``(seed, client, class)``, so
    one client's mixtures never change another's draws.

    Returns:
        ``(features (M, d) float32, labels (M,) int64)``, client by client, class by class.
    """
    xs, ys = [], []
    for client, mixtures in enumerate(clients):
        for m in mixtures:
            n = per_class or m.count
            rng = np.random.default_rng([seed, client, m.label])
            xs.append(sample_mixture(m, n, rng))
            ys.append(np.full(n, m.label, dtype=np.int64))
    if not xs:
        raise ValueError("no client sent a mixture: nothing to sample")
    return np.concatenate(xs), np.concatenate(ys)
