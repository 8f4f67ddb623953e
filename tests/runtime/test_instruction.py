"""An instruction run end to end: a tiny causal LM folder, a JSONL of prompt/response rows and
a ChatML template from ``model.chat_template``; two federated rounds through ``execute``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from rich.console import Console

from fedfm.config import RunConfig, load_config
from fedfm.data.batching import collate
from fedfm.report.metrics import read_records
from fedfm.resources.types import Split
from fedfm.runtime.job import build_job, encode_split
from fedfm.runtime.rescore import rescore_run
from fedfm.runtime.run import execute, prepare_run_dir

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Peru", "Lima")]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))


def _rows(path: Path) -> Path:
    with path.open("w") as f:
        for i in range(48):
            country, capital = CAPITALS[i % len(CAPITALS)]
            prompt = f"What is the capital of {country}? ({i})"
            f.write(json.dumps({"prompt": prompt, "response": f"The capital is {capital}."}))
            f.write("\n")
    return path


def _cfg(tmp_path: Path, folder: Path, *extra: str) -> RunConfig:
    return load_config(
        None,
        [
            f"data.dataset={json.dumps(str(_rows(tmp_path / 'qa.jsonl')))}",
            "data.partition=iid",
            "data.num_clients=2",
            "data.max_length=40",
            f"model.name={json.dumps(str(folder))}",
            f"model.chat_template={json.dumps(CHATML)}",
            "data.system_prompt='Answer briefly.'",
            "adapter.method=full",
            "client.lr=0.01",
            "client.batch_size=8",
            "strategy.clients_per_round=2",
            "rounds=2",
            "eval.initial=true",
            f"output_dir={json.dumps(str(tmp_path / 'runs'))}",
            "name=chat",
            *extra,
        ],
    )


def test_two_rounds_train_on_the_responses(tmp_path: Path, tiny_model_dirs) -> None:
    cfg = _cfg(tmp_path, tiny_model_dirs["qwen2"])
    run_dir = prepare_run_dir(cfg, overwrite=False)
    summary = execute(cfg, run_dir=run_dir, plot=False)
    records = read_records(run_dir / "metrics.jsonl")
    assert [r["round"] for r in records] == [0, 1, 2]
    losses = [r["test_loss"] for r in records]
    assert all(math.isfinite(x) for x in losses)
    assert all(r["test_perplexity"] == pytest.approx(math.exp(r["test_loss"])) for r in records)
    assert losses[2] < losses[0]  # the responses became likelier
    assert summary["task"] == "instruction"
    assert summary["truncated_responses"] == {"train": 0, "test": 0}
    # every example renders to more than 40 tokens: its prompt side is cut, never its response
    assert summary["truncated_prompts"] == {"train": 38, "test": 10}
    assert summary["final"]["test_loss"] == losses[2]
    assert rescore_run(run_dir)["metrics"]["loss"] == pytest.approx(losses[2], rel=1e-5)
    assert (run_dir / "model" / "chat_template.jinja").read_text() == CHATML  # exported


def test_the_labels_are_the_response_tokens_whatever_the_prompt(
    tmp_path: Path, tiny_model_dirs
) -> None:
    cfg = _cfg(tmp_path, tiny_model_dirs["qwen2"], "data.max_length=120")
    job = build_job(cfg)
    assert job.causal_lm and job.train.masks is not None
    train = job.dataset.train
    assert isinstance(train.inputs, list)
    reworded = [
        ({**c[0], "content": "Tell me, please: " + c[0]["content"]}, *c[1:]) for c in train.inputs
    ]
    other = encode_split(Split(reworded, None), job.tokenizer, task="instruction", cfg=cfg)
    for i in range(len(train)):
        a = collate(job.train, [i], causal_lm=True)["labels"][0]
        b = collate(other, [i], causal_lm=True)["labels"][0]
        assert len(b) > len(a)  # a longer prompt ...
        assert a[a != -100].tolist() == b[b != -100].tolist()  # ... the same targets
        response = train.inputs[i][-1]["content"] + "<|im_end|>"
        assert job.tokenizer.decode(a[a != -100]) == response
    first = job.tokenizer.decode(job.train.ids[0])
    assert first.startswith("<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\n")


def test_cut_responses_are_counted_and_announced(tmp_path: Path, tiny_model_dirs) -> None:
    cfg = _cfg(tmp_path, tiny_model_dirs["qwen2"], "data.max_length=6", "rounds=1")
    console = Console(record=True, width=200)
    run_dir = prepare_run_dir(cfg, overwrite=False)
    summary = execute(cfg, run_dir=run_dir, console=console, plot=False)
    assert summary["truncated_responses"] == {"train": 38, "test": 10}
    text = console.export_text()
    assert "warning: 38 of 38 training and 10 of 10 test responses are longer than" in text
    assert "raise data.max_length" in text
