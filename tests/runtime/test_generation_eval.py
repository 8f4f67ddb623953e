"""Evaluation by generation in a run (``eval.generate``, ``fedfm.features.generation``): a tiny
causal LM folder, JSONL rows of prompt, response and category, a ChatML template; scores per
round, per client and per task, ``generations.md``, determinism and the refusals."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from fedfm.config import _CHOICES, RunConfig, load_config
from fedfm.errors import ConfigError
from fedfm.features.generation import first_of_each, seeded_subset
from fedfm.generation import SCORERS, generate, label_match, split_references
from fedfm.generation.report import cell
from fedfm.models.params import load_params_file
from fedfm.report.metrics import read_records
from fedfm.run_files import GENERATIONS_FILE, PARAMS_FILE
from fedfm.runtime.job import build_job
from fedfm.runtime.run import execute, prepare_run_dir

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Peru", "Lima")]
MESSAGES = [("Free entry: text WIN now to claim your prize", "spam"), ("Lunch today?", "ham")]
# ChatML with the tokenizer's eos as the end of a turn: a trained model's response stops
EOS_CHATML = CHATML.replace("<|im_end|>", "<|endoftext|>")


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))


def _capitals(path: Path) -> Path:
    """48 questions, each with a free-text answer and a category (``label``)."""
    with path.open("w") as f:
        for i in range(48):
            country, capital = CAPITALS[i % len(CAPITALS)]
            row = {
                "prompt": f"What is the capital of {country}? ({i})",
                "response": f"The capital is {capital}.",
                "label": "europe" if country != "Peru" else "america",
            }
            f.write(json.dumps(row) + "\n")
    return path


def _messages(path: Path) -> Path:
    """48 SMS texts whose reference response is a label name, ``spam`` or ``ham``."""
    with path.open("w") as f:
        for i in range(48):
            text, label = MESSAGES[i % len(MESSAGES)]
            f.write(json.dumps({"prompt": f"{text} ({i})", "response": label}) + "\n")
    return path


def _cfg(tmp_path: Path, rows: Path, folder: Path, *extra: str) -> RunConfig:
    return load_config(
        None,
        [
            f"data.dataset={json.dumps(str(rows))}",
            "data.partition=iid",
            "data.num_clients=2",
            "data.max_length=40",
            f"model.name={json.dumps(str(folder))}",
            f"model.chat_template={json.dumps(CHATML)}",
            "adapter.method=full",
            "client.lr=0.01",
            "client.batch_size=8",
            "strategy.clients_per_round=2",
            "rounds=2",
            "eval.generate=true",
            "eval.max_new_tokens=8",
            "eval.generate_batch_size=4",
            f"output_dir={json.dumps(str(tmp_path / 'runs'))}",
            *extra,
        ],
    )


def _run(cfg: RunConfig, console: Console | None = None) -> tuple[Path, list[dict[str, Any]]]:
    run_dir = prepare_run_dir(cfg, overwrite=False)
    execute(cfg, run_dir=run_dir, plot=False, console=console or Console(quiet=True))
    return run_dir, read_records(run_dir / "metrics.jsonl")


def _table(run_dir: Path) -> list[list[str]]:
    """The cells of ``generations.md``'s rows (header and rule left out)."""
    lines = (run_dir / GENERATIONS_FILE).read_text().splitlines()
    rows = [line for line in lines if line.startswith("| ")][1:]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]


def _final_outputs(
    run_dir: Path, count: int | None = None, template: str = CHATML
) -> tuple[list[str], list[str]]:
    """The final global model's responses to ``count`` test prompts (all: None), taken
    round-robin over the tasks as ``generations.md`` takes them, generated here from the
    run's saved params, and their references."""
    job = build_job(load_config(run_dir / "config.toml"))
    load_params_file(job.model, run_dir / PARAMS_FILE, backbone=job.backbone)
    test = job.dataset.test
    picked = range(len(test)) if count is None else first_of_each(test.labels, count).tolist()
    prompts, references = split_references([test.inputs[i] for i in picked])
    cfg = job.cfg
    outputs = generate(
        job.model,
        job.tokenizer,
        prompts,
        max_new_tokens=cfg.eval.max_new_tokens,
        batch_size=cfg.eval.generate_batch_size,
        chat_template=template,
    )
    return outputs, references


def test_each_round_scores_the_global_model_and_the_run_writes_its_examples(
    tmp_path: Path, tiny_model_dirs
) -> None:
    cfg = _cfg(
        tmp_path,
        _capitals(tmp_path / "qa.jsonl"),
        tiny_model_dirs["qwen2"],
        "eval.initial=true",
        "eval.generate_examples=3",
        "name=text",
    )
    console = Console(record=True, width=300)
    run_dir, records = _run(cfg, console)
    assert [r["round"] for r in records] == [0, 1, 2]
    for r in records:
        assert list(r).index("test_gen_rouge_l") < list(r).index("test_gen_exact_match")
        assert 0 <= r["test_gen_exact_match"] <= r["test_gen_rouge_l"] <= 1
        assert set(r["test_gen_rouge_l_by_task"]) == {"america", "europe"}  # label_names
        assert "client_gen_rouge_l_mean" not in r  # eval.per_client is off
    assert records[2]["test_gen_rouge_l"] > 0  # trained: "The capital ..." shares words
    assert console.export_text().count("rougeL ") == 3  # the round line shows it
    table = _table(run_dir)
    assert len(table) == 3  # eval.generate_examples
    outputs, references = _final_outputs(run_dir, 3)
    assert [row[1] for row in table] == references
    assert [row[2] for row in table] == [cell(o) for o in outputs]  # the final global model's
    assert [row[3] for row in table] == ["–"] * 3  # no local-only model in a federated run
    assert GENERATIONS_FILE in (run_dir / "README.md").read_text()  # the model card lists it


def test_the_label_scorer_scores_the_generated_label(tmp_path: Path, tiny_model_dirs) -> None:
    cfg = _cfg(
        tmp_path,
        _messages(tmp_path / "sms.jsonl"),
        tiny_model_dirs["qwen2"],
        f"model.chat_template={json.dumps(EOS_CHATML)}",
        "client.steps=20",
        "eval.scorer=label",
        "eval.generate_examples=0",
        "name=label",
    )
    run_dir, records = _run(cfg)
    assert all(0 <= r["test_gen_accuracy"] <= 1 for r in records)
    assert not any(k.startswith("test_gen_") and "accuracy" not in k for k in records[-1])
    assert not (run_dir / GENERATIONS_FILE).exists()  # eval.generate_examples = 0
    outputs, references = _final_outputs(run_dir, template=EOS_CHATML)  # every test prompt
    expected = np.mean([label_match(o, r) for o, r in zip(outputs, references, strict=True)])
    assert expected > 0  # the trained model names some labels right
    assert records[-1]["test_gen_accuracy"] == pytest.approx(expected)


def test_per_client_scores_and_a_seeded_subset_of_prompts(tmp_path: Path, tiny_model_dirs) -> None:
    rows, folder = _capitals(tmp_path / "qa.jsonl"), tiny_model_dirs["qwen2"]
    extra = ("eval.per_client=true", "eval.generate_max_prompts=3", "eval.generate_examples=2")
    records = [_run(_cfg(tmp_path, rows, folder, *extra, f"name=r{i}"))[1] for i in range(2)]
    for r in records[0]:
        pairs = r["per_client_gen_rouge_l"]
        assert [c for c, _ in pairs] == [0, 1]
        values = [v for _, v in pairs]
        assert all(0 <= v <= 1 for v in values)
        assert r["client_gen_rouge_l_mean"] == pytest.approx(np.mean(values))
        assert r["client_gen_rouge_l_worst10"] == min(values)  # 2 clients: the worst one
        assert 0 <= r["test_gen_rouge_l"] <= 1
    strip = [[{k: v for k, v in r.items() if k != "seconds"} for r in run] for run in records]
    assert strip[0] == strip[1]  # greedy and seeded: the same records twice
    assert _table(tmp_path / "runs" / "r0") == _table(tmp_path / "runs" / "r1")


def test_generate_max_prompts_draws_a_seeded_subset(tmp_path: Path, tiny_model_dirs) -> None:
    rows, folder = _capitals(tmp_path / "qa.jsonl"), tiny_model_dirs["qwen2"]
    every = build_job(_cfg(tmp_path, rows, folder)).feature("generation")
    assert len(every.test.prompts) == 9  # the whole test set
    picked = [
        build_job(_cfg(tmp_path, rows, folder, "eval.generate_max_prompts=4")).feature("generation")
        for _ in range(2)
    ]
    assert len(picked[0].test.prompts) == 4
    questions = [p[-1]["content"] for p in picked[0].test.prompts]
    assert set(questions) < {p[-1]["content"] for p in every.test.prompts}
    assert picked[0].test.prompts == picked[1].test.prompts  # seeded
    assert all(len(c.prompts) <= 4 for c in picked[0].clients.values())
    assert seeded_subset(np.arange(5), 0, (0, 1)).tolist() == [0, 1, 2, 3, 4]
    subset = seeded_subset(np.arange(10, 20), 3, (0, 1))
    assert len(set(subset.tolist())) == 3 and subset.tolist() == sorted(subset.tolist())


def test_the_examples_table_takes_every_task_in_turn() -> None:
    tasks = np.array([0, 0, 0, 1, 1, 2])
    assert first_of_each(tasks, 4).tolist() == [0, 3, 5, 1]
    assert first_of_each(tasks, 9).tolist() == [0, 3, 5, 1, 4, 2]  # all, each once
    assert first_of_each(None, 3).tolist() == [0, 1, 2]


def test_a_personalised_run_scores_each_clients_own_model(tmp_path: Path, tiny_model_dirs) -> None:
    cfg = _cfg(
        tmp_path,
        _capitals(tmp_path / "qa.jsonl"),
        tiny_model_dirs["qwen2"],
        "strategy.name=local",
        "rounds=1",
        "eval.generate_examples=2",
        "name=local",
    )
    run_dir, records = _run(cfg)
    last = records[-1]
    assert not any(k.startswith("test_gen_") for k in last)  # no global model
    assert 0 <= last["client_gen_rouge_l_mean"] <= 1
    # each client's own model on the global test prompts
    assert 0 <= last["local_test_gen_rouge_l_worst10"] <= last["local_test_gen_rouge_l_mean"] <= 1
    by_task = last["local_test_gen_rouge_l_by_task"]
    assert set(by_task) == {"america", "europe"}
    job = build_job(cfg)
    sizes = [int(np.sum(job.dataset.test.labels == i)) for i in range(2)]  # per-task counts
    means = [by_task["america"], by_task["europe"]]  # each averaged over the 2 clients
    assert last["local_test_gen_rouge_l_mean"] == pytest.approx(np.average(means, weights=sizes))
    table = _table(run_dir)
    assert [row[2] for row in table] == ["–", "–"]
    assert all(row[3] != "–" for row in table)  # client 0's own (local-only) model


def test_the_scorer_choices_are_the_registered_scorers() -> None:
    assert list(_CHOICES["eval.scorer"]) == SCORERS.names()
    with pytest.raises(ConfigError, match="eval.scorer = 'bleu'"):
        load_config(None, ["eval.scorer=bleu"])
    with pytest.raises(ConfigError, match="eval.max_new_tokens = 0 must be >= 1"):
        load_config(None, ["eval.max_new_tokens=0"])


def test_generation_is_refused_without_responses(tmp_path: Path, tiny_model_dirs) -> None:
    with pytest.raises(
        ConfigError, match="eval.generate = true scores .* data.task = 'classification'"
    ):
        load_config(None, ["eval.generate=true", "data.task=classification"])
    with pytest.raises(ConfigError, match="eval.generate = true .* is a classification"):
        build_job(
            load_config(
                None,
                [
                    "eval.generate=true",
                    "data.dataset=digits",
                    "model.name=mlp",
                    "adapter.method=full",
                ],
            )
        )
    texts = tmp_path / "texts.jsonl"  # a file of texts and labels: classification
    texts.write_text(
        "".join(json.dumps({"text": f"t {i}", "label": i % 2}) + "\n" for i in range(40))
    )
    folder = tiny_model_dirs["qwen2"]
    with pytest.raises(ConfigError, match="eval.generate = true .* data.task = 'classification'"):
        build_job(_cfg(tmp_path, texts, folder))


def test_the_generate_function_loads_whatever_was_asked_for_first() -> None:
    code = (
        "from fedfm.generation import split_references; from fedfm.generation import generate; "
        "print(callable(generate))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
