"""Tests of the learning-curve figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedfm.report.plots import format_mb, main_metric, plot_comparison, plot_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def classification_records(rounds: int = 10, eval_every: int = 2) -> list[dict[str, object]]:
    """Rounds where eval keys appear only every ``eval_every`` rounds, plus an unknown key."""
    out: list[dict[str, object]] = []
    for r in range(1, rounds + 1):
        rec: dict[str, object] = {
            "round": r,
            "seconds": 0.5,
            "cohort": [0, 1, 2],
            "num_examples": 300,
            "train_loss": 1.2 / r,
            "bytes_down": 150_000,
            "bytes_up": 150_000,
            "cum_bytes": 300_000 * r,
            "full_model_cum_bytes": 90_000_000 * r,
            "excluded": [],
            "some_future_key": {"x": 1},
        }
        if r % eval_every == 0:
            rec |= {
                "test_accuracy": 0.5 + 0.04 * r,
                "test_macro_f1": 0.45 + 0.04 * r,
                "test_loss": 1.0 / r,
                "client_accuracy_mean": 0.5 + 0.03 * r,
                "client_accuracy_worst10": 0.3 + 0.03 * r,
            }
        out.append(rec)
    return out


def causal_lm_records(rounds: int = 8) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for r in range(1, rounds + 1):
        rec: dict[str, object] = {"round": r, "train_loss": 4.0 - 0.2 * r, "cum_bytes": 10**6 * r}
        if r % 3 != 1:
            rec |= {"test_loss": 4.0 - 0.25 * r, "test_perplexity": 2.718 ** (4.0 - 0.25 * r)}
        out.append(rec)
    return out


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_plot_curves_classification(tmp_path: Path) -> None:
    out = plot_curves(classification_records(), tmp_path / "curves.png", title="demo")
    assert out == tmp_path / "curves.png"
    _assert_png(out)


def test_plot_curves_causal_lm_with_nulls(tmp_path: Path) -> None:
    records = causal_lm_records()
    records[3]["test_perplexity"] = None  # NaN logged as null
    _assert_png(plot_curves(records, tmp_path / "sub" / "curves.png"))


def test_plot_curves_with_no_eval_yet(tmp_path: Path) -> None:
    records = [{"round": 1, "train_loss": 0.9, "cum_bytes": 1000}]
    _assert_png(plot_curves(records, tmp_path / "curves.png"))
    _assert_png(plot_curves([], tmp_path / "empty.png"))


def test_plot_comparison_one_line_per_run(tmp_path: Path) -> None:
    runs = {"fedavg": classification_records(), "fedprox": classification_records(12, 3)}
    _assert_png(plot_comparison(runs, tmp_path / "comparison.png", title="cmp"))


def test_main_metric_is_chosen_by_which_key_exists() -> None:
    assert main_metric(classification_records()) == "test_accuracy"
    assert main_metric(causal_lm_records()) == "test_perplexity"
    preference = [{"round": 1, "test_preference_accuracy": 0.5}]
    assert main_metric(preference) == "test_preference_accuracy"
    assert main_metric([{"round": 1, "train_loss": 1.0}]) is None


@pytest.mark.parametrize(
    ("num_bytes", "text"),
    [(3_100_000, "3.1 MB"), (910_000_000, "910 MB"), (1_234_567_890, "1,235 MB"), (0, "0 MB")],
)
def test_format_mb(num_bytes: int, text: str) -> None:
    assert format_mb(num_bytes) == text
