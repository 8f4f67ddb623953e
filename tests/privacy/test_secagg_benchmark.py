"""The secure-aggregation benchmark's quick version runs and measures what it claims."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[2] / "benchmarks" / "secagg.py"


def test_quick_benchmark_writes_costs_and_a_tiny_error(tmp_path):
    subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    rows = json.loads((tmp_path / "secagg.json").read_text())["rows"]
    assert [r["dropout"] for r in rows] == [0.0, 0.2]
    for r in rows:
        assert r["secure_seconds"] > 0 and r["plain_seconds"] > 0
        assert r["bytes_up_ratio"] > 1  # keys and shares on top of the vector
        assert r["max_abs_error"] < 1e-6
