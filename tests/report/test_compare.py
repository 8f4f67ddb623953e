"""Tests of run comparison and the model card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedfm.errors import FedFMError
from fedfm.report.card import write_model_card
from fedfm.report.compare import compare_runs, markdown_table
from fedfm.report.metrics import MetricsLog


def _make_run(root: Path, name: str, final_acc: float, *, strategy: str = "fedavg") -> Path:
    folder = root / "runs" / name
    log = MetricsLog(folder / "metrics.jsonl")
    for r in (1, 2, 3):
        rec = {"round": r, "train_loss": 1.0 / r, "cum_bytes": 2_000_000 * r}
        rec |= {"full_model_cum_bytes": 500_000_000 * r}
        if r != 2:
            rec |= {"test_accuracy": final_acc - 0.1 * (3 - r), "test_loss": 0.5, "excluded": []}
        log.append(rec)
    summary = {
        "name": name,
        "task": "text_classification",
        "rounds_completed": 3,
        "final": {"test_accuracy": final_acc, "test_macro_f1": final_acc - 0.05, "test_loss": 0.5},
        "best_test_accuracy": final_acc,
        "total_bytes": 6_000_000,
        "full_model_total_bytes": 1_500_000_000,
        "wall_seconds": 12.345,
        "trainable_params": 294_912,
        "total_params": 66_955_010,
        "backbone_hash": "abc123",
        "model": "tiny-bert",
        "dataset": "sst2-mini",
        "strategy": strategy,
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_compare_runs_writes_png_and_markdown(tmp_path: Path) -> None:
    a = _make_run(tmp_path, "fedavg-lora", 0.8734)
    b = _make_run(tmp_path, "fedprox-lora", 0.9012, strategy="fedprox")
    png, md = compare_runs([a, b], tmp_path / "report")
    assert png == tmp_path / "report" / "comparison.png"
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 10_000
    text = md.read_text()
    assert "fedavg-lora" in text and "fedprox-lora" in text
    assert "87.34%" in text and "90.12%" in text
    assert "6 MB" in text and "1,500 MB" in text
    assert "| run | model |" in text and "(comparison.png)" in text


def test_compare_runs_names_folder_with_missing_file(tmp_path: Path) -> None:
    good = _make_run(tmp_path, "ok", 0.8)
    bad = tmp_path / "runs" / "x"
    bad.mkdir(parents=True)
    with pytest.raises(FedFMError, match=r"runs/x has no metrics\.jsonl: is it a fedfm run"):
        compare_runs([good, bad], tmp_path / "out")
    (bad / "metrics.jsonl").write_text('{"round": 1}\n')
    with pytest.raises(FedFMError, match=r"runs/x has no summary\.json"):
        compare_runs([good, bad], tmp_path / "out")


def test_compare_runs_causal_lm_shows_perplexity(tmp_path: Path) -> None:
    folder = tmp_path / "lm"
    MetricsLog(folder / "metrics.jsonl").append(
        {"round": 1, "train_loss": 3.0, "test_loss": 3.1, "test_perplexity": 22.198, "cum_bytes": 5}
    )
    summary = {"name": "lm", "final": {"test_perplexity": 22.198}, "best_test_perplexity": 21.5}
    (folder / "summary.json").write_text(json.dumps(summary))
    _, md = compare_runs([folder], tmp_path / "out")
    text = md.read_text()
    assert "final perplexity" in text and "22.20" in text and "21.50" in text
    assert "accuracy" not in text


def test_markdown_table_aligns_numbers_and_escapes_pipes() -> None:
    rows = [{"run": "a|b", "acc": "90.00%"}, {"run": "c", "acc": None}]
    table = markdown_table(rows, [("run", "run"), ("acc", "accuracy")])
    assert table.splitlines() == [
        "| run | accuracy |",
        "| --- | ---: |",
        "| a\\|b | 90.00% |",
        "| c | – |",
    ]


def test_model_card_documents_adapter_loading_and_config(tmp_path: Path) -> None:
    folder = _make_run(tmp_path, "card-run", 0.8734)
    summary = json.loads((folder / "summary.json").read_text())
    config = '[model]\nname = "tiny-bert"\n\n[federation]\nrounds = 3\n'
    card = write_model_card(folder, summary=summary, config_toml=config)
    text = card.read_text()
    assert card == folder / "README.md"
    assert "tiny-bert" in text and "sst2-mini" in text and "87.34%" in text
    assert "load_params_file(job.model," in text and "adapter.safetensors" in text
    assert f"```toml\n{config.rstrip()}\n```" in text
    assert "294,912 of 66,955,010 (0.44%)" in text and "full-model FL: 1,500 MB" in text
    assert not (folder / "curves.png").exists() and "curves.png" not in text  # no dead link
    (folder / "curves.png").write_bytes(b"\x89PNG")
    assert (
        "![learning curves](curves.png)"
        in write_model_card(folder, summary=summary, config_toml=config).read_text()
    )
