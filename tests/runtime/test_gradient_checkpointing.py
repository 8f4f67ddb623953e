"""``client.gradient_checkpointing``: the same training, less memory (activations recomputed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedfm.client.state import ClientState
from fedfm.config import load_config
from fedfm.errors import ConfigError
from fedfm.runtime.job import build_job
from fedfm.runtime.transports.in_process import fit_client


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))


def _overrides(tmp_path: Path, folder: Path) -> list[str]:
    rows = tmp_path / "lines.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"text": f"line {i} of a tiny corpus, said twice"}) + "\n" for i in range(40)
        )
    )
    return [
        f"data.dataset={json.dumps(str(rows))}",
        "data.task=causal_lm",
        "data.partition=iid",
        "data.num_clients=2",
        f"model.name={json.dumps(str(folder))}",
        "adapter.method=lora",
        "client.steps=2",
        "client.batch_size=8",
    ]


def test_one_client_trains_to_the_same_params_with_and_without_it(tmp_path, tiny_model_dirs):
    base = _overrides(tmp_path, tiny_model_dirs["llama"])
    params = {}
    for on in (False, True):
        job = build_job(
            load_config(None, [*base, f"client.gradient_checkpointing={str(on).lower()}"])
        )
        assert job.model.base_model.model.is_gradient_checkpointing is on
        outcome = fit_client(job, job.federation[0], job.initial_params, {}, ClientState(), 1)
        params[on] = {k: job.initial_params[k] + d for k, d in outcome.update.delta.items()}
    assert params[False].keys() == params[True].keys()
    for k in params[False]:
        torch.testing.assert_close(params[True][k], params[False][k], rtol=1e-5, atol=1e-6)


def test_a_model_that_is_not_a_transformer_is_refused():
    cfg = load_config(
        None,
        [
            "model.name=mlp",
            "data.dataset=digits",
            "adapter.method=full",
            "client.gradient_checkpointing=true",
        ],
    )
    with pytest.raises(
        ConfigError, match="client.gradient_checkpointing = true, but model.name = 'mlp'"
    ):
        build_job(cfg)
