"""strategy.personal (FedSA-LoRA's local B, a local head) and compressed uploads in a run."""

import pytest
import torch

from fedfm.config import load_config
from fedfm.errors import ConfigError
from fedfm.models.params import payload_bytes
from fedfm.report.metrics import read_records
from fedfm.runtime.job import build_job
from fedfm.runtime.run import execute, prepare_run_dir
from fedfm.runtime.simulation import RoundState, evaluate_clients, run_round

LORA = [
    "data.dataset=digits",
    "model.name=mlp",
    "adapter.method=lora",
    'adapter.target_modules=["hidden"]',
    "adapter.rank=4",
    "data.num_clients=6",
    "strategy.clients_per_round=3",
    "client.lr=0.01",
]


def _cfg(tmp_path, *extra):
    return load_config(None, [*LORA, f"output_dir={tmp_path}", *extra])


def test_local_b_stays_with_each_client_and_does_not_travel(tmp_path):
    job = build_job(_cfg(tmp_path, 'strategy.personal=["lora_B"]'))
    assert job.strategy.personalized
    b_name = next(k for k in job.initial_params if "lora_B" in k)
    state = RoundState(round=0, global_params=job.initial_params)
    record = run_round(job, state)
    cohort = record["cohort"]
    assert sorted(state.personal) == cohort
    assert all(set(p) == {b_name} for p in state.personal.values())
    # every client trained its own B; the global B never moves
    assert all(state.personal[c][b_name].abs().sum() > 0 for c in cohort)
    assert torch.equal(state.global_params[b_name], job.initial_params[b_name])
    # B is neither sent down nor up
    shared = {k: v for k, v in job.initial_params.items() if k != b_name}
    assert record["bytes_down"] == payload_bytes(shared) * len(cohort)
    assert record["bytes_up"] == payload_bytes(shared) * len(cohort)
    # a personalised run is scored on every client's split with that client's own B
    assert "test_accuracy" not in record and "client_accuracy_mean" in record
    own = evaluate_clients(job, state.global_params, own=state.personal)
    assert own["client_accuracy_mean"] == record["client_accuracy_mean"]

    before = {c: state.personal[c][b_name].clone() for c in cohort}
    second = run_round(job, state)["cohort"]
    for c in cohort:  # only a client that trained again has a new B
        assert torch.equal(before[c], state.personal[c][b_name]) == (c not in second)


def test_local_head_run_resumes_and_saves_every_clients_params(tmp_path, full_and_resumed):
    overrides = ['strategy.personal=["head"]', "rounds=3", "checkpoint.every=1"]
    full, resumed, cut_dir = full_and_resumed(
        [*LORA, f"output_dir={tmp_path}", *overrides], stop_after=2
    )
    assert resumed["final"] == full["final"]
    assert len(list((cut_dir / "clients").glob("*.safetensors"))) == 6


@pytest.mark.parametrize(
    ("patterns", "match"),
    [('["nothing"]', "matches none"), ('["lora", "classifier"]', "nothing is federated")],
)
def test_bad_personal_patterns_are_config_errors(tmp_path, patterns, match):
    with pytest.raises(ConfigError, match=match):
        build_job(_cfg(tmp_path, f"strategy.personal={patterns}"))


@pytest.mark.parametrize(
    "overrides",
    [
        ["compression.method=quantize", "compression.bits=8"],
        ["compression.method=quantize", "compression.bits=4"],
        ["compression.method=topk", "compression.fraction=0.1"],
    ],
)
def test_compressed_uploads_count_their_wire_size_and_still_learn(tmp_path, overrides):
    dense = ["adapter.method=full", "data.partition=iid", "client.epochs=3", "client.lr=0.01"]
    dense += ["rounds=6"]
    cfg = _cfg(tmp_path, *dense, "name=small", *overrides)
    small = execute(cfg, run_dir=prepare_run_dir(cfg, overwrite=False))
    job = build_job(cfg)
    wire, _, _ = job.pipeline.client(job.initial_params, {}, torch.Generator())
    per_upload = payload_bytes(wire)  # wire sizes depend on shapes only
    assert per_upload < payload_bytes(job.initial_params)
    for record in read_records(tmp_path / "small" / "metrics.jsonl"):
        assert record["bytes_up"] == per_upload * len(record["cohort"])
    plain_cfg = _cfg(tmp_path, *dense, "name=plain")
    plain = execute(plain_cfg, run_dir=prepare_run_dir(plain_cfg, overwrite=False))
    assert plain["final"]["test_accuracy"] > 0.6  # 10 classes: chance is 0.1
    assert small["final"]["test_accuracy"] > plain["final"]["test_accuracy"] - 0.15


def test_error_feedback_state_survives_a_resume(tmp_path, full_and_resumed):
    overrides = ["compression.method=topk", "compression.fraction=0.05", "rounds=3"]
    full, resumed, _ = full_and_resumed([*LORA, f"output_dir={tmp_path}", *overrides], stop_after=1)
    assert resumed["final"] == full["final"]


def test_compression_config_is_checked():
    with pytest.raises(ConfigError, match=r"compression.bits = 3 is not one of \(1, 2, 4, 8\)"):
        load_config(None, ["compression.bits=3"])
    with pytest.raises(ConfigError, match=r"compression.fraction = 0.0 must be in \(0, 1\]"):
        load_config(None, ["compression.fraction=0.0"])
    with pytest.raises(ConfigError, match="compression.method = 'zip'"):
        load_config(None, ["compression.method=zip"])
    with pytest.raises(ConfigError, match="adapter.freeze_a = true freezes LoRA's A"):
        load_config(None, ["adapter.method=full", "adapter.freeze_a=true"])
