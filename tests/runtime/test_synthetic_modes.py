"""A federation that uses a synthetic set (written here by hand, no generator)."""

import math

import numpy as np
import pytest
import torch

from fedfm.config import load_config
from fedfm.datasets import load_dataset
from fedfm.runtime.job import build_job
from fedfm.runtime.run import execute, prepare_run_dir
from fedfm.synthetic.dataset import write_set

BASE = [
    "data.dataset=trec6",
    "data.num_clients=4",
    "strategy.clients_per_round=4",
    "data.max_train_examples=96",
    "data.max_test_examples=16",
    "client.steps=2",
    "client.batch_size=8",
]


@pytest.fixture(scope="module")
def synthetic_file(tmp_path_factory):
    names = load_dataset("trec6").label_names
    rows = [
        {"text": f"Question {i} about topic {i % 7}?", "label": i % 6, "label_name": names[i % 6]}
        for i in range(30)
    ]
    path = tmp_path_factory.mktemp("syn") / "set.jsonl"
    write_set(path, rows, {"label_names": list(names), "kept": 30})
    return path


def _job(tmp_path, synthetic_file, *extra):
    cfg = load_config(
        None, [*BASE, f"output_dir={tmp_path}", f"synthetic.path={synthetic_file}", *extra]
    )
    return build_job(cfg)


def test_client_mix_adds_synthetic_examples_to_every_client(tmp_path, synthetic_file):
    plain = build_job(load_config(None, [*BASE, f"output_dir={tmp_path}"]))
    job = _job(tmp_path, synthetic_file, "synthetic.mode=client_mix", "synthetic.ratio=0.5")
    real = len(plain.train)
    assert len(job.train) == real + 30
    for before, after in zip(plain.federation, job.federation, strict=True):
        extra = after.train[before.num_examples :]
        assert len(extra) == round(0.5 * before.num_examples) and (extra >= real).all()
    assert job.feature("synthetic").info["synthetic_mode"] == "client_mix"
    assert job.feature("synthetic").info["synthetic_examples"] == 30


def test_synthetic_only_clients_train_on_synthetic_examples_alone(tmp_path, synthetic_file):
    job = _job(tmp_path, synthetic_file, "synthetic.mode=synthetic_only")
    offset = len(job.train) - 30
    shares = [c.train for c in job.federation]
    assert all((s >= offset).all() for s in shares)
    assert sorted(np.concatenate(shares)) == list(range(offset, offset + 30))


def test_server_warmup_trains_the_start_on_the_synthetic_set(tmp_path, synthetic_file):
    plain = build_job(load_config(None, [*BASE, f"output_dir={tmp_path}"]))
    job = _job(
        tmp_path, synthetic_file, "synthetic.mode=server_warmup", "synthetic.warmup_epochs=2"
    )
    assert job.feature("synthetic").info["warmup_steps"] == 2 * math.ceil(30 / 8)
    assert job.feature("synthetic").info["warmup_examples"] == 30
    moved = [
        k
        for k in plain.initial_params
        if not torch.equal(plain.initial_params[k], job.initial_params[k])
    ]
    assert moved and all("lora" in k or "classifier" in k for k in moved)
    assert [c.train.tolist() for c in job.federation] == [
        c.train.tolist() for c in plain.federation
    ]
    again = _job(
        tmp_path, synthetic_file, "synthetic.mode=server_warmup", "synthetic.warmup_epochs=2"
    )
    assert all(torch.equal(job.initial_params[k], again.initial_params[k]) for k in moved)


def test_a_run_records_its_synthetic_set(tmp_path, synthetic_file):
    cfg = load_config(
        None,
        [
            *BASE,
            f"output_dir={tmp_path}",
            f"synthetic.path={synthetic_file}",
            "synthetic.mode=server_warmup",
            "rounds=1",
            "eval.initial=true",
        ],
    )
    summary = execute(cfg, run_dir=prepare_run_dir(cfg, overwrite=False))
    assert summary["synthetic_path"] == str(synthetic_file)
    assert summary["warmup_examples"] == 30 and summary["rounds_completed"] == 1


def test_poisoning_attacks_do_not_mix_with_a_synthetic_pool():
    with pytest.raises(Exception, match="synthetic.mode = 'client_mix' with attack.kind"):
        load_config(
            None, ["synthetic.mode=client_mix", "attack.kind=backdoor", "attack.fraction=0.2"]
        )
