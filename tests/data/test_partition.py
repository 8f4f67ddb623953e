"""Partition methods: exact cover, minimum sizes, determinism, real skew, clear errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfm.data import partition as P
from fedfm.data.stats import summarize
from fedfm.errors import ConfigError, PartitionError

N = 600
NUM_LABELS = 10
# Balanced labels (60 per class) in shuffled order, so index order says nothing about labels.
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(NUM_LABELS), N // NUM_LABELS))
# Eight natural groups of uneven size; "h" is tiny (3 examples).
_SIZES = {"a": 150, "b": 120, "c": 90, "d": 80, "e": 60, "f": 50, "g": 47, "h": 3}
GROUPS = np.random.default_rng(1).permutation(np.repeat(list(_SIZES), list(_SIZES.values())))


@dataclass(frozen=True)
class Case:
    """One call of the dispatcher; ``kwargs`` override the defaults below."""

    method: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def call(self, seed: int = 0) -> list[np.ndarray]:
        args: dict[str, Any] = dict(
            num_examples=N, labels=LABELS, groups=GROUPS, num_clients=10, seed=seed
        )
        return P.partition(self.method, **{**args, **self.kwargs})

    @property
    def min_size(self) -> int:
        return int(self.kwargs.get("min_size", 1))

    @property
    def num_clients(self) -> int:
        return int(self.kwargs.get("num_clients", 10))


CASES = [
    Case("iid"),
    Case("iid", {"num_clients": 7, "min_size": 80}),
    Case("dirichlet", {"alpha": 0.1}),
    Case("dirichlet", {"alpha": 0.5, "min_size": 20}),
    Case("dirichlet", {"alpha": 100.0, "num_clients": 30}),
    Case("shards", {"shards_per_client": 2}),
    Case("shards", {"shards_per_client": 3, "num_clients": 13, "min_size": 30}),
    Case("quantity", {"alpha": 0.3}),
    Case("quantity", {"alpha": 0.1, "num_clients": 50, "min_size": 5}),
    Case("natural", {"num_clients": 5}),
    Case("natural", {"num_clients": 4, "min_size": 55}),
]


def check_partition(
    parts: list[np.ndarray], *, n: int, num_clients: int, min_size: int, kept: np.ndarray | None
) -> None:
    """Every part is a sorted int64 index array of >= min_size; together they cover ``kept``."""
    assert len(parts) == num_clients
    for p in parts:
        assert p.dtype == np.int64 and p.ndim == 1
        assert len(p) >= min_size
        assert np.all(np.diff(p) > 0), "indices must be sorted ascending and unique"
    expected = np.arange(n) if kept is None else np.sort(kept)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), expected)


def kept_indices(case: Case, seed: int) -> np.ndarray | None:
    """Indices ``natural`` keeps (those of the chosen groups); None means all."""
    if case.method != "natural":
        return None
    names = P.natural_groups(
        GROUPS, num_clients=case.num_clients, seed=seed, min_size=case.min_size
    )
    return np.flatnonzero(np.isin(GROUPS, names))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.method}-{c.kwargs}")
@pytest.mark.parametrize("seed", [0, 7])
def test_exact_cover_and_min_size(case: Case, seed: int) -> None:
    parts = case.call(seed)
    kept = kept_indices(case, seed)
    check_partition(parts, n=N, num_clients=case.num_clients, min_size=case.min_size, kept=kept)


def _equal(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.method}-{c.kwargs}")
def test_deterministic_in_seed(case: Case) -> None:
    assert _equal(case.call(3), case.call(3))
    # Another seed gives another partition (natural: another subset of groups).
    assert any(not _equal(case.call(3), case.call(s)) for s in (4, 5, 6))


def test_inputs_are_not_mutated() -> None:
    labels, groups = LABELS.copy(), GROUPS.copy()
    for case in CASES:
        case.call(0)
    np.testing.assert_array_equal(labels, LABELS)
    np.testing.assert_array_equal(groups, GROUPS)


def test_dispatcher_matches_direct_functions() -> None:
    direct = {
        "iid": P.iid(N, 10, seed=5),
        "dirichlet": P.dirichlet(LABELS, 10, alpha=0.5, seed=5),
        "shards": P.shards(LABELS, 10, shards_per_client=2, seed=5),
        "quantity": P.quantity(N, 10, alpha=0.5, seed=5),
        "natural": P.natural(GROUPS, num_clients=5, seed=5),
    }
    assert sorted(direct) == P.PARTITIONS.names()
    for method, parts in direct.items():
        num_clients = 5 if method == "natural" else 10
        via = Case(method, {"num_clients": num_clients}).call(5)
        assert _equal(parts, via)


# ------------------------------------------------------------------------------- skew


def _heterogeneity(parts: list[np.ndarray]) -> float:
    het = summarize(parts, LABELS, ()).heterogeneity
    assert het is not None
    return het


def test_dirichlet_small_alpha_is_far_more_skewed() -> None:
    skewed = np.mean([_heterogeneity(P.dirichlet(LABELS, 10, alpha=0.1, seed=s)) for s in range(3)])
    near_iid = np.mean(
        [_heterogeneity(P.dirichlet(LABELS, 10, alpha=100, seed=s)) for s in range(3)]
    )
    assert skewed > 0.4
    assert near_iid < 0.15
    assert skewed > near_iid + 0.3


@pytest.mark.parametrize("spc", [1, 2, 3])
def test_shards_give_each_client_at_most_spc_labels(spc: int) -> None:
    # 600 balanced examples, 10 clients: shard size 60 / spc divides the class size 60,
    # so every shard holds one label.
    parts = P.shards(LABELS, 10, shards_per_client=spc, seed=2)
    distinct = [len(np.unique(LABELS[p])) for p in parts]
    assert max(distinct) <= spc
    assert _heterogeneity(parts) > 0.5


def test_quantity_small_alpha_skews_sizes_not_labels() -> None:
    iid_cv = summarize(P.iid(N, 10, seed=0), None, ()).size_cv
    q = summarize(P.quantity(N, 10, alpha=0.1, seed=0), LABELS, ())
    assert iid_cv < 0.01
    assert q.size_cv > 0.5
    assert q.size_cv > iid_cv + 0.5


def test_natural_clients_are_sorted_groups_and_small_groups_dropped() -> None:
    names = P.natural_groups(GROUPS, seed=0, min_size=10)
    parts = P.natural(GROUPS, seed=0, min_size=10)
    assert names == ["a", "b", "c", "d", "e", "f", "g"]  # "h" has only 3 examples
    for name, p in zip(names, parts, strict=True):
        assert len(p) == _SIZES[name]
        assert set(GROUPS[p]) == {name}


def test_natural_subset_keeps_sorted_order() -> None:
    names = P.natural_groups(GROUPS, num_clients=3, seed=11)
    assert names == sorted(names) and len(names) == 3
    parts = P.natural(GROUPS, num_clients=3, seed=11)
    assert [str(GROUPS[p[0]]) for p in parts] == names


# ------------------------------------------------------------------------------- errors

SMALL = np.repeat([0, 1], 10)


@pytest.mark.parametrize(
    ("method", "overrides", "expected"),
    [
        ("dirichlet", {"alpha": -1}, "data.alpha = -1"),
        ("quantity", {"alpha": 0.0}, "data.alpha = 0.0"),
        ("dirichlet", {"alpha": float("nan")}, "data.alpha = nan"),
        ("iid", {"num_clients": 0}, "data.num_clients = 0"),
        ("quantity", {"num_clients": N + 1}, "data.num_clients = 601"),
        ("iid", {"num_clients": 100, "min_size": 7}, "data.min_client_size = 7"),
        ("dirichlet", {"min_size": 0}, "data.min_client_size = 0"),
        ("dirichlet", {"labels": None}, "data.partition = 'dirichlet'"),
        ("shards", {"labels": None}, "data.partition = 'shards'"),
        ("natural", {"groups": None, "dataset": "wikitext"}, "dataset 'wikitext' has no natural"),
        ("shards", {"shards_per_client": 61}, "data.shards_per_client = 61"),
        ("shards", {"shards_per_client": 0}, "data.shards_per_client = 0"),
        ("natural", {"num_clients": 9}, "data.num_clients = 9"),
        ("natural", {"min_size": 10_000}, "data.min_client_size = 10000"),
        ("dirichlet", {"labels": LABELS.astype(float)}, "data.partition"),
        ("iid", {"labels": LABELS[:10]}, "num_examples = 600"),
        (
            "dirichlet",
            {"num_examples": 20, "labels": SMALL, "groups": None, "alpha": 0.01, "min_size": 2},
            "data.alpha = 0.01",
        ),
    ],
)
def test_partition_errors_name_field_value_and_fix(
    method: str, overrides: dict[str, Any], expected: str
) -> None:
    with pytest.raises(PartitionError) as info:
        Case(method, overrides).call()
    message = str(info.value)
    assert expected in message
    assert "; " in message, "the message should go on to suggest a fix"


@pytest.mark.parametrize(
    ("method", "overrides", "fix"),
    [
        ("dirichlet", {"labels": None}, "'iid'"),
        ("natural", {"groups": None, "labels": None}, "'quantity'"),
        ("natural", {"groups": None}, "'dirichlet'"),
        ("dirichlet", {"alpha": -1}, "0.1"),
        ("iid", {"num_clients": 100, "min_size": 7}, "at most 6"),
        (
            "dirichlet",
            {"num_examples": 20, "labels": SMALL, "groups": None, "alpha": 0.01, "min_size": 2},
            "raise data.alpha",
        ),
    ],
)
def test_partition_errors_suggest_the_fix(method: str, overrides: dict[str, Any], fix: str) -> None:
    with pytest.raises(PartitionError, match=fix):
        Case(method, overrides).call()


def test_unknown_method_is_a_config_error_with_hint() -> None:
    with pytest.raises(ConfigError, match=r"data\.partition.*Did you mean 'dirichlet'"):
        Case("dirichlett").call()


# ------------------------------------------------------------------------------- properties


@st.composite
def _pools(draw: st.DrawFn) -> tuple[int, int, int, int]:
    n = draw(st.integers(1, 400))
    num_clients = draw(st.integers(1, n))
    min_size = draw(st.integers(1, n // num_clients))
    return n, num_clients, min_size, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=100, deadline=None)
@given(pool=_pools(), alpha=st.floats(0.05, 10.0))
def test_iid_and_quantity_always_form_an_exact_cover(
    pool: tuple[int, int, int, int], alpha: float
) -> None:
    n, num_clients, min_size, seed = pool
    for parts in (
        P.iid(n, num_clients, seed=seed, min_size=min_size),
        P.quantity(n, num_clients, alpha=alpha, seed=seed, min_size=min_size),
    ):
        check_partition(parts, n=n, num_clients=num_clients, min_size=min_size, kept=None)
