"""Preference dataset files: prompt/chosen/rejected columns (a prompt as text or as messages
ending with the user's), ``data.task = "auto"``, categories, and every bad row named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fedfm.config import DataConfig, load_config
from fedfm.data.file_dataset import read_file_dataset
from fedfm.errors import ConfigError
from fedfm.resources.types import PreferencePair

ROWS = [(f"question {i}?", f"right {i}.", f"wrong {i}.", "a" if i % 2 else "b") for i in range(20)]
HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "and?"},
]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))


def _write(path: Path, frame: pd.DataFrame) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    return path


def _data(path: Path, **keys: Any) -> DataConfig:
    return DataConfig(dataset=str(path), partition="iid", num_clients=2, **keys)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_prompt_chosen_rejected_rows_read_as_pairs(tmp_path: Path, suffix: str) -> None:
    frame = pd.DataFrame(ROWS, columns=["prompt", "chosen", "rejected", "topic"])
    ds = read_file_dataset(_data(_write(tmp_path / f"pref{suffix}", frame)))
    assert ds.task == "preference" and ds.label_names == ()
    every = [*ds.train.inputs, *ds.test.inputs]
    assert len(every) == 20 and all(isinstance(p, PreferencePair) for p in every)
    pair = every[0]
    i = int(pair.prompt[0]["content"].split()[1].rstrip("?"))
    assert pair == PreferencePair(
        ({"role": "user", "content": f"question {i}?"},), f"right {i}.", f"wrong {i}."
    )
    # a category column labels the pairs (partitions and per-category scores)
    labelled = read_file_dataset(_data(tmp_path / f"pref{suffix}", label_column="topic"))
    assert labelled.label_names == ("a", "b") and labelled.train.labels is not None


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_prompt_may_be_messages_ending_with_the_user(tmp_path: Path, suffix: str) -> None:
    prompt: Any = json.dumps(HISTORY) if suffix == ".csv" else HISTORY  # CSV: JSON text
    frame = pd.DataFrame({"ask": [prompt] * 10, "good": ["yes"] * 10, "bad": ["no"] * 10})
    path = _write(tmp_path / f"chat{suffix}", frame)
    keys = {"prompt_column": "ask", "chosen_column": "good", "rejected_column": "bad"}
    ds = read_file_dataset(_data(path, **keys))
    assert ds.task == "preference"
    assert ds.train.inputs[0] == PreferencePair(tuple(HISTORY), "yes", "no")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"chosen": ""}, r"row 4, column 'chosen' \(data.chosen_column\): the chosen response"),
        ({"rejected": None}, r"row 4 has no 'rejected' \(data.rejected_column\)"),
        ({"prompt": None}, r"row 4 has no 'prompt' \(data.prompt_column\)"),
        (
            {"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            r"row 4, column 'prompt' \(data.prompt_column\): the last message is the "
            "assistant's, but a preference prompt ends with the user's",
        ),
        ({"prompt": [{"role": "robot", "content": "q"}]}, r"row 4, .*role 'robot'"),
    ],
)
def test_a_bad_row_is_named_with_its_column(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    rows: list[dict[str, Any]] = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r, _ in ROWS]
    rows[3].update(change)
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(ConfigError, match=message):
        read_file_dataset(_data(path))


def test_a_named_task_needs_its_columns_and_the_keys_differ(tmp_path: Path) -> None:
    frame = pd.DataFrame(ROWS, columns=["prompt", "response", "rejected", "topic"])
    path = _write(tmp_path / "qa.jsonl", frame)
    with pytest.raises(ConfigError, match=r"data.chosen_column = 'chosen' is not a column"):
        read_file_dataset(_data(path, task="preference"))
    assert read_file_dataset(_data(path)).task == "instruction"  # auto: no chosen column
    with pytest.raises(ConfigError, match="data.chosen_column and data.rejected_column both"):
        load_config(None, ["data.chosen_column=x", "data.rejected_column=x"])
    with pytest.raises(ConfigError, match="data.prompt_column and data.chosen_column both"):
        load_config(None, ["data.chosen_column=prompt"])
    with pytest.raises(ConfigError, match=r"client.dpo_beta = 0.0 must be > 0"):
        load_config(None, ["client.dpo_beta=0.0"])
