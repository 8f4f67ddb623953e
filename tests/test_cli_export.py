"""A run's result outside fedfm: the peft adapter folder, `fedfm export`, `fedfm eval`.

The key check runs federated jobs through the CLI on tiny local model folders, then loads
the result in a subprocess that never imports fedfm, by running the model card's load
snippet exactly as written, and compares the metric with the run's own record.
"""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedfm.cli import main
from fedfm.config import load_config
from fedfm.data.federation import subsample
from fedfm.datasets import load_dataset
from fedfm.report.card import HF_LOAD_HEADING

SMALL = [
    "data.partition=iid",
    "data.num_clients=2",
    "data.min_client_size=8",
    "data.max_length=16",
    "strategy.fraction=1.0",
    "rounds=1",
    "client.batch_size=8",
]
CLASSIFY = ["data.max_train_examples=48", "data.max_test_examples=24"]
CAUSAL = [
    "data.dataset=shakespeare",
    "data.max_train_examples=24",
    "data.max_test_examples=6",
    "client.steps=2",
]


def cli_run(out: Path, name: str, *overrides: str) -> Path:
    """``fedfm run --set ...`` (in process); returns the run folder."""
    args = ["run"]
    for item in (*SMALL, *overrides, f"output_dir={out}", f"name={name}"):
        args += ["--set", item]
    assert main(args) == 0
    return out / name


def last_record(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


def load_snippet(run_dir: Path) -> str:
    """The first python block under the card's Hugging Face heading."""
    card = (run_dir / "README.md").read_text()
    after = card.split(HF_LOAD_HEADING, 1)[1]
    match = re.search(r"```python\n(.*?)\n```", after, re.S)
    assert match, "no python block under the load heading"
    return match.group(1)


def write_test_set(run_dir: Path, path: Path) -> Path:
    """The run's own test examples as JSONL (text, label), for the subprocess."""
    cfg = load_config(run_dir / "config.toml")
    test = subsample(load_dataset(cfg.data.dataset).test, cfg.data.max_test_examples, seed=cfg.seed)
    labels = test.labels if test.labels is not None else [None] * len(test)
    with path.open("w") as f:
        for text, label in zip(test.inputs, labels, strict=True):
            f.write(json.dumps({"text": text, "label": None if label is None else int(label)}))
            f.write("\n")
    return path


# Runs with peft, transformers and torch only; prints one JSON object of results.
PLAIN_HF = r"""
import json, math, sys
import torch
import torch.nn.functional as F
from transformers import pipeline

spec = json.loads(sys.argv[1])
out = {}

def rows(path):
    return [json.loads(line) for line in open(path)]

# classification: the card's snippet as written defines `model` and `tokenizer`
ns = {}
exec(spec["cls_snippet"], ns)
model, tokenizer = ns["model"].eval(), ns["tokenizer"]
data = rows(spec["cls_test"])
enc = tokenizer([r["text"] for r in data], truncation=True, max_length=spec["max_length"],
                padding=True, return_tensors="pt")
y = torch.tensor([r["label"] for r in data])
with torch.inference_mode():
    logits = model(**enc).logits
out["cls_accuracy"] = (logits.argmax(-1) == y).double().mean().item()
out["cls_loss"] = F.cross_entropy(logits, y).item()

# the merged export in a pipeline prints label names
pipe = pipeline("text-classification", model=spec["cls_merged"])
preds = pipe([r["text"] for r in data], truncation=True, max_length=spec["max_length"])
names = model.config.id2label
hits = sum(p["label"] == names[r["label"]] for p, r in zip(preds, data))
out["pipeline_accuracy"] = hits / len(data)
out["pipeline_labels"] = sorted({p["label"] for p in preds})

# causal LM: the card's snippet, token-level perplexity example by example
ns = {}
exec(spec["lm_snippet"], ns)
model, tokenizer = ns["model"].eval(), ns["tokenizer"]
total, count = 0.0, 0
for r in rows(spec["lm_test"]):
    ids = tokenizer(r["text"], truncation=True, max_length=spec["max_length"],
                    return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, :-1]
    total += F.cross_entropy(logits.float(), ids[0, 1:], reduction="sum").item()
    count += ids.shape[1] - 1
out["lm_perplexity"] = math.exp(min(total / count, 50.0))
gen = pipeline("text-generation", model=spec["lm_merged"])
out["generated"] = gen("To be", max_new_tokens=4, do_sample=False)[0]["generated_text"]
out["fedfm_imported"] = "fedfm" in sys.modules
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def runs(tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A classification run (tiny BERT) and a causal LM run (tiny Llama), each exported."""
    root = tmp_path_factory.mktemp("export")
    cls = cli_run(root, "cls", *CLASSIFY, f"model.name={tiny_model_dirs['bert']}")
    lm = cli_run(root, "lm", *CAUSAL, f"model.name={tiny_model_dirs['llama']}")
    for run in (cls, lm):
        assert main(["export", str(run), "--merged", str(root / f"{run.name}-merged")]) == 0
    return root, cls, lm


@pytest.fixture(scope="module")
def plain_hf(runs: Any) -> dict[str, Any]:
    """Everything the no-fedfm subprocess measured (one subprocess: imports cost seconds)."""
    root, cls, lm = runs
    spec = {
        "cls_snippet": load_snippet(cls),
        "cls_test": str(write_test_set(cls, root / "cls-test.jsonl")),
        "cls_merged": str(root / "cls-merged"),
        "lm_snippet": load_snippet(lm),
        "lm_test": str(write_test_set(lm, root / "lm-test.jsonl")),
        "lm_merged": str(root / "lm-merged"),
        "max_length": 16,
    }
    done = subprocess.run(
        [sys.executable, "-c", PLAIN_HF, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,  # not the repository: nothing of fedfm on the path but the installed package
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_run_folder_holds_a_peft_adapter_folder_and_labels(runs: Any) -> None:
    _, cls, lm = runs
    for run in (cls, lm):
        files = {p.name for p in (run / "adapter").iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files
    config = json.loads((cls / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "SEQ_CLS"
    assert config["modules_to_save"] == ["classifier"]
    assert Path(config["base_model_name_or_path"]).is_absolute()
    assert (Path(config["base_model_name_or_path"]) / "config.json").is_file()
    names = json.loads((cls / "labels.json").read_text())
    assert names == list(load_dataset("trec6").label_names)
    assert not (lm / "labels.json").exists()  # causal LM has no classes


def test_plain_peft_gives_the_runs_final_metric_without_fedfm(
    runs: Any, plain_hf: dict[str, Any]
) -> None:
    _, cls, lm = runs
    assert plain_hf["fedfm_imported"] is False
    record = last_record(cls)
    assert abs(plain_hf["cls_accuracy"] - record["test_accuracy"]) <= 1e-6
    assert abs(plain_hf["cls_loss"] - record["test_loss"]) <= 1e-5
    ppl = last_record(lm)["test_perplexity"]
    assert math.isclose(plain_hf["lm_perplexity"], ppl, rel_tol=1e-6)


def test_merged_export_runs_in_a_pipeline_with_label_names(
    runs: Any, plain_hf: dict[str, Any]
) -> None:
    _, cls, _ = runs
    assert set(plain_hf["pipeline_labels"]) <= set(json.loads((cls / "labels.json").read_text()))
    # the merged model is the adapter on its base: the same predictions, so the same accuracy
    assert abs(plain_hf["pipeline_accuracy"] - last_record(cls)["test_accuracy"]) <= 1e-6
    assert plain_hf["generated"].startswith("To be") and len(plain_hf["generated"]) > len("To be")


def test_model_card_snippet_names_the_real_paths(runs: Any) -> None:
    _, cls, _ = runs
    snippet = load_snippet(cls)
    config = json.loads((cls / "adapter" / "adapter_config.json").read_text())
    assert json.dumps(str((cls / "adapter").resolve())) in snippet
    assert json.dumps(config["base_model_name_or_path"]) in snippet
    assert "fedfm" not in snippet
    assert len([line for line in snippet.splitlines() if "=" in line]) == 3  # three lines


def test_fedfm_eval_gives_the_runs_last_record(runs: Any, capsys: pytest.CaptureFixture) -> None:
    _, cls, lm = runs
    assert main(["eval", str(cls)]) == 0
    result = json.loads((cls / "eval.json").read_text())
    record = last_record(cls)
    for key in ("accuracy", "macro_f1", "loss"):
        assert abs(result["metrics"][key] - record[f"test_{key}"]) <= 1e-6, key
    assert result["examples"] == 24
    assert "accuracy" in capsys.readouterr().out
    assert main(["eval", str(lm), "--out", str(lm / "lm-eval.json")]) == 0
    lm_result = json.loads((lm / "lm-eval.json").read_text())["metrics"]
    assert math.isclose(lm_result["perplexity"], last_record(lm)["test_perplexity"], rel_tol=1e-6)


def test_fedfm_eval_on_other_data_overrides_the_dataset(
    runs: Any, capsys: pytest.CaptureFixture
) -> None:
    _, cls, _ = runs
    args = ["eval", str(cls), "--data", "trec6", "--set", "data.max_test_examples=10"]
    assert main(args) == 0
    result = json.loads((cls / "eval-trec6.json").read_text())
    assert result["examples"] == 10 and 0 <= result["metrics"]["accuracy"] <= 1
    # data whose labels the run never saw is refused, naming both label sets
    assert main(["eval", str(cls), "--data", "sms_spam"]) == 2
    out = capsys.readouterr().out
    assert "sms_spam" in out and "'ham'" in out and "'abbreviation'" in out


def test_fedfm_eval_scores_every_row_of_a_data_file(runs: Any) -> None:
    root, cls, _ = runs
    names = json.loads((cls / "labels.json").read_text())
    rows = [json.loads(line) for line in write_test_set(cls, root / "rows.jsonl").open()]
    path = root / "new.csv"
    with path.open("w", newline="") as f:  # label names, in another order than the run's
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([r["text"], names[r["label"]]] for r in reversed(rows))
    assert main(["eval", str(cls), "--data", str(path)]) == 0
    result = json.loads((cls / "eval-new.json").read_text())
    assert result["examples"] == len(rows) == 24
    assert abs(result["metrics"]["accuracy"] - last_record(cls)["test_accuracy"]) <= 1e-6
    assert abs(result["metrics"]["loss"] - last_record(cls)["test_loss"]) <= 1e-5


def test_export_refuses_a_non_empty_folder(runs: Any, capsys: pytest.CaptureFixture) -> None:
    root, cls, _ = runs
    assert main(["export", str(cls), "--merged", str(root / "cls-merged")]) == 2
    assert "--overwrite" in capsys.readouterr().out


def test_eval_and_export_refuse_a_non_run_before_importing_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from fedfm.cli import main\n"
        f"assert main(['eval', {str(tmp_path)!r}]) == 2\n"
        f"assert main(['export', {str(tmp_path)!r}, '--merged', {str(tmp_path / 'o')!r}]) == 2\n"
        "assert 'torch' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "has no config.toml" in done.stdout and "no adapter/ or model/" in done.stdout
