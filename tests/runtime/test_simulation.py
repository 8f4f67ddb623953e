"""The simulation on digits + MLP (fast): resume equality, exclusion of bad updates, bytes."""

import math

import pytest
import torch
from safetensors.torch import load_file

from fedfm.client.state import ClientState
from fedfm.config import load_config
from fedfm.models.params import payload_bytes
from fedfm.report.metrics import read_records
from fedfm.runtime import simulation
from fedfm.runtime.job import build_job
from fedfm.runtime.run import execute, prepare_run_dir, resume_config
from fedfm.runtime.simulation import RoundIntake, RoundState, run_round
from fedfm.runtime.transports import in_process
from fedfm.strategies.aggregate import EXACT_STATISTICS, update_statistics
from fedfm.strategies.base import Update

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


@pytest.mark.parametrize("strategy, value", [("fedavg", "nan"), ("scaffold", "-inf")])
def test_non_finite_update_is_excluded_and_round_goes_on(tmp_path, monkeypatch, strategy, value):
    job = build_job(_cfg(tmp_path, "strategy.clients_per_round=4", f"strategy.name={strategy}"))
    state = RoundState(round=0, global_params=job.initial_params)
    cohort = job.strategy.select(1, len(job.federation), seed=job.cfg.seed)
    poisoned = cohort[1]
    real_fit = in_process.fit_client
    deltas = {}

    def fit(job, client, *args, **kwargs):
        outcome = real_fit(job, client, *args, **kwargs)
        if client.id == poisoned:
            outcome.update.delta[next(iter(outcome.update.delta))][0] = float(value)
        deltas[client.id] = outcome.update.delta
        return outcome

    monkeypatch.setattr(in_process, "fit_client", fit)
    record = run_round(job, state)
    assert [e["client"] for e in record["excluded"]] == [poisoned]
    assert "non-finite" in record["excluded"][0]["reason"]
    assert all(torch.isfinite(t).all() for t in state.global_params.values())
    assert record["num_examples"] == sum(
        job.federation[c].num_examples for c in cohort if c != poisoned
    )
    # the record's statistics are the kept updates' own; the excluded client keeps no state
    norms, cosine = update_statistics([deltas[c] for c in cohort if c != poisoned])
    assert record["update_norm_max"] == max(norms) and record["update_cosine"] == cosine
    if strategy == "scaffold":
        assert sorted(state.client_states) == sorted(c for c in cohort if c != poisoned)


def test_screen_finds_non_finite_updates_by_their_norms_and_checks_only_those(monkeypatch):
    """NaN, Inf and non-finite extras are rejected in the order taken in, with their names;
    finite values whose float32 norm overflows (a streamed cohort) pass; the element-wise
    check runs only on the deltas whose norm is not finite, and on extras."""
    big = EXACT_STATISTICS  # one update this size streams its statistics in float32
    like = {"w": torch.zeros(big), "b": torch.zeros(2)}

    def update(cid, w=1.0, b=(0.0, 1.0), extras=None):
        delta = {"w": torch.full((big,), w), "b": torch.tensor(b)}
        return Update(cid, delta, num_examples=1, extras=extras or {})

    intake = RoundIntake()
    sent = [
        update(0),
        update(1, b=(float("nan"), 0.0)),
        update(2, w=-2.0),
        update(3, w=float("inf")),
        update(4, extras={"dc.w": torch.tensor([float("nan")])}),
        update(5, w=1e20),  # finite, but its float32 norm is Inf
    ]
    state = RoundState(round=0, global_params=like)
    for u in sent:
        outcome = simulation.ClientOutcome(u, ClientState(strategy={"c": torch.ones(1)}))
        simulation.receive(_NoFeatures(), state, intake, u.client_id, outcome)
    checked = []
    real = simulation.non_finite
    monkeypatch.setattr(
        simulation, "non_finite", lambda params: checked.append(params) or real(params)
    )
    simulation.screen(state, intake)

    assert intake.excluded == [
        {"client": 1, "reason": "non-finite values in ['b']"},
        {"client": 3, "reason": "non-finite values in ['w']"},
        {"client": 4, "reason": "non-finite values in ['dc.w']"},
    ]
    assert [u.client_id for u in intake.updates] == [0, 2, 5]
    assert sorted(state.client_states) == [0, 2, 5] and not intake.pending
    assert len(checked) == 4  # the deltas of clients 1, 3 and 5, client 4's extras
    norms, cosine = update_statistics([u.delta for u in intake.updates])
    assert intake.norms == norms and intake.cosine == cosine
    assert norms[:2] == pytest.approx([math.sqrt(big + 1), math.sqrt(4 * big + 1)], rel=1e-6)
    assert norms[2] == math.inf


class _NoFeatures:
    features = ()


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
