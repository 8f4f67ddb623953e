"""Contamination check: does a synthetic set hold near-copies of the test set?

Two signals, as in LLM decontamination practice: a shared word n-gram (GPT-3 and Llama
reports use 8- to 13-grams; short texts count as one gram of all their words), and the
nearest test example's embedding cosine. A sample flagged by either is dropped.

Example:
    >>> shares_ngram(["what is the capital city of france today"],
    ...              ["tell me what is the capital city of france today"], n=8).tolist()
    [True]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedfm.synthetic.filters import normalize


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The normalised word n-grams of ``text``; a text of fewer words is one gram."""
    words = tuple(normalize(text).split())
    if len(words) < n:
        return {words} if words else set()
    return {words[i : i + n] for i in range(len(words) - n + 1)}


def shares_ngram(texts: Sequence[str], reference: Sequence[str], *, n: int) -> np.ndarray:
    """For each text: does it share a word ``n``-gram with any reference text?"""
    grams: set[tuple[str, ...]] = set()
    for ref in reference:
        grams |= word_ngrams(ref, n)
    return np.array([bool(word_ngrams(t, n) & grams) for t in texts], dtype=bool)


def nearest_similarity(
    embeddings: torch.Tensor, reference: torch.Tensor, *, chunk: int = 1024
) -> np.ndarray:
    """For each row, the cosine to its nearest reference row (unit-length inputs)."""
    if len(reference) == 0:
        return np.full(len(embeddings), -1.0)
    out = [
        (embeddings[i : i + chunk] @ reference.T).max(dim=1).values
        for i in range(0, len(embeddings), chunk)
    ]
    return torch.cat(out).numpy() if out else np.zeros(0)
