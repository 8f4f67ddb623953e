"""``fedfm data stats`` and ``fedfm run`` on the user's own CSV, as a new user runs them."""

from __future__ import annotations

import json

import pytest

from fedfm.cli import main
from fedfm.runtime.run import CONFIG_FILE

SHOPS = ("north", "south", "east")
WORDS = {
    "pos": ["great food", "lovely staff", "will come back", "fresh and tasty"],
    "neg": ["cold and bland", "rude waiter", "never again", "too salty"],
}


@pytest.fixture
def reviews(tmp_path, monkeypatch):
    """48 reviews from 3 shops, labelled pos/neg, in a CSV with a ``shop`` column."""
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))
    lines = ["review,label,shop"]
    for i in range(48):
        label = "pos" if i % 2 else "neg"
        lines.append(f"{WORDS[label][i % 4]} number {i},{label},{SHOPS[i % 3]}")
    path = tmp_path / "reviews.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _args(reviews, *extra):
    sets = [
        f"data.dataset={reviews}",
        "data.text_column=review",
        "data.group_column=shop",
        "data.partition=natural",
        "data.num_clients=0",
        "data.min_client_size=4",
        *extra,
    ]
    return [item for s in sets for item in ("--set", s)]


def test_data_stats_on_a_csv(tmp_path, reviews, capsys):
    plot = tmp_path / "stats.png"
    assert main(["data", "stats", *_args(reviews), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "3 clients" in out and "east" in out and "neg pos" in out
    assert plot.stat().st_size > 0


def test_a_federated_run_on_a_csv_by_its_group_column(tmp_path, reviews, capsys):
    overrides = [
        "rounds=1",
        "strategy.fraction=1.0",
        "data.max_length=16",
        "client.batch_size=16",
        "adapter.method=head",
        f"output_dir={tmp_path / 'runs'}",
        "name=own",
    ]
    assert main(["run", *_args(reviews, *overrides)]) == 0
    out = capsys.readouterr().out
    assert "reviews: 3 clients" in out
    run_dir = tmp_path / "runs" / "own"
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert record["round"] == 1 and record["cohort"] == [0, 1, 2]
    assert 0.0 <= record["test_accuracy"] <= 1.0
    # the resolved config (in the model card) names the labels the file's ids stand for
    assert 'label_names = ["neg", "pos"]' in (run_dir / "README.md").read_text()
    tokens = list((tmp_path / "cache" / "tokens").iterdir())
    assert len(tokens) == 1  # tokenised once for train and test


def test_a_bad_column_stops_the_cli_with_one_line(tmp_path, reviews, capsys):
    code = main(["run", *_args(reviews, "data.label_column=stars", f"output_dir={tmp_path}")])
    assert code == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "data.label_column = 'stars' is not a column of reviews.csv" in out
    assert "['review', 'label', 'shop']" in out
    assert not (tmp_path / CONFIG_FILE).exists()


def test_a_causal_lm_run_on_a_text_file(tmp_path, monkeypatch, capsys):
    from tiny_models import make_tiny_model

    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))
    model = make_tiny_model("gpt2", tmp_path / "gpt2")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"to be or not to be, line {i}" for i in range(30)) + "\n")
    sets = [
        f"data.dataset={corpus}",
        f"model.name={model}",
        "data.partition=iid",
        "data.num_clients=2",
        "data.min_client_size=2",
        "rounds=1",
        f"output_dir={tmp_path / 'runs'}",
        "name=lm",
    ]
    assert main(["run", *[x for s in sets for x in ("--set", s)]]) == 0
    assert "corpus: 2 clients, 6 test examples" in capsys.readouterr().out  # blank lines dropped
    record = json.loads((tmp_path / "runs" / "lm" / "metrics.jsonl").read_text())
    assert record["test_perplexity"] > 1.0
