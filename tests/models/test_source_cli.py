"""``fedfm run --set model.name=FOLDER``: a federated LoRA run on a tiny model folder trains
and evaluates, through the command line as a user would start it."""

import json
from pathlib import Path

import pytest
from tiny_models import DECODERS, KINDS

from fedfm.cli import main


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))  # folder digests land here


SMALL = [
    "data.max_train_examples=120",
    "data.max_test_examples=40",
    "data.num_clients=2",
    "data.min_client_size=10",
    "data.max_length=32",
    "strategy.fraction=1.0",
    "client.batch_size=16",
    "client.lr=0.01",
    "checkpoint.every=0",
]
DATA = {"classification": ["data.dataset=trec6"], "causal_lm": ["data.dataset=shakespeare"]}
DATA["causal_lm"].append("data.partition=iid")


def _run(tmp_path: Path, folder: Path, task: str, *extra: str) -> dict:
    args = ["run"]
    for item in (
        f"model.name={folder}",
        *DATA[task],
        *SMALL,
        *extra,
        f"output_dir={tmp_path}",
        "name=run",
    ):
        args += ["--set", item]
    assert main(args) == 0
    run_dir = tmp_path / "run"
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"records": records, "summary": summary}


def test_a_gpt2_folder_runs_federated_lora_from_the_cli(tiny_model_dirs, tmp_path) -> None:
    out = _run(tmp_path, tiny_model_dirs["gpt2"], "classification", "rounds=1")
    (record,) = out["records"]
    assert 0.0 <= record["test_accuracy"] <= 1.0 and record["test_loss"] > 0
    assert out["summary"]["trainable_params"] < out["summary"]["total_params"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "task"),
    [(kind, "classification") for kind in KINDS] + [(kind, "causal_lm") for kind in DECODERS],
)
def test_every_architecture_runs_from_the_cli(tiny_model_dirs, tmp_path, kind, task) -> None:
    out = _run(tmp_path, tiny_model_dirs[kind], task, "rounds=2")
    assert [r["round"] for r in out["records"]] == [1, 2]
    metric = "test_accuracy" if task == "classification" else "test_perplexity"
    assert all(r[metric] > 0 for r in out["records"])
    assert out["records"][1]["train_loss"] < out["records"][0]["train_loss"]


@pytest.mark.slow
def test_bfloat16_and_random_init_run_from_the_cli(tiny_model_dirs, tmp_path) -> None:
    folder = tiny_model_dirs["llama"]
    bf16 = _run(tmp_path / "bf16", folder, "classification", "rounds=1", "model.dtype=bfloat16")
    random = _run(tmp_path / "rand", folder, "classification", "rounds=1", "model.pretrained=false")
    trained = _run(tmp_path / "fp32", folder, "classification", "rounds=1")
    hashes = {r["summary"]["backbone_hash"] for r in (bf16, random, trained)}
    assert len(hashes) == 3  # three different backbones
