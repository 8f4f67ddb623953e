"""The example configs for your own data and model run as shipped, with only the paths
replaced (a tiny model folder and a small file made here)."""

from __future__ import annotations

import json
from pathlib import Path

from tiny_models import make_tiny_model

from fedfm.cli import main
from fedfm.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
WORDS = {"billing": "my invoice is wrong", "login": "cannot sign in", "bug": "the app crashes"}


def _run(config: str, tmp_path: Path, *sets: str) -> Path:
    args = ["run", str(CONFIGS / config), "--set", f"output_dir={tmp_path / 'runs'}"]
    for item in (*sets, "rounds=1", "name=example"):
        args += ["--set", item]
    assert main(args) == 0
    return tmp_path / "runs" / "example"


def test_the_csv_example_splits_by_its_owner_column(tmp_path, tiny_model_dirs, monkeypatch):
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))
    rows = ["text,label,clinic"]
    for i in range(72):
        label = list(WORDS)[i % 3]
        rows.append(f"{WORDS[label]} ({i}),{label},clinic-{i % 4}")
    data = tmp_path / "tickets.csv"
    data.write_text("\n".join(rows) + "\n")
    cfg = load_config(CONFIGS / "own-csv-natural.toml")
    assert (cfg.data.group_column, cfg.data.partition) == ("clinic", "natural")
    run_dir = _run(
        "own-csv-natural.toml",
        tmp_path,
        f"data.dataset={data}",
        f"model.name={tiny_model_dirs['bert']}",
    )
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert record["cohort"] == [0, 1, 2, 3]  # one client per clinic, all of them each round
    assert len(record["per_client_accuracy"]) == 4
    assert json.loads((run_dir / "labels.json").read_text()) == ["billing", "bug", "login"]


def test_the_causal_lm_example_trains_a_model_folder_on_a_text_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))
    model = make_tiny_model("llama", tmp_path / "my-llama")
    notes = tmp_path / "notes.txt"
    notes.write_text("\n\n".join(f"note {i}: the patient is well and walks" for i in range(40)))
    run_dir = _run(
        "own-text-causal-lm.toml", tmp_path, f"data.dataset={notes}", f"model.name={model}"
    )
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert record["test_perplexity"] > 1 and (run_dir / "adapter" / "adapter_config.json").exists()
