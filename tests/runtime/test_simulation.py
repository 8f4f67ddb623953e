"""The simulation on digits + MLP (fast): resume equality, exclusion of bad updates, bytes."""

import pytest
import torch
from safetensors.torch import load_file

from fedfm.config import load_config
from fedfm.models.params import payload_bytes
from fedfm.report.metrics import read_records
from fedfm.runtime.job import build_job
from fedfm.runtime.run import execute, prepare_run_dir, resume_config
from fedfm.runtime.simulation import RoundState, run_round
from fedfm.runtime.transports import in_process

FAST = [
    "data.dataset=digits",
    "model.name=mlp",
    "adapter.method=full",
    "data.num_clients=8",
    "client.lr=0.05",
    "client.optimizer=sgd",
    "eval.per_client=true",
]


def _cfg(tmp_path, *extra):
    return load_config(None, [*FAST, f"output_dir={tmp_path}", *extra])


def _records(run_dir):
    return read_records(run_dir / "metrics.jsonl")


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam", "scaffold"])
def test_resume_reaches_the_same_final_metrics(tmp_path, strategy):
    overrides = [f"strategy.name={strategy}", "rounds=4", "checkpoint.every=2"]
    full_cfg = _cfg(tmp_path, *overrides, "name=full")
    full = execute(full_cfg, run_dir=prepare_run_dir(full_cfg, overwrite=False))

    cut_cfg = _cfg(tmp_path, *overrides, "name=cut")
    cut_dir = prepare_run_dir(cut_cfg, overwrite=False)
    # crash after round 3: the checkpoint is from round 2, so round 3 is redone on resume
    assert execute(cut_cfg, run_dir=cut_dir, stop_after=3) == {"stopped_after": 3}
    assert len(_records(cut_dir)) == 3
    resumed = execute(resume_config(cut_dir, []), run_dir=cut_dir, resume=True)

    assert resumed["final"] == full["final"]
    assert resumed["total_bytes"] == full["total_bytes"]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(_records(cut_dir)) == strip(_records(tmp_path / "full"))
    a = load_file(tmp_path / "full" / "adapter.safetensors")
    b = load_file(cut_dir / "adapter.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit


def test_non_finite_update_is_excluded_and_round_goes_on(tmp_path, monkeypatch):
    job = build_job(_cfg(tmp_path, "strategy.clients_per_round=4"))
    state = RoundState(round=0, global_params=job.initial_params)
    cohort = job.strategy.select(1, len(job.federation), seed=job.cfg.seed)
    poisoned = cohort[1]
    real_fit = in_process.fit_client

    def fit(job, client, *args, **kwargs):
        outcome = real_fit(job, client, *args, **kwargs)
        if client.id == poisoned:
            outcome.update.delta[next(iter(outcome.update.delta))][0] = float("nan")
        return outcome

    monkeypatch.setattr(in_process, "fit_client", fit)
    record = run_round(job, state)
    assert [e["client"] for e in record["excluded"]] == [poisoned]
    assert "non-finite" in record["excluded"][0]["reason"]
    assert all(torch.isfinite(t).all() for t in state.global_params.values())
    assert record["num_examples"] == sum(
        job.federation[c].num_examples for c in cohort if c != poisoned
    )


def test_failing_client_is_recorded_not_raised(tmp_path, monkeypatch):
    job = build_job(_cfg(tmp_path, "strategy.clients_per_round=3"))
    state = RoundState(round=0, global_params=job.initial_params)
    real_fit = in_process.fit_client
    victim = job.strategy.select(1, len(job.federation), seed=0)[0]

    def fit(job, client, *args, **kwargs):
        if client.id == victim:
            raise RuntimeError("out of memory on this client")
        return real_fit(job, client, *args, **kwargs)

    monkeypatch.setattr(in_process, "fit_client", fit)
    record = run_round(job, state)
    assert record["excluded"] == [
        {"client": victim, "reason": "RuntimeError: out of memory on this client"}
    ]
    assert "test_accuracy" in record


def test_bytes_are_counted_per_cohort_member(tmp_path):
    job = build_job(_cfg(tmp_path, "strategy.clients_per_round=3"))
    state = RoundState(round=0, global_params=job.initial_params)
    record = run_round(job, state)
    one = payload_bytes(job.initial_params)
    assert record["bytes_down"] == 3 * one
    assert record["bytes_up"] == 3 * one  # full fine-tuning sends everything back
    assert record["full_model_cum_bytes"] == 2 * 3 * job.full_model_bytes
    assert record["cum_bytes"] == record["bytes_down"] + record["bytes_up"]


def test_scaffold_sends_control_variates_both_ways(tmp_path):
    job = build_job(_cfg(tmp_path, "strategy.clients_per_round=2", "strategy.name=scaffold"))
    record = run_round(job, RoundState(round=0, global_params=job.initial_params))
    one = payload_bytes(job.initial_params)
    assert 2 * one * 2 * 0.95 < record["bytes_up"] < 2 * one * 2 * 1.05


def test_training_improves_accuracy(tmp_path):
    cfg = _cfg(tmp_path, "rounds=6", "data.partition=iid")
    summary = execute(cfg, run_dir=prepare_run_dir(cfg, overwrite=False))
    records = _records(tmp_path / cfg.run_name)
    assert records[-1]["test_accuracy"] > records[0]["test_accuracy"] + 0.2
    assert summary["final"]["test_accuracy"] == records[-1]["test_accuracy"]
    assert (
        0 <= summary["final"]["client_accuracy_worst10"] <= summary["final"]["client_accuracy_mean"]
    )
    for name in (
        "config.toml",
        "summary.json",
        "curves.png",
        "adapter.safetensors",
        "README.md",
        "checkpoint.safetensors",
    ):
        assert (tmp_path / cfg.run_name / name).stat().st_size > 0
