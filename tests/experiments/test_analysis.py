"""Pure helpers that experiment reports share: series, targets, means, tables, curves, plots."""

import math

import numpy as np
import pytest

from fedfm.config import RunConfig
from fedfm.experiments.analysis import (
    final,
    fmt,
    group_by,
    md_table,
    mean_curve,
    mean_std,
    plot_panels,
    rounds_to_target,
    series,
)
from fedfm.experiments.base import Arm, ArmResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

RECORDS = [
    {"round": 0, "acc": 0.9, "loss": 0.1},  # an initial evaluation (round 0)
    {"round": 1, "acc": 0.4, "loss": 2.0},
    {"round": 2, "loss": 1.5},  # acc not evaluated this round
    {"round": 3, "acc": None, "loss": 1.0},  # NaN written as null
    {"round": 4, "acc": 0.7, "loss": float("nan")},
    {"round": 5, "acc": 0.8, "loss": 0.5},
]


def _result(name: str, records: list[dict], **labels) -> ArmResult:
    return ArmResult(Arm(name, (), labels), RunConfig(), records, {})


def _curve(pairs: list[tuple[int, float]]) -> list[dict]:
    return [{"round": r, "acc": a} for r, a in pairs]


# ---------------------------------------------------------------- series, final, targets


def test_series_keeps_only_finite_values_with_their_x():
    assert series(RECORDS, "acc") == ([0.0, 1.0, 4.0, 5.0], [0.9, 0.4, 0.7, 0.8])
    assert series(RECORDS, "loss") == ([0.0, 1.0, 2.0, 3.0, 5.0], [0.1, 2.0, 1.5, 1.0, 0.5])
    assert series(RECORDS, "missing") == ([], [])


def test_series_with_another_x():
    records = [{"round": 1, "bytes": 10, "acc": 0.5}, {"round": 2, "bytes": 20, "acc": 0.6}]
    assert series(records, "acc", x="bytes") == ([10.0, 20.0], [0.5, 0.6])


def test_final_is_the_last_logged_value():
    assert final(RECORDS, "acc") == 0.8
    assert final(RECORDS, "loss") == 0.5
    assert math.isnan(final(RECORDS, "missing"))
    assert math.isnan(final([], "acc"))


def test_rounds_to_target_higher_is_better():
    assert rounds_to_target(RECORDS, "acc", 0.7) == 4  # first round reaching it (>=)
    assert rounds_to_target(RECORDS, "acc", 0.75) == 5
    assert rounds_to_target(RECORDS, "acc", 0.3) == 1


def test_rounds_to_target_lower_is_better():
    assert rounds_to_target(RECORDS, "loss", 1.5, higher_is_better=False) == 2
    assert rounds_to_target(RECORDS, "loss", 0.9, higher_is_better=False) == 5


def test_rounds_to_target_never_reached_is_none():
    assert rounds_to_target(RECORDS, "acc", 0.95) is None
    assert rounds_to_target(RECORDS, "loss", 0.05, higher_is_better=False) is None
    assert rounds_to_target(RECORDS, "missing", 0.0) is None
    assert rounds_to_target([], "acc", 0.0) is None


def test_rounds_to_target_ignores_the_round_zero_record():
    # round 0 has acc 0.9 and loss 0.1, which reach both targets; it must not count
    assert rounds_to_target(RECORDS, "acc", 0.85) is None
    assert rounds_to_target(RECORDS, "loss", 0.2, higher_is_better=False) is None
    assert rounds_to_target([{"round": 0, "acc": 1.0}], "acc", 0.5) is None


# ---------------------------------------------------------------- mean_std, fmt


def test_mean_std():
    mean, std = mean_std([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert std == pytest.approx(1.0)  # sample standard deviation (ddof=1)


def test_mean_std_single_value_has_zero_std():
    assert mean_std([0.5]) == (0.5, 0.0)


def test_mean_std_ignores_nan_and_none():
    mean, std = mean_std([1.0, float("nan"), 3.0, None, float("inf")])
    assert mean == pytest.approx(2.0)
    assert std == pytest.approx(math.sqrt(2.0))
    assert mean_std([float("nan"), 4.0]) == (4.0, 0.0)


def test_mean_std_empty_is_nan():
    for values in ([], [float("nan")], [None]):
        mean, std = mean_std(values)
        assert math.isnan(mean) and math.isnan(std)


def test_fmt_one_value():
    assert fmt(0.81234) == "0.812"
    assert fmt(3) == "3.000"
    assert fmt(0.81234, digits=1) == "0.8"
    assert fmt([0.81234]) == "0.812"
    assert fmt(np.float64(0.5)) == "0.500"


def test_fmt_several_values_is_mean_plus_minus_std():
    assert fmt([1.0, 2.0, 3.0]) == "2.000 ± 1.000"
    assert fmt([0.5, 0.7], digits=2) == "0.60 ± 0.14"


def test_fmt_nothing_is_a_dash():
    assert fmt(None) == "–"
    assert fmt(float("nan")) == "–"
    assert fmt(float("inf")) == "–"
    assert fmt([]) == "–"
    assert fmt([float("nan"), float("nan")]) == "–"


# ---------------------------------------------------------------- group_by, md_table


def test_group_by_keeps_first_seen_order():
    results = [
        _result("b-s0", [], method="b", seed=0),
        _result("a-s0", [], method="a", seed=0),
        _result("b-s1", [], method="b", seed=1),
        _result("c-s0", [], method="c", seed=0),
        _result("a-s1", [], method="a", seed=1),
    ]
    groups = group_by(results, lambda r: r.labels["method"])
    assert list(groups) == ["b", "a", "c"]
    assert [r.arm.name for r in groups["b"]] == ["b-s0", "b-s1"]
    assert [r.arm.name for r in groups["a"]] == ["a-s0", "a-s1"]
    assert [r.arm.name for r in groups["c"]] == ["c-s0"]
    assert group_by([], lambda r: r) == {}


def test_group_by_tuple_keys():
    results = [_result(f"x{i}", [], a=i % 2, b=i // 2) for i in range(4)]
    groups = group_by(results, lambda r: (r.labels["a"], r.labels["b"]))
    assert list(groups) == [(0, 0), (1, 0), (0, 1), (1, 1)]


def test_md_table():
    table = md_table(["method", "acc", "bytes"], [["lora", "0.812", 10], ["full", 0.5, None]])
    assert table.endswith("\n")
    lines = table.splitlines()
    assert lines == [
        "| method | acc | bytes |",
        "|---|---|---|",
        "| lora | 0.812 | 10 |",
        "| full | 0.5 | None |",
    ]


def test_md_table_without_rows_has_header_and_separator():
    assert md_table(["a"], []) == "| a |\n|---|\n"


# ---------------------------------------------------------------- mean_curve


def test_mean_curve_over_runs_on_shared_x():
    runs = [
        _result("s0", _curve([(1, 0.2), (2, 0.4), (3, 0.6)])),
        _result("s1", _curve([(1, 0.4), (2, 0.6)])),  # stopped a round earlier
        _result("s2", _curve([(0, 0.1), (1, 0.6), (2, 0.2), (3, 0.9)])),
    ]
    xs, mean, lo, hi = mean_curve(runs, "acc")
    np.testing.assert_allclose(xs, [1.0, 2.0])
    np.testing.assert_allclose(mean, [0.4, 0.4])
    np.testing.assert_allclose(lo, [0.2, 0.2])
    np.testing.assert_allclose(hi, [0.6, 0.6])


def test_mean_curve_single_run_is_the_run():
    xs, mean, lo, hi = mean_curve([_result("s0", _curve([(2, 0.5), (1, 0.3)]))], "acc")
    np.testing.assert_allclose(xs, [1.0, 2.0])  # sorted by x
    np.testing.assert_allclose(mean, [0.3, 0.5])
    np.testing.assert_allclose(lo, mean)
    np.testing.assert_allclose(hi, mean)


def test_mean_curve_without_shared_points_is_empty():
    cases = [
        [],
        [_result("s0", _curve([(1, 0.5)])), _result("s1", _curve([(2, 0.5)]))],
        [_result("s0", [{"round": 1, "loss": 1.0}])],  # key never logged
    ]
    for runs in cases:
        for array in mean_curve(runs, "acc"):
            assert array.size == 0


# ---------------------------------------------------------------- plot_panels


def _png(path) -> bytes:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 1000
    return data


@pytest.fixture
def runs():
    return {
        "lora": [
            _result("lora-s0", _curve([(1, 0.3), (2, 0.5), (3, 0.6)])),
            _result("lora-s1", _curve([(1, 0.35), (2, 0.55), (3, 0.7)])),
        ],
        "full": [_result("full-s0", _curve([(1, 0.2), (2, 0.4), (3, 0.8)]))],
    }


def test_plot_panels_writes_a_png(tmp_path, runs):
    path = tmp_path / "acc.png"
    plot_panels([("alpha 1.0", runs), ("alpha 0.1", runs)], "acc", path, ylabel="accuracy")
    _png(path)


# an empty panel gets a legend call with nothing to show; matplotlib warns about it
@pytest.mark.filterwarnings("ignore:No artists with labels found")
def test_plot_panels_log_axes_and_empty_line(tmp_path, runs):
    path = tmp_path / "nested" / "log.png"  # the folder is created
    panels = [
        ("with data", runs),
        ("one empty line", {**runs, "never logged": [_result("e", [{"round": 1}])]}),
        ("empty panel", {}),
        ("only an empty line", {"none": [_result("e", [])]}),
    ]
    plot_panels(
        panels,
        "acc",
        path,
        ylabel="accuracy",
        xlabel="MB",
        logx=True,
        logy=True,
        ncols=2,
        x_scale=1e-6,
    )
    _png(path)
