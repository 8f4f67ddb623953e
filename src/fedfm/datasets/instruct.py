"""A federated instruction benchmark built offline from four built-in datasets.

Two registry entries, built from the same rows (``docs/instruct.md`` has the counts):

- ``instruct`` (task ``instruction``): each example is a conversation of one user message
  (an instruction with its input) and one assistant message (the reference response).
- ``instruct-pref`` (task ``preference``): the same prompts, each as a
  :class:`~fedfm.resources.types.PreferencePair` whose ``chosen`` is ``instruct``'s reference
  and whose ``rejected`` is a seeded wrong response (below).

Tasks (``label_names``, in task id order), each written from one source dataset's *own*
split (a test example comes from the source's test split only):

========================  ==============  =================================================
task                      source          reference response
========================  ==============  =================================================
``question_type``         ``trec6``       the question's coarse TREC label name
``sentiment``             ``sentiment4``  ``negative`` or ``positive`` (sign of the VADER
                                          ground-truth score; neutral rows are not in it)
``spam``                  ``sms_spam``    ``ham`` or ``spam``
``continuation``          ``shakespeare`` the second half of a speech whose first half
                                          is the prompt
========================  ==============  =================================================

The prompts are :data:`QUESTION_TYPE`, :data:`SENTIMENT`, :data:`SPAM` and
:data:`CONTINUATION`. In ``SENTIMENT`` the domain is the source's group, as
:data:`DOMAINS` words it; in ``CONTINUATION`` the play is the Gutenberg file's name with
``_`` read as a space (``henry iv part 1``) and the role is the speaker tag as the text prints
it (sometimes abbreviated: ``HAM``). A continuation example is a speech of
:data:`CONTINUATION_WORDS` words cut at its middle word: the prompt holds the first
``n // 2`` words, the reference the rest.

Sampling, per task and split: the candidates are the source split's rows (for
continuation, its speeches of the right length), each text once and none longer than
:data:`MAX_TEXT_CHARS` characters; a test candidate whose source text occurs anywhere in the
source's train split, or whose user message is a train candidate's, is dropped. Then
:data:`TRAIN_PER_TASK` (train) or :data:`TEST_PER_TASK` (test) are drawn round-robin over
strata in seeded order (label for ``question_type`` and ``spam``, domain and label for
``sentiment``, play for ``continuation``), so strata are as balanced as the source allows.
Everything is seeded by :data:`SEED`: two loads are equal.

``Split.labels`` is the task id and ``Split.groups`` the task name of each row, so the
partitions work on tasks: ``data.partition = "dirichlet"`` gives each client a
Dirichlet(``data.alpha``) mixture of tasks, ``"shards"`` with ``data.shards_per_client = 1``
and a client count that divides 4 tasks' equal pools gives each client one task, and
``"natural"`` makes one client per task.

Preference pairs: for a label task, ``rejected`` is a label name of the same task other
than the reference, drawn uniformly (for the binary tasks, the other label); for
continuation, the reference response of another continuation example of the same split
spoken by another role, drawn uniformly. They are derived from labels and from the text,
not from human judgements: a sanity benchmark for DPO (does training move the policy
towards the right label, towards the true continuation), not a measure of helpfulness or
of human preference.

Example:
    >>> ds = load_dataset("instruct")
    >>> ds.task, ds.label_names[0], ds.train.inputs[0][-1]["role"]
    ('instruction', 'question_type', 'assistant')

``python -m fedfm.datasets.instruct_counts`` prints the counts per task and split.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from fedfm.datasets import sentiment4, sms_spam, trec6
from fedfm.datasets.common import BuiltinDataset, first_per_text, load_dataset, register
from fedfm.resources.types import (
    INSTRUCTION,
    PREFERENCE,
    Conversation,
    Dataset,
    PreferencePair,
    Split,
)

TRAIN_PER_TASK = 300  # examples per task in train (the source permitting)
TEST_PER_TASK = 60  # examples per task in test
SEED = 20_250_620  # fixed on purpose: the benchmark must not move with the run seed
CONTINUATION_WORDS = (16, 64)  # inclusive range of a continuation speech's length in words
MAX_TEXT_CHARS = 400  # longer source texts are left out (short prompts for a 2-core CPU)

TASK_NAMES = ("question_type", "sentiment", "spam", "continuation")  # task id order
LABEL_NAMES = TASK_NAMES

QUESTION_TYPE = (
    "What kind of answer does this question ask for? Answer with one of: "
    + ", ".join(trec6.LABEL_NAMES)
    + ".\n\nQuestion: {text}"
)
SENTIMENT = (
    "What is the sentiment of this {domain}? Answer with one of: "
    + ", ".join(sentiment4.LABEL_NAMES)
    + ".\n\nText: {text}"
)
SPAM = (
    "Is this SMS message spam or ham (not spam)? Answer with one of: "
    + ", ".join(sms_spam.LABEL_NAMES)
    + ".\n\nMessage: {text}"
)
CONTINUATION = (
    "Continue this speech by {role} in Shakespeare's play {play}, in the same style.\n\n"
    "{role}: {opening}"
)
# sentiment4's domain (its group) -> how the sentiment prompt names the text
DOMAINS = {
    "movies": "movie review snippet",
    "tweets": "tweet",
    "amazon": "Amazon product review snippet",
    "nyt": "New York Times editorial snippet",
}

_SPLITS = ("train", "test")
_PAIR_STREAM = len(TASK_NAMES)  # the rejected responses' seed stream, after the tasks'


class _Row(NamedTuple):
    """One example before it takes a dataset's shape (``text`` first: deduplicated by it)."""

    text: str  # the source text, for deduplication and the leakage check
    stratum: str  # what sampling balances
    user: str
    response: str
    choices: tuple[str, ...] = ()  # the task's label names; () for continuation
    speaker: str = ""  # "<play>:<ROLE>" for continuation


def _labelled(split: Split, names: tuple[str, ...], prompt: str) -> list[_Row]:
    """One row per (text, label) of a classification split, stratified by label."""
    assert split.labels is not None  # the label sources are classification sets
    return [
        _Row(text, names[y], prompt.format(text=text), names[y], names)
        for text, y in zip(split.inputs, split.labels.tolist(), strict=True)
    ]


def _question_type(split: Split) -> list[_Row]:
    return _labelled(split, trec6.LABEL_NAMES, QUESTION_TYPE)


def _spam(split: Split) -> list[_Row]:
    return _labelled(split, sms_spam.LABEL_NAMES, SPAM)


def _sentiment(split: Split) -> list[_Row]:
    """Stratified by domain and label; the prompt names the domain."""
    assert split.labels is not None and split.groups is not None  # groups: the domains
    names = sentiment4.LABEL_NAMES
    rows = zip(split.inputs, split.labels.tolist(), split.groups.tolist(), strict=True)
    return [
        _Row(
            text, f"{d}/{names[y]}", SENTIMENT.format(domain=DOMAINS[d], text=text), names[y], names
        )
        for text, y, d in rows
    ]


def _continuation(split: Split) -> list[_Row]:
    assert split.groups is not None  # shakespeare's groups are "<play>:<ROLE>"
    low, high = CONTINUATION_WORDS
    rows = []
    for speech, speaker in zip(split.inputs, split.groups.tolist(), strict=True):
        words = str(speech).split()
        if low <= len(words) <= high:
            play, role = speaker.split(":", 1)
            half = len(words) // 2
            opening, rest = " ".join(words[:half]), " ".join(words[half:])
            user = CONTINUATION.format(role=role, play=play.replace("_", " "), opening=opening)
            rows.append(_Row(str(speech), play, user, rest, (), speaker))
    return rows


# task name -> (source dataset, its rows for one split); the order is TASK_NAMES'
SOURCES: dict[str, tuple[str, Callable[[Split], list[_Row]]]] = {
    "question_type": ("trec6", _question_type),
    "sentiment": ("sentiment4", _sentiment),
    "spam": ("sms_spam", _spam),
    "continuation": ("shakespeare", _continuation),
}


def _round_robin(strata: list[str], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices (sorted) taken one stratum at a time, each stratum in seeded order."""
    _, inverse = np.unique(np.asarray(strata), return_inverse=True)
    rank = np.empty(len(strata), dtype=np.int64)
    for s in range(int(inverse.max()) + 1 if len(strata) else 0):
        members = rng.permutation(np.flatnonzero(inverse == s))
        rank[members] = np.arange(len(members))
    order = np.lexsort((inverse, rank))  # by rank, strata in sorted order within a rank
    return np.sort(order[:n])


def _short(rows: list[_Row]) -> list[_Row]:
    """Each text once (its first row), texts over :data:`MAX_TEXT_CHARS` left out."""
    return [r for r in first_per_text(rows) if len(r.text) <= MAX_TEXT_CHARS]


def _candidates(task_id: int, split_name: str) -> list[_Row]:
    """One task's rows of one split before sampling (test rows never seen in train)."""
    source, make = SOURCES[TASK_NAMES[task_id]]
    ds = load_dataset(source)
    train = _short(make(ds.train))
    if split_name == "train":
        return train
    texts = {str(t) for t in ds.train.inputs} | {r.text for r in train}
    users = {r.user for r in train}
    return [r for r in _short(make(ds.test)) if r.text not in texts and r.user not in users]


def _task_rows(task_id: int, split_name: str) -> list[_Row]:
    """The sampled rows of one task and split."""
    rows = _candidates(task_id, split_name)
    n = TRAIN_PER_TASK if split_name == "train" else TEST_PER_TASK
    rng = np.random.default_rng([SEED, task_id, _SPLITS.index(split_name)])
    return [rows[i] for i in _round_robin([r.stratum for r in rows], n, rng)]


def _rows(split_name: str) -> tuple[list[_Row], np.ndarray]:
    """Every task's rows of one split, task by task, with their task ids."""
    per_task = [_task_rows(t, split_name) for t in range(len(TASK_NAMES))]
    ids = np.concatenate([np.full(len(r), t, dtype=np.int64) for t, r in enumerate(per_task)])
    return [row for rows in per_task for row in rows], ids


def _conversation(row: _Row) -> Conversation:
    return ({"role": "user", "content": row.user}, {"role": "assistant", "content": row.response})


def _rejected(rows: list[_Row], rng: np.random.Generator) -> list[str]:
    """A seeded wrong response per row: another label, or another role's continuation."""
    speakers = np.asarray([r.speaker for r in rows])
    responses = np.asarray([r.response for r in rows], dtype=object)
    is_speech = np.asarray([not r.choices for r in rows])
    out = []
    for row in rows:
        if row.choices:
            wrong = [c for c in row.choices if c != row.response]
        else:
            mask = is_speech & (speakers != row.speaker) & (responses != row.response)
            wrong = responses[mask].tolist()
        out.append(str(wrong[int(rng.integers(len(wrong)))]))
    return out


def _split(split_name: str, preference: bool) -> Split:
    rows, ids = _rows(split_name)
    groups = np.asarray([TASK_NAMES[t] for t in ids.tolist()], dtype=str)
    if not preference:
        return Split([_conversation(r) for r in rows], ids, groups)
    rng = np.random.default_rng([SEED, _PAIR_STREAM, _SPLITS.index(split_name)])
    pairs = [
        PreferencePair(_conversation(r)[:-1], r.response, rejected)
        for r, rejected in zip(rows, _rejected(rows, rng), strict=True)
    ]
    return Split(pairs, ids, groups)


def load() -> Dataset:
    """``instruct``: conversations whose last message is the reference response."""
    train, test = _split("train", False), _split("test", False)
    return Dataset("instruct", INSTRUCTION, train, test, TASK_NAMES)


def load_preferences() -> Dataset:
    """``instruct-pref``: ``instruct``'s prompts with a chosen and a rejected response."""
    train, test = _split("train", True), _split("test", True)
    return Dataset("instruct-pref", PREFERENCE, train, test, TASK_NAMES)


def _answers(rows: list[_Row]) -> str:
    """What a task's references are: label counts, or how many plays and roles."""
    if rows and rows[0].choices:
        counts = Counter(r.stratum for r in rows)
        return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    plays = {r.stratum for r in rows}
    return f"{len(plays)} plays, {len({r.speaker for r in rows})} roles"


def main() -> None:
    """Print the examples per task and split, the candidates they were drawn from, and what
    their references are."""
    print(f"{'task':<14} {'split':<5} {'examples':>8} {'of':>6}  references")
    totals = dict.fromkeys(_SPLITS, 0)
    for task_id, task in enumerate(TASK_NAMES):
        for split_name in _SPLITS:
            rows, pool = _task_rows(task_id, split_name), len(_candidates(task_id, split_name))
            totals[split_name] += len(rows)
            print(f"{task:<14} {split_name:<5} {len(rows):>8} {pool:>6}  {_answers(rows)}")
    for split_name, total in totals.items():
        print(f"{'all':<14} {split_name:<5} {total:>8}")


register(BuiltinDataset("instruct", load, LABEL_NAMES))
register(BuiltinDataset("instruct-pref", load_preferences, LABEL_NAMES))
