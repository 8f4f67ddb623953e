"""The command line, end to end with the real bundled models, and its error paths."""

import json

import pytest

from fedfm.cli import main
from fedfm.config import load_config
from fedfm.errors import BackboneMismatchError
from fedfm.models.params import load_params_file
from fedfm.runtime.job import build_job
from fedfm.runtime.simulation import evaluate_global

TREC_SLICE = [
    "data.max_train_examples=400",
    "data.max_test_examples=200",
    "data.num_clients=4",
    "data.min_client_size=20",
    "strategy.fraction=1.0",
    "rounds=2",
    "client.batch_size=16",
]


def _run(tmp_path, *overrides, extra=()):
    args = ["run", *extra]
    for item in (*overrides, f"output_dir={tmp_path}"):
        args += ["--set", item]
    return main(args)


def test_minilm_lora_on_trec_slice_end_to_end(tmp_path, capsys):
    assert _run(tmp_path, *TREC_SLICE, "name=e2e") == 0
    out = capsys.readouterr().out
    assert "round   2/2" in out and "acc" in out
    run_dir = tmp_path / "e2e"
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    assert records[1]["test_loss"] < records[0]["test_loss"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["trainable_params"] < 0.01 * summary["total_params"]  # only adapters travel
    assert summary["total_bytes"] < 0.01 * summary["full_model_total_bytes"]

    # the saved adapter reproduces the final accuracy on a freshly built model ...
    cfg = load_config(run_dir / "config.toml")
    job = build_job(cfg)
    params = load_params_file(job.model, run_dir / "adapter.safetensors")
    assert evaluate_global(job, params)["accuracy"] == summary["final"]["test_accuracy"]
    # ... and is refused by a different backbone (random init of the same architecture)
    other = build_job(load_config(run_dir / "config.toml", ["model.pretrained=false"]))
    with pytest.raises(BackboneMismatchError, match="backbone"):
        load_params_file(other.model, run_dir / "adapter.safetensors")


def test_smollm2_lora_causal_lm_end_to_end(tmp_path):
    overrides = [
        "data.dataset=shakespeare",
        "model.name=smollm2-135m",
        "data.partition=iid",
        "data.num_clients=2",
        "data.max_train_examples=64",
        "data.max_test_examples=16",
        "data.max_length=32",
        "client.steps=2",
        "client.batch_size=4",
        "rounds=1",
        "name=lm",
    ]
    assert _run(tmp_path, *overrides) == 0
    summary = json.loads((tmp_path / "lm" / "summary.json").read_text())
    assert summary["task"] == "causal_lm"
    assert 1 < summary["final"]["test_perplexity"] < 10_000
    assert summary["trainable_params"] < 0.01 * summary["total_params"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.dataset=trec7"], "Did you mean 'trec6'?"),
        (["model.name=minilmm"], "Did you mean 'minilm'?"),
        (["strategy.name=fedavgg"], "Did you mean 'fedavg'?"),
        (["data.alpha=0"], "data.alpha = 0.0 must be > 0"),
        (["data.max_train_examples=30", "data.num_clients=50"], "data.num_clients"),
        (["data.dataset=digits"], "model.name = 'mlp'"),
        (
            ["data.dataset=shakespeare", "data.partition=dirichlet", "model.name=smollm2-135m"],
            "use data.partition = 'iid'",
        ),
    ],
)
def test_bad_input_is_a_clear_error_not_a_traceback(tmp_path, capsys, overrides, message):
    assert _run(tmp_path, *overrides) == 2
    assert message in capsys.readouterr().out.replace("\n", " ")


def test_existing_run_folder_and_resume_errors(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.toml").write_text("rounds = 1\n")
    (tmp_path / "taken" / "checkpoint.safetensors").write_bytes(b"")
    assert _run(tmp_path, "name=taken") == 2
    assert "--resume" in capsys.readouterr().out
    (tmp_path / "taken" / "checkpoint.safetensors").unlink()  # a run that never checkpointed
    assert main(["run", "--resume", str(tmp_path / "taken")]) == 2
    assert "nothing to resume" in capsys.readouterr().out.replace("\n", " ")
    assert main(["run", "--resume", str(tmp_path / "nope")]) == 2
    assert "is it a fedfm run folder" in capsys.readouterr().out.replace("\n", " ")


def test_list_and_data_stats(tmp_path, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "trec6" in out and "scaffold" in out and "dirichlet" in out
    plot = tmp_path / "stats.png"
    assert main(["data", "stats", "--set", "data.alpha=0.1", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "heterogeneity" in out.lower() and plot.stat().st_size > 0


def test_report_overlays_runs(tmp_path, capsys):
    fast = ["data.dataset=digits", "model.name=mlp", "adapter.method=full", "rounds=2"]
    assert _run(tmp_path, *fast, "name=a") == 0
    assert _run(tmp_path, *fast, "name=b", "strategy.name=fedadam", "strategy.server_lr=0.01") == 0
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path)]) == 0
    table = (tmp_path / "comparison.md").read_text()
    assert "fedadam" in table and "fedavg" in table
    assert "![learning curves](comparison.png)" in capsys.readouterr().out  # printed whole
    assert (tmp_path / "comparison.png").stat().st_size > 0
