"""Quality control of generated examples: pure functions over texts, labels and embeddings.

Each filter returns a boolean mask (``True``: keep) so a caller can count what each one
removed. The label filter is a small probe: a logistic regression on MiniLM embeddings,
scored out of fold, that says how well each sample's label agrees with the rest of the set
(confident learning, Northcutt et al. 2021).

Example:
    >>> exact_duplicates(["Hi there!", "hi  there", "Bye"]).tolist()
    [True, False, True]
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch

_NON_WORD = re.compile(r"[^\w\s]")


def normalize(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: what counts as the same text."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def exact_duplicates(texts: Sequence[str]) -> np.ndarray:
    """Keep the first occurrence of each normalised text (empty texts are dropped too)."""
    seen: set[str] = set()
    keep = np.zeros(len(texts), dtype=bool)
    for i, text in enumerate(texts):
        key = normalize(text)
        if key and key not in seen:
            seen.add(key)
            keep[i] = True
    return keep


def lengths_ok(texts: Sequence[str], *, min_words: int, max_words: int) -> np.ndarray:
    """Keep texts of ``min_words`` to ``max_words`` words."""
    counts = np.array([len(t.split()) for t in texts], dtype=np.int64)
    return (counts >= min_words) & (counts <= max_words)


def near_duplicates(embeddings: torch.Tensor, threshold: float) -> np.ndarray:
    """Keep a row unless its cosine to an earlier kept row is at least ``threshold``.

    Args:
        embeddings: ``(N, D)`` unit-length rows, in generation order.
    """
    n = len(embeddings)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    sims = (embeddings @ embeddings.T).numpy()
    for i in range(n):
        keep[i] = not (sims[i, :i][keep[:i]] >= threshold).any()
    return keep


def _fit_probe(
    x: torch.Tensor, y: torch.Tensor, num_labels: int, l2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression (L-BFGS) on features ``x``; returns weight and bias."""
    w = torch.zeros(x.shape[1], num_labels, requires_grad=True)
    b = torch.zeros(num_labels, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def probe_probabilities(
    embeddings: torch.Tensor,
    labels: np.ndarray,
    num_labels: int,
    *,
    folds: int = 5,
    seed: int = 0,
    l2: float = 1e-3,
) -> np.ndarray:
    """Out-of-fold class probabilities ``(N, num_labels)`` of a linear probe.

    Every row is scored by a probe that never saw it, trained on the other folds (folds
    are stratified by label and seeded). Fewer than 2 rows per fold: ``folds`` shrinks.
    """
    n = len(labels)
    probs = np.full((n, num_labels), 1.0 / num_labels)
    folds = min(folds, n)
    if folds < 2:
        return probs
    rng = np.random.default_rng([seed, 2])
    fold_of = np.empty(n, dtype=np.int64)
    for c in np.unique(labels):  # stratified: each label spread over the folds
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold_of[idx] = np.arange(len(idx)) % folds
    x = embeddings.float()
    y = torch.as_tensor(labels, dtype=torch.long)
    torch_state = torch.random.get_rng_state()
    try:
        for f in range(folds):
            test = torch.as_tensor(fold_of == f)
            if test.all() or not test.any():
                continue
            w, b = _fit_probe(x[~test], y[~test], num_labels, l2)
            probs[test.numpy()] = torch.softmax(x[test] @ w + b, dim=-1).numpy()
    finally:
        torch.random.set_rng_state(torch_state)
    return probs


def label_filter(
    probs: np.ndarray, labels: np.ndarray, *, min_confidence: float, relabel: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Keep a sample whose probe gives its intended label at least ``min_confidence``.

    With ``relabel``, a low-confidence sample whose probe's top label has probability
    >= 0.5 is kept under that label instead.

    Returns:
        ``(keep, labels)``: the mask and the (possibly relabelled) labels.
    """
    own = probs[np.arange(len(labels)), labels]
    keep = own >= min_confidence
    new = labels.copy()
    if relabel:
        top = probs.argmax(axis=1)
        swap = ~keep & (probs.max(axis=1) >= 0.5)
        new[swap] = top[swap]
        keep |= swap
    return keep, new
