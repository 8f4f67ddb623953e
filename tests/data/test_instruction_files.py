"""Instruction dataset files: prompt/response columns or a messages column, from CSV, JSONL,
JSON and Parquet; ``data.task = "auto"``; categories; every bad row named with its column."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedfm.config import DataConfig, load_config
from fedfm.data.federation import build_federation
from fedfm.data.file_dataset import read_file_dataset
from fedfm.errors import ConfigError

PAIRS = [(f"question {i}?", f"answer {i}.", "math" if i % 2 else "geo") for i in range(20)]
CHATS = [
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": f"hi {i}"},
        {"role": "assistant", "content": f"hello {i}"},
        {"role": "user", "content": "and?"},
        {"role": "assistant", "content": "bye"},
    ]
    for i in range(10)
]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))


def _write(path: Path, frame: pd.DataFrame) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif path.suffix == ".json":
        frame.to_json(path, orient="records")
    else:
        frame.to_parquet(path)
    return path


def _data(path: Path, **keys: Any) -> DataConfig:
    return DataConfig(dataset=str(path), partition="iid", num_clients=2, **keys)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet"])
def test_prompt_response_rows_read_as_conversations(tmp_path: Path, suffix: str) -> None:
    frame = pd.DataFrame(PAIRS, columns=["prompt", "response", "topic"])
    ds = read_file_dataset(_data(_write(tmp_path / f"qa{suffix}", frame)))
    assert ds.task == "instruction" and ds.label_names == ()
    assert len(ds.train) + len(ds.test) == 20
    conversation = ds.train.inputs[0]
    i = int(conversation[0]["content"].split()[1].rstrip("?"))
    assert conversation == (
        {"role": "user", "content": f"question {i}?"},
        {"role": "assistant", "content": f"answer {i}."},
    )


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
def test_a_messages_column_reads_multi_turn(tmp_path: Path, suffix: str) -> None:
    cells = [json.dumps(c) for c in CHATS] if suffix == ".csv" else CHATS  # CSV: JSON text
    frame = pd.DataFrame({"messages": cells, "id": range(10)})
    ds = read_file_dataset(_data(_write(tmp_path / f"chat{suffix}", frame)))
    assert ds.task == "instruction"
    every = [*ds.train.inputs, *ds.test.inputs]
    assert sorted(c[2]["content"] for c in every) == sorted(f"hello {i}" for i in range(10))
    assert all([m["role"] for m in c] == [m["role"] for m in CHATS[0]] for c in every)


def test_a_category_column_labels_rows_and_partitions_by_category(tmp_path: Path) -> None:
    frame = pd.DataFrame(PAIRS, columns=["prompt", "response", "topic"])
    path = _write(tmp_path / "qa.jsonl", frame)
    cfg = DataConfig(
        dataset=str(path), task="instruction", label_column="topic", num_clients=2, alpha=0.5
    )
    ds = read_file_dataset(cfg)
    assert ds.task == "instruction" and ds.label_names == ("geo", "math")
    assert ds.train.labels is not None
    for split in (ds.train, ds.test):
        assert split.labels is not None
        topics = [
            "math" if int(c[0]["content"].split()[1][:-1]) % 2 else "geo" for c in split.inputs
        ]
        assert [ds.label_names[i] for i in split.labels] == topics
    federation = build_federation(ds.train, cfg, seed=0)  # Dirichlet over categories
    assert sum(c.num_examples + len(c.eval) for c in federation.clients) == len(ds.train)


def test_auto_keeps_classification_and_causal_lm_files(tmp_path: Path) -> None:
    both = pd.DataFrame(
        {
            "text": ["a b", "c d"] * 5,
            "label": [0, 1] * 5,
            "prompt": ["p"] * 10,
            "response": ["r"] * 10,
        }
    )
    assert read_file_dataset(_data(_write(tmp_path / "both.jsonl", both))).task == "classification"
    plain = pd.DataFrame({"text": [f"document {i}" for i in range(10)]})
    assert read_file_dataset(_data(_write(tmp_path / "lm.jsonl", plain))).task == "causal_lm"


def test_instruction_is_a_data_task_choice() -> None:
    assert load_config(None, ["data.task=instruction"]).data.task == "instruction"
    with pytest.raises(ConfigError, match="data.prompt_column and data.response_column"):
        load_config(None, ["data.prompt_column=q", "data.response_column=q"])


def _rows(tmp_path: Path, messages: list[Any]) -> Path:
    good = CHATS[:4]
    return _write(tmp_path / "chat.jsonl", pd.DataFrame({"messages": [*good, messages]}))


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}],
         r"the response \(assistant\) is empty"),
        ([{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}],
         r"message 2 has role 'bot', not one of \['system', 'user', 'assistant'\]"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
          {"role": "user", "content": "well?"}],
         r"the last message is the user's.*ends with the assistant's response"),
        ([{"role": "assistant", "content": "yo"}, {"role": "assistant", "content": "yo"}],
         r"the conversation starts with the assistant's message, not the user's"),
    ],
    ids=["empty-response", "unknown-role", "last-not-assistant", "no-user"],
)  # fmt: skip
def test_a_bad_conversation_names_its_row_and_column(
    tmp_path: Path, messages: list[Any], problem: str
) -> None:
    path = _rows(tmp_path, messages)
    with pytest.raises(ConfigError, match=rf"chat.jsonl'.*row 5, column 'messages': {problem}"):
        read_file_dataset(_data(path, task="instruction"))


def test_an_empty_response_cell_names_its_row_and_columns(tmp_path: Path) -> None:
    rows = [*PAIRS[:6], ("question?", "", "geo")]
    path = _write(tmp_path / "qa.csv", pd.DataFrame(rows, columns=["prompt", "response", "t"]))
    with pytest.raises(ConfigError, match=r"row 7 has no 'response' \(data.response_column\)"):
        read_file_dataset(_data(path))  # CSV reads an empty cell as missing
    rows = [*PAIRS[:6], ("question?", " ", "geo")]
    path = _write(tmp_path / "qa.jsonl", pd.DataFrame(rows, columns=["prompt", "response", "t"]))
    with pytest.raises(ConfigError, match=r"row 7, columns 'prompt' and 'response': the resp"):
        read_file_dataset(_data(path))


def test_a_file_without_chat_columns_names_the_keys(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.jsonl", pd.DataFrame({"q": ["a"] * 4, "a": ["b"] * 4}))
    with pytest.raises(ConfigError, match=r"data.messages_column = 'messages'.*\['q', 'a'\]"):
        read_file_dataset(_data(path, task="instruction"))
    renamed = read_file_dataset(_data(path, prompt_column="q", response_column="a"))
    assert renamed.task == "instruction"  # auto, with the keys set


def test_no_category_column_refuses_a_label_partition(tmp_path: Path) -> None:
    frame = pd.DataFrame(PAIRS, columns=["prompt", "response", "topic"])
    path = _write(tmp_path / "qa.jsonl", frame)
    with pytest.raises(ConfigError, match=r"splits by category.*data.label_column"):
        read_file_dataset(DataConfig(dataset=str(path), partition="dirichlet"))
    assert np.all([len(c) == 2 for c in read_file_dataset(_data(path)).train.inputs])
