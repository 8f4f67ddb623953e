"""Every experiment's --quick version runs end to end and writes a report that holds numbers.

This is the CI smoke test the experiments' issue asks for: it runs the real arms (tiny
grids) and measurements, then checks the report, its plots and results.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from fedfm.experiments import EXPERIMENTS, run_experiment

NUMBER = re.compile(r"\|\s*[-+]?\d+\.\d+")  # a table cell that starts with a decimal number


@pytest.mark.parametrize(
    "name", ["federation", "init", "adapters", "synth", "privacy", "lora", "instruct", "weak"]
)
def test_quick_version_writes_report_plots_and_results(name: str, tmp_path: Path) -> None:
    assert name in EXPERIMENTS
    report = run_experiment(
        name,
        quick=True,
        out_dir=tmp_path / "out",
        runs_dir=tmp_path / "runs",
        console=Console(quiet=True),
    )
    text = report.read_text()
    assert text.startswith(f"# {EXPERIMENTS.get(name).title}")
    assert "Quick version" in text
    assert len(NUMBER.findall(text)) >= 5, text
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert images, "the report shows no plot"
    for image in images:
        data = (report.parent / image).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5_000, image
    results = json.loads((report.parent / "results.json").read_text())
    arms = results["arms"]
    assert arms and all(a["records"] and a["summary"]["rounds_completed"] >= 1 for a in arms)
    assert len(list((report.parent / "configs").glob("*.toml"))) == len(arms)
    assert "against the published shape" in text.lower() or "expected shape" in text.lower()
