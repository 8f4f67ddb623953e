"""Scores of generated texts against references: exact match, ROUGE-L and label accuracy.

A scorer maps ``(predictions, references)`` to :class:`Scores`: one value per example for
each metric (so per-client means can be formed) and their means. Scorers are registered by
name in :data:`SCORERS`: ``"text"`` for free-form answers, ``"label"`` for answers that
name a class.

Example:
    >>> scores = SCORERS.get("text")(["The cat sat."], ["the cat sat"])
    >>> scores.means()
    {'exact_match': 1.0, 'rouge_l': 1.0}
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fedfm.registry import Registry

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


@dataclass(frozen=True)
class Scores:
    """Per-example scores of one set of predictions.

    Attributes:
        per_example: metric name -> one value per example, in the order of the inputs.
        main: the metric a run reports first and ranks clients by (higher is better).
    """

    per_example: dict[str, list[float]]
    main: str

    def means(self) -> dict[str, float]:
        """Each metric's mean over the examples (0.0 for no examples)."""
        return {k: sum(v) / len(v) if v else 0.0 for k, v in self.per_example.items()}


Scorer = Callable[[Sequence[str], Sequence[str]], Scores]
SCORERS: Registry[Scorer] = Registry("scorer")


def normalize(text: str) -> str:
    """SQuAD's answer normalisation: lowercase, drop ASCII punctuation and the articles
    a/an/the, collapse whitespace.

    Example:
        >>> normalize("  The Eiffel-Tower, in PARIS! ")
        'eiffeltower in paris'
    """
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the two texts are equal after :func:`normalize`, else 0.0."""
    return float(normalize(prediction) == normalize(reference))


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of tokens), by ``rouge-score``.

    Tokens are ``rouge-score``'s defaults, as in the original ROUGE: lowercase runs of
    ``[a-z0-9]``, no stemming; every other character is a separator, so text with no ASCII
    letter or digit has no tokens and scores 0.0 (against anything, itself included).
    """
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


@functools.cache
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer  # imports nltk (~1 s): only when ROUGE is asked for

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def label_match(prediction: str, label: str) -> float:
    """1.0 when the generated text names ``label``: after :func:`normalize`, the prediction
    equals the label or begins with the label followed by a space (``"Positive. Great
    film"`` names ``positive``; ``"nothing"`` does not name ``no``), else 0.0."""
    pred, ref = normalize(prediction), normalize(label)
    return float(pred == ref or pred.startswith(ref + " "))


def _check_lengths(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions for {len(references)} references: score one "
            "prediction per reference, in the same order"
        )


@SCORERS.register("text")
def score_text(predictions: Sequence[str], references: Sequence[str]) -> Scores:
    """Free-form answers: ``exact_match`` and ``rouge_l`` (F-measure) per example."""
    _check_lengths(predictions, references)
    pairs = list(zip(predictions, references, strict=True))
    return Scores(
        per_example={
            "exact_match": [exact_match(p, r) for p, r in pairs],
            "rouge_l": [rouge_l(p, r) for p, r in pairs],
        },
        main="rouge_l",
    )


@SCORERS.register("label")
def score_label(predictions: Sequence[str], references: Sequence[str]) -> Scores:
    """Answers that name a class: ``accuracy`` of the generated label (:func:`label_match`)."""
    _check_lengths(predictions, references)
    pairs = zip(predictions, references, strict=True)
    return Scores(per_example={"accuracy": [label_match(p, r) for p, r in pairs]}, main="accuracy")
