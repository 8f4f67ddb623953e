"""``fedfm join --data`` with instruction and preference files: the client's own rows are
encoded through the chat template with their loss masks, exactly as the server encodes its
own (a plain text encoding would train on the prompt and lose the rejected responses)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedfm.config import load_config
from fedfm.data.own import read_own_data
from fedfm.runtime.job import encode_split
from fedfm.runtime.remote.client import _client_job, with_own_data

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))


def _rows(path: Path, task: str, count: int, start: int) -> Path:
    with path.open("w") as f:
        for i in range(start, start + count):
            row = {"prompt": f"What is {i} plus one?"}
            if task == "instruction":
                row["response"] = f"It is {i + 1}."
            else:
                row |= {"chosen": f"It is {i + 1}.", "rejected": f"It is {i + 2}."}
            f.write(json.dumps(row) + "\n")
    return path


@pytest.mark.parametrize("task", ["instruction", "preference"])
def test_own_chat_rows_are_encoded_as_the_server_encodes_them(
    task: str, tmp_path: Path, tiny_model_dirs
) -> None:
    server = _rows(tmp_path / "server.jsonl", task, 24, 0)
    mine = _rows(tmp_path / "mine.jsonl", task, 6, 100)
    cfg = load_config(  # what the server sends: its resolved config
        None,
        [
            f"data.dataset={json.dumps(str(server))}",
            f"data.task={task}",
            "data.partition=iid",
            "data.num_clients=2",
            "data.max_length=48",
            f"model.name={json.dumps(str(tiny_model_dirs['qwen2']))}",
            f"model.chat_template={json.dumps(CHATML)}",
        ],
    )
    own = read_own_data(mine, cfg)
    job = _client_job(cfg, str(mine))
    own_job, client = with_own_data(job, own, 0, "clinic")
    expected = encode_split(own, job.tokenizer, task=task, cfg=cfg)
    train = own_job.train
    assert client.train.tolist() == list(range(6)) and own_job.federation.clients == (client,)
    assert train.masks is not None and expected.masks is not None
    assert [list(r) for r in train.ids] == [list(r) for r in expected.ids]
    for ids, mask in zip(train.ids, train.masks, strict=True):
        assert 0 < int(np.sum(mask)) < len(ids)  # the response only, never the prompt
    if task == "preference":
        assert train.rejected is not None and expected.rejected is not None
        assert [list(r) for r in train.rejected] == [list(r) for r in expected.rejected]
    else:
        assert train.rejected is None
