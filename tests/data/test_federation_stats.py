"""Federation statistics: sizes, label histograms, heterogeneity, table and plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from fedfm.data import partition as P
from fedfm.data.stats import (
    FederationStats,
    heterogeneity,
    plot_stats,
    stats_summary,
    stats_table,
    summarize,
)

K = 4
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(K), 1250))  # 5000, balanced
NAMES = ("world", "sports", "business", "tech")


def _by_label(labels: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(labels == k) for k in range(K)]


# (name, parts, low, high): heterogeneity must lie in [low, high].
HETEROGENEITY_CASES = [
    ("iid", P.iid(len(LABELS), 5, seed=0), 0.0, 0.1),
    ("label-disjoint", _by_label(LABELS), 1 - 1 / K - 1e-9, 1 - 1 / K + 1e-9),
    ("one-client", [np.arange(len(LABELS))], 0.0, 1e-12),
    ("dirichlet-0.1", P.dirichlet(LABELS, 8, alpha=0.1, seed=0), 0.4, 1.0),
    ("shards-1", P.shards(LABELS, K, shards_per_client=1, seed=0), 1 - 1 / K - 0.01, 1.0),
]


def check_stats(stats: FederationStats, parts: list[np.ndarray]) -> None:
    """Invariants every summary satisfies."""
    sizes = np.array([len(p) for p in parts])
    np.testing.assert_array_equal(stats.sizes, sizes)
    assert stats.size_cv == pytest.approx(sizes.std() / sizes.mean())
    assert len(stats.client_names) == len(parts)
    if stats.label_hist is not None:
        assert stats.label_hist.shape == (len(parts), len(stats.label_names))
        np.testing.assert_array_equal(stats.label_hist.sum(axis=1), sizes)
        assert stats.heterogeneity is not None and 0.0 <= stats.heterogeneity <= 1.0


@pytest.mark.parametrize(("name", "parts", "low", "high"), HETEROGENEITY_CASES)
def test_heterogeneity_cases(name: str, parts: list[np.ndarray], low: float, high: float) -> None:
    stats = summarize(parts, LABELS, NAMES)
    check_stats(stats, parts)
    assert stats.heterogeneity is not None
    assert low <= stats.heterogeneity <= high, name


def test_heterogeneity_by_hand() -> None:
    # Pooled mix (0.5, 0.5); client 0 is (1, 0): TV 0.5; client 1 is (1/3, 2/3): TV 1/6.
    hist = np.array([[2, 0], [2, 4]])
    assert heterogeneity(hist) == pytest.approx((2 * 0.5 + 6 * (1 / 6)) / 8)


def test_heterogeneity_ignores_empty_clients() -> None:
    assert heterogeneity(np.array([[5, 5], [0, 0]])) == 0.0


def test_without_labels_there_is_no_histogram() -> None:
    parts = P.quantity(100, 4, alpha=0.5, seed=0)
    stats = summarize(parts, None, ())
    check_stats(stats, parts)
    assert stats.label_hist is None and stats.heterogeneity is None
    assert "n/a" in stats_summary(stats)


def test_label_names_default_to_ids_and_client_names_are_kept() -> None:
    stats = summarize(_by_label(LABELS), LABELS, (), client_names=["w", "x", "y", "z"])
    assert stats.label_names == ("0", "1", "2", "3")
    assert stats.client_names == ("w", "x", "y", "z")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"label_names": ("a", "b")}, r"labels must lie in \[0, 2\)"),
        ({"label_names": NAMES, "client_names": ["only-one"]}, "client_names"),
    ],
)
def test_summarize_rejects_inconsistent_inputs(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        summarize(_by_label(LABELS), LABELS, **kwargs)


def _render(stats: FederationStats, max_rows: int = 30) -> str:
    console = Console(width=160, record=True)
    console.print(stats_table(stats, max_rows=max_rows))
    return console.export_text()


def test_stats_table_rows_and_columns() -> None:
    parts = _by_label(LABELS)
    table = stats_table(summarize(parts, LABELS, NAMES))
    assert [c.header for c in table.columns][:2] == ["client", "size"]
    assert len(table.columns) == 4 and table.row_count == K
    text = _render(summarize(parts, LABELS, NAMES))
    assert "1250 0 0 0" in text and "1.00 (world)" in text


def test_stats_table_caps_rows_and_says_so() -> None:
    stats = summarize(P.iid(len(LABELS), 40, seed=0), LABELS, NAMES)
    table = stats_table(stats, max_rows=10)
    assert table.row_count == 11
    assert "30 more" in _render(stats, max_rows=10)


def test_stats_table_without_labels_has_two_columns() -> None:
    table = stats_table(summarize(P.iid(50, 5, seed=0), None, ()))
    assert len(table.columns) == 2


def test_stats_summary_line() -> None:
    stats = summarize([np.arange(10), np.arange(10, 40)], np.zeros(40, dtype=np.int64), ("a",))
    line = stats_summary(stats)
    assert line.startswith("2 clients")
    assert "min 10" in line and "median 20" in line and "max 30" in line
    assert "heterogeneity 0.000" in line


@pytest.mark.parametrize(
    ("num_clients", "labels"), [(6, LABELS), (80, LABELS), (5, None)], ids=["few", "capped", "lm"]
)
def test_plot_stats_writes_a_png(tmp_path: Path, num_clients: int, labels: np.ndarray) -> None:
    parts = P.dirichlet(LABELS, num_clients, alpha=0.5, seed=0)
    path = plot_stats(
        summarize(parts, labels, NAMES if labels is not None else ()), tmp_path / "f.png"
    )
    assert path == tmp_path / "f.png"
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"], "no temporary file left behind"
