"""The no-federation references: ``local`` (each client alone) and ``centralized`` (pooled)."""

import numpy as np
import pytest
import torch
from rich.console import Console

from fedfm.config import StrategyConfig, load_config
from fedfm.data.federation import ClientData, Federation
from fedfm.report.metrics import read_records
from fedfm.runtime.checkpoint import load_checkpoint
from fedfm.runtime.job import build_job
from fedfm.runtime.run import execute, prepare_run_dir, resume_config
from fedfm.runtime.simulation import RoundState, evaluate_clients, run_round
from fedfm.runtime.transports import in_process
from fedfm.strategies import STRATEGIES, Update
from fedfm.strategies.baselines import Centralized, LocalOnly

FAST = [
    "data.dataset=digits",
    "model.name=mlp",
    "adapter.method=full",
    "data.num_clients=4",
    "strategy.fraction=1.0",
    "client.lr=0.05",
    "client.optimizer=sgd",
]


def _cfg(tmp_path, *extra):
    return load_config(None, [*FAST, f"output_dir={tmp_path}", *extra])


def _records(run_dir):
    return read_records(run_dir / "metrics.jsonl")


def _clone(params):
    return {k: v.detach().clone() for k, v in params.items()}


def _quiet():
    return Console(quiet=True)


def _equal(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- unit: LocalOnly
def test_registered_with_their_flags():
    assert STRATEGIES.get("local") is LocalOnly
    assert STRATEGIES.get("centralized") is Centralized
    assert (LocalOnly.communicates, LocalOnly.personalized, LocalOnly.pooled) == (
        False,
        True,
        False,
    )
    assert (Centralized.communicates, Centralized.personalized, Centralized.pooled) == (
        False,
        False,
        True,
    )


def test_local_aggregate_returns_global_unchanged():
    s = LocalOnly(StrategyConfig())
    g = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor(0.5)}
    before = _clone(g)
    updates = [
        Update(0, {"w": torch.tensor([5.0, 5.0]), "b": torch.tensor(1.0)}, 10),
        Update(1, {"w": torch.tensor([-3.0, 1.0]), "b": torch.tensor(-2.0)}, 3),
    ]
    out = s.aggregate(1, g, updates[0].delta, updates)
    assert _equal(out, before)
    assert _equal(g, before)  # not mutated either


def test_local_client_start_and_personal_params_prefer_the_client_state():
    s = LocalOnly(StrategyConfig())
    g = {"w": torch.zeros(2)}
    own = {"w": torch.ones(2)}
    assert s.client_start(g, own) is own
    assert s.personal_params(g, own) is own
    assert s.client_start(g, {}) is g
    assert s.personal_params(g, {}) is g


def test_local_client_finish_keeps_a_copy_of_new_params_as_state_and_uploads_nothing():
    """The trained params may be the model's live tensors, which the next client
    overwrites: the state keeps copies."""
    s = LocalOnly(StrategyConfig())
    g, new = {"w": torch.zeros(2)}, {"w": torch.full((2,), 3.0)}
    extras, state = s.client_finish(g, new, {}, {}, steps=1, lr=0.1)
    assert extras == {}
    new["w"].fill_(-1.0)  # the next client's set_params
    assert torch.equal(state["w"], torch.full((2,), 3.0))


def test_default_strategy_hooks_use_global_params():
    s = STRATEGIES.get("fedavg")(StrategyConfig())
    g, own = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    assert s.client_start(g, own) is g
    assert s.personal_params(g, own) is g
    assert (s.communicates, s.pooled, s.personalized) == (True, False, False)


# --------------------------------------------------------------------------- Federation.pooled
def test_pooled_holds_the_sorted_union_of_all_clients():
    fed = Federation(
        clients=(
            ClientData(0, "a", train=np.array([5, 1, 9]), eval=np.array([3])),
            ClientData(1, "b", train=np.array([0, 7]), eval=np.array([8, 2])),
            ClientData(2, "c", train=np.array([4]), eval=np.array([], dtype=np.int64)),
        )
    )
    pooled = fed.pooled()
    assert pooled.id == len(fed) == 3
    np.testing.assert_array_equal(pooled.train, [0, 1, 4, 5, 7, 9])
    np.testing.assert_array_equal(pooled.eval, [2, 3, 8])
    assert pooled.num_examples == sum(c.num_examples for c in fed.clients)


def test_pooled_on_a_real_federation(tmp_path):
    job = build_job(_cfg(tmp_path))
    fed = job.federation
    pooled = fed.pooled()
    assert pooled.id == len(fed)
    all_train = np.concatenate([c.train for c in fed.clients])
    all_eval = np.concatenate([c.eval for c in fed.clients])
    np.testing.assert_array_equal(pooled.train, np.sort(all_train))
    np.testing.assert_array_equal(pooled.eval, np.sort(all_eval))
    assert np.all(np.diff(pooled.train) > 0)  # sorted, and clients are disjoint
    assert not set(pooled.train.tolist()) & set(pooled.eval.tolist())


# --------------------------------------------------------------------------- local, end to end
def test_local_run_sends_nothing_and_is_evaluated_per_client(tmp_path):
    cfg = _cfg(tmp_path, "strategy.name=local", "rounds=2", "name=local")
    run_dir = prepare_run_dir(cfg, overwrite=False)
    summary = execute(cfg, run_dir=run_dir, console=_quiet())
    records = _records(run_dir)
    assert [r["round"] for r in records] == [1, 2]
    for r in records:
        assert r["cum_bytes"] == r["full_model_cum_bytes"] == 0
        assert r["bytes_down"] == r["bytes_up"] == 0
        assert "client_accuracy_mean" in r and "client_accuracy_worst10" in r
        assert not any(k.startswith("test_") for k in r)
        assert 0 <= r["client_accuracy_worst10"] <= r["client_accuracy_mean"] <= 1
    assert summary["total_bytes"] == summary["full_model_total_bytes"] == 0
    assert summary["final"]["client_accuracy_mean"] == records[-1]["client_accuracy_mean"]
    assert summary["best_client_accuracy_mean"] == max(r["client_accuracy_mean"] for r in records)

    ckpt = load_checkpoint(run_dir)
    assert sorted(ckpt.client_states) == list(range(4))
    states = [ckpt.client_states[c] for c in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not _equal(states[i], states[j])


def test_local_round_two_starts_from_each_clients_round_one_params(tmp_path, monkeypatch):
    job = build_job(_cfg(tmp_path, "strategy.name=local", "rounds=2"))
    state = RoundState(round=0, global_params=job.initial_params)
    initial = _clone(job.initial_params)
    starts: dict[tuple[int, int], dict] = {}
    current = {"round": 1, "client": -1}
    deltas: dict[tuple[int, int], dict] = {}
    real_start, real_fit = job.strategy.client_start, in_process.fit_client

    def fit(job, client, global_params, payload, state, round_, **kwargs):
        current.update(round=round_, client=client.id)
        outcome = real_fit(job, client, global_params, payload, state, round_, **kwargs)
        deltas[(round_, client.id)] = _clone(outcome.update.delta)
        return outcome

    def client_start(global_params, client_state):
        out = real_start(global_params, client_state)
        starts[(current["round"], current["client"])] = _clone(out)
        return out

    monkeypatch.setattr(in_process, "fit_client", fit)
    monkeypatch.setattr(job.strategy, "client_start", client_start)

    run_round(job, state)
    after_one = {cid: _clone(p) for cid, p in state.client_states.items()}
    assert sorted(after_one) == [0, 1, 2, 3]
    assert _equal(state.global_params, initial)  # the server never moves
    for cid in range(4):
        assert _equal(starts[(1, cid)], initial)  # round 1: everyone from the initial model
        # the client's state is its own trained params: start + its delta
        for k in initial:
            torch.testing.assert_close(after_one[cid][k], initial[k] + deltas[(1, cid)][k])

    record = run_round(job, state)
    assert record["round"] == 2
    for cid in range(4):
        assert _equal(starts[(2, cid)], after_one[cid])  # round 2: from its own round-1 params
        assert not _equal(starts[(2, cid)], initial)
        for k in initial:
            torch.testing.assert_close(
                state.client_states[cid][k], after_one[cid][k] + deltas[(2, cid)][k]
            )


def test_local_client_metric_uses_each_clients_own_params(tmp_path):
    job = build_job(_cfg(tmp_path, "strategy.name=local"))
    state = RoundState(round=0, global_params=job.initial_params)
    record = run_round(job, state)
    personal = evaluate_clients(job, state.global_params, state.client_states)
    assert record["client_accuracy_mean"] == personal["client_accuracy_mean"]
    # evaluated with the (untrained) global params instead, the clients score differently
    shared = evaluate_clients(job, state.global_params)
    assert shared["client_accuracy_mean"] != personal["client_accuracy_mean"]


def test_local_with_partial_cohort_keeps_states_of_selected_clients_only(tmp_path):
    job = build_job(_cfg(tmp_path, "strategy.name=local", "strategy.clients_per_round=2"))
    state = RoundState(round=0, global_params=job.initial_params)
    record = run_round(job, state)
    assert sorted(state.client_states) == record["cohort"]
    assert len(record["cohort"]) == 2
    assert record["cum_bytes"] == 0


# --------------------------------------------------------------------------- centralized
def test_centralized_trains_one_pooled_update_per_round(tmp_path, monkeypatch):
    job = build_job(_cfg(tmp_path, "strategy.name=centralized", "strategy.fraction=0.5"))
    total = sum(c.num_examples for c in job.federation.clients)
    seen = []
    real_fit = in_process.fit_client

    def fit(job, client, *args, **kwargs):
        outcome = real_fit(job, client, *args, **kwargs)
        seen.append((client.id, client.name, outcome.update.num_examples))
        return outcome

    monkeypatch.setattr(in_process, "fit_client", fit)
    state = RoundState(round=0, global_params=job.initial_params)
    for round_ in (1, 2):
        record = run_round(job, state)
        assert seen[-1] == (len(job.federation), "pooled", total)
        assert len(seen) == round_  # exactly one update per round
        assert record["num_examples"] == total
        assert record["bytes_down"] == record["bytes_up"] == 0
        assert record["cum_bytes"] == record["full_model_cum_bytes"] == 0
        assert "update_cosine" not in record  # one update: no pairs
        assert 0 <= record["test_accuracy"] <= 1
    assert not _equal(state.global_params, job.initial_params)  # the model did train
    assert state.client_states == {}


def test_centralized_run_end_to_end(tmp_path):
    cfg = _cfg(tmp_path, "strategy.name=centralized", "rounds=2", "name=central")
    run_dir = prepare_run_dir(cfg, overwrite=False)
    summary = execute(cfg, run_dir=run_dir, console=_quiet())
    records = _records(run_dir)
    assert [r["round"] for r in records] == [1, 2]
    assert all("test_accuracy" in r for r in records)
    assert summary["total_bytes"] == summary["full_model_total_bytes"] == 0
    assert summary["final"]["test_accuracy"] == records[-1]["test_accuracy"]


@pytest.mark.parametrize("name", ["local", "centralized"])
def test_baselines_with_initial_eval(tmp_path, name):
    cfg = _cfg(tmp_path, f"strategy.name={name}", "rounds=1", "eval.initial=true", f"name={name}")
    run_dir = prepare_run_dir(cfg, overwrite=False)
    execute(cfg, run_dir=run_dir, console=_quiet())
    first = _records(run_dir)[0]
    assert first["round"] == 0 and first["cum_bytes"] == 0
    if name == "local":
        assert "client_accuracy_mean" in first and "test_accuracy" not in first
    else:
        assert "test_accuracy" in first


@pytest.mark.parametrize("name", ["local", "centralized"])
def test_baselines_resume_to_the_same_records(tmp_path, name):
    overrides = [f"strategy.name={name}", "rounds=3", "checkpoint.every=1"]
    full_cfg = _cfg(tmp_path, *overrides, "name=full")
    full = execute(full_cfg, run_dir=prepare_run_dir(full_cfg, overwrite=False), console=_quiet())
    cut_cfg = _cfg(tmp_path, *overrides, "name=cut")
    cut_dir = prepare_run_dir(cut_cfg, overwrite=False)
    assert execute(cut_cfg, run_dir=cut_dir, stop_after=1, console=_quiet()) == {"stopped_after": 1}
    resumed = execute(resume_config(cut_dir, []), run_dir=cut_dir, resume=True, console=_quiet())
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(_records(cut_dir)) == strip(_records(tmp_path / "full"))
    assert resumed["final"] == full["final"]
