"""The offline instruction benchmark: `instruct` (conversations) and `instruct-pref` (DPO pairs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedfm.config import DataConfig
from fedfm.data.federation import build_federation
from fedfm.datasets import DATASETS, instruct, load_dataset, sentiment4, sms_spam, trec6
from fedfm.resources.types import INSTRUCTION, PREFERENCE, Dataset, PreferencePair

LABEL_TASKS = {  # task -> (its source, the label names its responses are drawn from)
    "question_type": ("trec6", trec6.LABEL_NAMES),
    "sentiment": ("sentiment4", sentiment4.LABEL_NAMES),
    "spam": ("sms_spam", sms_spam.LABEL_NAMES),
}
PER_TASK = {"train": instruct.TRAIN_PER_TASK, "test": instruct.TEST_PER_TASK}


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return load_dataset("instruct")


@pytest.fixture(scope="module")
def pref() -> Dataset:
    return load_dataset("instruct-pref")


def _user(conversation: tuple) -> str:
    return conversation[0]["content"]


def _speaker_line(conversation: tuple) -> str:
    """The continuation prompt's first line: it names the role and the play."""
    return _user(conversation).split("\n\n", 1)[0]


def _of_task(split, task: str) -> list:
    task_id = instruct.TASK_NAMES.index(task)
    return [x for x, t in zip(split.inputs, split.labels.tolist(), strict=True) if t == task_id]


def _task_shares(ds: Dataset, client) -> np.ndarray:
    labels = ds.train.labels[np.concatenate([client.train, client.eval])]
    return np.bincount(labels, minlength=len(instruct.TASK_NAMES)) / len(labels)


def test_both_are_registered_with_their_tasks(ds: Dataset, pref: Dataset) -> None:
    assert {"instruct", "instruct-pref"} <= set(DATASETS.names())
    assert (ds.name, ds.task, ds.modality) == ("instruct", INSTRUCTION, "text")
    assert (pref.name, pref.task) == ("instruct-pref", PREFERENCE)
    assert ds.label_names == pref.label_names == instruct.TASK_NAMES


def test_two_loads_are_equal() -> None:
    for loader in (instruct.load, instruct.load_preferences):
        a, b = loader(), loader()
        for split_a, split_b in ((a.train, b.train), (a.test, b.test)):
            assert split_a.inputs == split_b.inputs
            assert np.array_equal(split_a.labels, split_b.labels)
            assert np.array_equal(split_a.groups, split_b.groups)


@pytest.mark.parametrize("split_name", ["train", "test"])
def test_each_task_has_its_size_and_labels_are_task_ids(ds: Dataset, split_name: str) -> None:
    split = getattr(ds, split_name)
    assert split.labels.dtype == np.int64 and len(split.labels) == len(split)
    counts = np.bincount(split.labels, minlength=len(ds.label_names))
    assert counts.tolist() == [PER_TASK[split_name]] * len(instruct.TASK_NAMES)
    assert split.groups.tolist() == [ds.label_names[t] for t in split.labels.tolist()]


@pytest.mark.parametrize("split_name", ["train", "test"])
def test_every_example_is_a_user_turn_then_a_non_empty_response(
    ds: Dataset, split_name: str
) -> None:
    for conversation in getattr(ds, split_name).inputs:
        assert [m["role"] for m in conversation] == ["user", "assistant"]
        assert conversation[0]["content"].strip() and conversation[-1]["content"].strip()
        assert len(conversation[0]["content"]) <= 600  # the cap on source texts keeps it short


@pytest.mark.parametrize("task", sorted(LABEL_TASKS))
def test_label_tasks_answer_with_a_label_name_and_list_them_all(ds: Dataset, task: str) -> None:
    _, names = LABEL_TASKS[task]
    for conversation in _of_task(ds.train, task) + _of_task(ds.test, task):
        assert conversation[-1]["content"] in names
        assert "Answer with one of: " + ", ".join(names) + "." in _user(conversation)


def test_question_type_prompt_is_the_documented_template(ds: Dataset) -> None:
    first = _of_task(ds.train, "question_type")[0]
    head = (
        "What kind of answer does this question ask for? Answer with one of: abbreviation, "
        "description, entity, human, location, numeric.\n\nQuestion: "
    )
    assert _user(first).startswith(head)


def test_sentiment_prompt_names_the_domain_and_covers_all_four(ds: Dataset) -> None:
    users = [_user(c) for c in _of_task(ds.train, "sentiment")]
    for wording in instruct.DOMAINS.values():
        assert sum(u.startswith(f"What is the sentiment of this {wording}?") for u in users) > 30


@pytest.mark.parametrize("task", instruct.TASK_NAMES)
def test_no_test_prompt_is_a_train_prompt(ds: Dataset, task: str) -> None:
    train = {_user(c) for c in _of_task(ds.train, task)}
    test = [_user(c) for c in _of_task(ds.test, task)]
    assert len(set(test)) == len(test) and not train & set(test)


@pytest.mark.parametrize("task", sorted(LABEL_TASKS))
def test_no_test_text_comes_from_the_source_train_split(ds: Dataset, task: str) -> None:
    source, _ = LABEL_TASKS[task]
    source_train = set(load_dataset(source).train.inputs)
    texts = [_user(c).split("\n\n", 1)[1].split(": ", 1)[1] for c in _of_task(ds.test, task)]
    assert texts and not set(texts) & source_train
    assert set(texts) <= set(load_dataset(source).test.inputs)


def test_continuation_is_the_rest_of_a_test_speech_of_the_named_role(ds: Dataset) -> None:
    shakespeare = load_dataset("shakespeare")
    test_speeches = set(shakespeare.test.inputs)
    train_speeches = set(shakespeare.train.inputs)
    for conversation in _of_task(ds.test, "continuation"):
        role_line = _user(conversation).split("\n\n", 1)[1]
        role, opening = role_line.split(": ", 1)
        speech = f"{opening} {conversation[-1]['content']}"
        assert speech in test_speeches and speech not in train_speeches
        assert f"Continue this speech by {role} in Shakespeare's play " in _user(conversation)
        low, high = instruct.CONTINUATION_WORDS
        assert low <= len(speech.split()) <= high


@pytest.mark.parametrize("split_name", ["train", "test"])
def test_preference_pairs_share_the_prompts_and_prefer_the_reference(
    ds: Dataset, pref: Dataset, split_name: str
) -> None:
    conversations, pairs = getattr(ds, split_name).inputs, getattr(pref, split_name).inputs
    assert np.array_equal(getattr(ds, split_name).labels, getattr(pref, split_name).labels)
    for conversation, pair in zip(conversations, pairs, strict=True):
        assert isinstance(pair, PreferencePair)
        assert pair.prompt == conversation[:-1] and pair.prompt[-1]["role"] == "user"
        assert pair.chosen == conversation[-1]["content"] != pair.rejected


@pytest.mark.parametrize("split_name", ["train", "test"])
def test_rejected_is_a_wrong_label_or_another_roles_continuation(
    pref: Dataset, split_name: str
) -> None:
    split = getattr(pref, split_name)
    for task, (_, names) in LABEL_TASKS.items():
        pairs = _of_task(split, task)
        assert all(p.rejected in names for p in pairs)
        if len(names) > 2:  # seeded, not always the same wrong label
            assert len({p.rejected for p in pairs}) == len(names)
    speeches = _of_task(split, "continuation")
    references = {p.chosen for p in speeches}
    for pair in speeches:
        assert pair.rejected in references  # another example's reference of the same split
        other = next(p for p in speeches if p.chosen == pair.rejected)
        assert _speaker_line(other.prompt) != _speaker_line(pair.prompt)  # role and play


def test_dirichlet_over_tasks_skews_clients_at_small_alpha_and_mixes_at_large(
    ds: Dataset,
) -> None:
    def shares(alpha: float) -> np.ndarray:
        cfg = DataConfig(dataset="instruct", partition="dirichlet", num_clients=8, alpha=alpha)
        fed = build_federation(ds.train, cfg, seed=0)
        return np.stack([_task_shares(ds, c) for c in fed.clients])

    skewed, mixed = shares(0.1), shares(100.0)
    assert skewed.max(axis=1).mean() > 0.8  # most of a client's examples are of one task
    assert (skewed.max(axis=1) > 0.95).sum() >= 4
    assert mixed.max(axis=1).max() < 0.4 and mixed.min() > 0.15  # every client holds all 4


@pytest.mark.parametrize("num_clients", [4, 8])
def test_one_shard_per_client_gives_each_client_one_task(ds: Dataset, num_clients: int) -> None:
    cfg = DataConfig(
        dataset="instruct", partition="shards", num_clients=num_clients, shards_per_client=1
    )
    fed = build_federation(ds.train, cfg, seed=0)
    tasks = [np.flatnonzero(_task_shares(ds, c)).tolist() for c in fed.clients]
    assert all(len(t) == 1 for t in tasks)
    assert sorted({t[0] for t in tasks}) == list(range(len(instruct.TASK_NAMES)))


def test_natural_partition_makes_one_client_per_task(ds: Dataset) -> None:
    fed = build_federation(
        ds.train, DataConfig(dataset="instruct", partition="natural", num_clients=0), seed=0
    )
    assert sorted(c.name for c in fed.clients) == sorted(instruct.TASK_NAMES)
    for client in fed.clients:
        shares = _task_shares(ds, client)
        assert shares[instruct.TASK_NAMES.index(client.name)] == 1.0


def test_the_doc_quotes_what_the_counts_command_prints(capsys: pytest.CaptureFixture) -> None:
    instruct.main()
    printed = capsys.readouterr().out
    doc = (Path(__file__).parents[1] / "docs" / "instruct.md").read_text(encoding="utf-8")
    assert printed.strip() and printed in doc
    assert "python -m fedfm.datasets.instruct_counts" in doc


def test_the_counts_command_runs_without_python_warning_of_a_second_copy() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", "fedfm.datasets.instruct_counts"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("task") and "RuntimeWarning" not in done.stderr
