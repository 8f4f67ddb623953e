"""Tests of the append-only metrics log (metrics.jsonl)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fedfm.errors import FedFMError
from fedfm.report.metrics import MetricsLog, read_records, to_jsonable


def _record(r: int, **extra: object) -> dict[str, object]:
    return {"round": r, "train_loss": 1.0 / r, "cohort": [r, r + 1], **extra}


def test_append_then_read_round_trips(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "run" / "metrics.jsonl")
    records = [_record(r, excluded=[{"client": 3, "reason": "nan loss"}]) for r in (1, 2, 3)]
    for rec in records:
        log.append(rec)
    assert read_records(log.path) == records
    assert log.records() == records
    assert len(log.path.read_text().splitlines()) == 3


def test_append_does_not_mutate_the_record(tmp_path: Path) -> None:
    rec = _record(1, test_loss=float("nan"), cohort=(1, 2))
    before = dict(rec)
    MetricsLog(tmp_path / "m.jsonl").append(rec)
    assert rec.keys() == before.keys() and rec["cohort"] == (1, 2)
    assert math.isnan(rec["test_loss"])  # type: ignore[arg-type]


def test_partial_trailing_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    log.append(_record(1))
    log.append(_record(2))
    with open(path, "a") as f:
        f.write('{"round": 3, "train_lo')  # crash mid-write
    assert [r["round"] for r in read_records(path)] == [1, 2]


def test_reopening_after_a_crash_drops_the_partial_line_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    MetricsLog(path).append(_record(1))
    with open(path, "a") as f:
        f.write('{"round": 2, "tr')
    log = MetricsLog(path)
    log.append(_record(2))
    assert [r["round"] for r in read_records(path)] == [1, 2]
    assert path.read_text().endswith("\n")


def test_corrupt_line_in_the_middle_raises_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"round": 1}\nnot json\n{"round": 3}\n')
    with pytest.raises(FedFMError, match=r"metrics\.jsonl:2 is not valid JSON"):
        read_records(path)


def test_truncate_after_keeps_rounds_up_to_r(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for r in range(1, 6):
        log.append(_record(r))
    log.truncate_after(3)
    assert [r["round"] for r in log.records()] == [1, 2, 3]
    log.append(_record(4))  # resumed run logs round 4 again, once
    assert [r["round"] for r in log.records()] == [1, 2, 3, 4]
    log.truncate_after(0)
    assert log.records() == []
    assert list(tmp_path.glob(".*tmp")) == []  # atomic write left no temp file


def test_truncate_after_on_a_missing_file_is_a_no_op(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.truncate_after(2)
    assert not log.path.exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), np.float32("nan")])
def test_non_finite_floats_are_written_as_null(tmp_path: Path, bad: float) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append(_record(1, test_loss=bad, nested={"x": [1.0, bad]}))
    line = log.path.read_text().strip()
    parsed = json.loads(line, parse_constant=lambda c: pytest.fail(f"invalid JSON token {c}"))
    assert parsed["test_loss"] is None
    assert parsed["nested"] == {"x": [1.0, None]}
    assert "NaN" not in line and "Infinity" not in line


def test_numpy_scalars_become_plain_numbers() -> None:
    out = to_jsonable({"n": np.int64(5), "acc": np.float32(0.5), "ok": np.bool_(True)})
    assert out == {"n": 5, "acc": 0.5, "ok": True}
    assert type(out["n"]) is int and type(out["acc"]) is float


@pytest.mark.parametrize("record", [{"train_loss": 1.0}, {"round": "3"}, {"round": True}])
def test_append_requires_an_integer_round(tmp_path: Path, record: dict[str, object]) -> None:
    with pytest.raises(FedFMError, match="integer 'round'"):
        MetricsLog(tmp_path / "metrics.jsonl").append(record)


def test_unserialisable_value_raises_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FedFMError, match="round 1 holds a value JSON cannot store"):
        MetricsLog(tmp_path / "metrics.jsonl").append({"round": 1, "bad": object()})
