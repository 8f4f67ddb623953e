"""Asynchronous rounds (FedBuff): the staleness weights, the event order of the buffer, the
exact reduction to FedAvg, stale updates under skewed speeds, LoRA and FFA-LoRA, the
refusals, resume, and the comparison against the simulated clock (digits + MLP: fast)."""

import json

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from fedfm.config import load_config
from fedfm.errors import ConfigError, FedFMError
from fedfm.features.asynchronous import SCHEDULES as FEATURE_SCHEDULES
from fedfm.privacy.accountant import epsilon
from fedfm.privacy.dpsgd import client_epsilon
from fedfm.report.compare import CLOCK_PLOT, compare_runs
from fedfm.report.metrics import read_records
from fedfm.report.plots import SIMULATED_AXIS, clock_axis
from fedfm.runtime import asynchronous
from fedfm.runtime.checkpoint import load_checkpoint
from fedfm.runtime.fedbuff import SCHEDULES, FedBuffServer, draw_clients, staleness_weight
from fedfm.runtime.job import build_job
from fedfm.runtime.run import execute, prepare_run_dir, resume_config, round_line
from fedfm.runtime.simulation import RoundState, Transport
from fedfm.runtime.transports import in_process
from fedfm.strategies.aggregate import weighted_average
from fedfm.strategies.base import Strategy

FAST = [
    "data.dataset=digits",
    "model.name=mlp",
    "adapter.method=full",
    "data.num_clients=8",
    "client.lr=0.05",
    "client.optimizer=sgd",
    "strategy.fraction=0.5",
    "system.speeds=[1.0, 0.25]",  # a skewed speed profile: a slow client takes 4x as long
    "checkpoint.every=0",
]
ASYNC = ["asynchronous.enabled=true", "asynchronous.buffer=2", "asynchronous.concurrency=4"]
LORA = ["adapter.method=lora", 'adapter.target_modules=["hidden"]', "adapter.rank=4"]
QUIET = Console(quiet=True)


def _cfg(tmp_path, *extra):
    return load_config(None, [*FAST, f"output_dir={tmp_path}", *extra])


def _run(tmp_path, name, *extra):
    cfg = _cfg(tmp_path, f"name={name}", *extra)
    summary = execute(cfg, run_dir=prepare_run_dir(cfg, overwrite=False), console=QUIET, plot=False)
    return summary, read_records(tmp_path / name / "metrics.jsonl")


def _params(tmp_path, name):
    return load_file(tmp_path / name / "adapter.safetensors")


# ---------------------------------------------------------------- the pure parts


@pytest.mark.parametrize(
    ("tau", "schedule", "a", "b", "expected"),
    [
        (0, "constant", 0.5, 4, 1.0),
        (7, "constant", 0.5, 4, 1.0),
        (0, "polynomial", 0.5, 4, 1.0),
        (3, "polynomial", 0.5, 4, 0.5),  # 1 / sqrt(4)
        (1, "polynomial", 1.0, 4, 0.5),  # 1 / 2
        (7, "polynomial", 2.0, 4, 1 / 64),  # 1 / 8^2
        (0, "hinge", 10.0, 4, 1.0),
        (4, "hinge", 10.0, 4, 1.0),  # up to b: full weight
        (5, "hinge", 10.0, 4, 1 / 11),  # 1 / (10 * 1 + 1)
        (6, "hinge", 1.0, 4, 1 / 3),  # 1 / (1 * 2 + 1)
        (2, "hinge", 0.5, 0, 0.5),  # 1 / (0.5 * 2 + 1)
    ],
)
def test_staleness_weights_match_the_hand_computation(tau, schedule, a, b, expected):
    assert staleness_weight(tau, schedule, a, b) == pytest.approx(expected, rel=1e-12)


def test_staleness_weights_refuse_what_they_cannot_weigh():
    assert FEATURE_SCHEDULES == SCHEDULES  # the config check and the maths name the same
    with pytest.raises(ValueError, match="future version"):
        staleness_weight(-1, "polynomial")
    with pytest.raises(ValueError, match="not one of"):
        staleness_weight(1, "linear")


def test_a_fast_client_arrives_before_a_slow_one_and_staleness_counts_server_steps():
    server = FedBuffServer[str](size=2)
    server.dispatch(client=5, duration=4.0, payload="slow")  # ticket 0
    server.dispatch(client=1, duration=1.0, payload="fast")  # ticket 1
    server.dispatch(client=3, duration=1.0, payload="fast too")  # ticket 2: a tie at 1.0
    first, second = server.pop(), server.pop()
    assert [first.flight.payload, second.flight.payload] == ["fast", "fast too"]
    assert (first.time, first.staleness, server.clock) == (1.0, 0, 1.0)
    server.hold(second)
    server.hold(first)
    assert server.full
    assert [a.flight.client for a in server.flush()] == [1, 3]  # applied in dispatch order
    assert server.version == 1 and server.buffer == []
    server.dispatch(client=1, duration=5.0, payload="again")  # from version 1, at time 1.0
    slow = server.pop()
    assert (slow.flight.payload, slow.staleness, slow.time) == ("slow", 1, 4.0)
    again = server.pop()
    assert (again.flight.payload, again.staleness, again.time) == ("again", 0, 6.0)
    with pytest.raises(IndexError):
        server.pop()


def test_the_first_draw_is_the_synchronous_cohort():
    class Plain(Strategy):
        def aggregate(self, round_, global_params, mean, updates):
            return global_params

    strategy = Plain(load_config(None, ["strategy.clients_per_round=5"]).strategy)
    for version in range(4):
        expected = strategy.select(version + 1, 12, seed=3)
        assert draw_clients(list(range(12)), 5, seed=3, version=version) == expected
    assert set(draw_clients([2, 7, 9], 2, seed=0, version=0)) <= {2, 7, 9}


# ---------------------------------------------------------------- runs


@pytest.mark.parametrize("extra", [[], ['strategy.personal=["head"]']], ids=["", "personal"])
def test_without_staleness_fedbuff_is_fedavg_bit_for_bit(tmp_path, extra):
    """K = concurrency = the cohort: every update is 0 steps stale, whatever the speeds, and
    every step's clients are the synchronous round's cohort (with a personal head too: each
    client's own copy kept when its update arrives)."""
    sync, sync_records = _run(tmp_path, "sync", "rounds=3", *extra)
    fedbuff, async_records = _run(
        tmp_path,
        "fedbuff",
        "rounds=3",
        "asynchronous.enabled=true",
        "asynchronous.staleness=hinge",
        *extra,
    )
    files = sorted((tmp_path / "sync").glob("clients/*.safetensors")) or [None]  # personal
    for file in files:  # each client's own params, or the one global model
        name = "adapter.safetensors" if file is None else f"clients/{file.name}"
        a = load_file(tmp_path / "sync" / name)
        b = load_file(tmp_path / "fedbuff" / name)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert fedbuff["final"] == sync["final"]
    for s, r in zip(sync_records, async_records, strict=True):
        assert sorted(r["cohort"]) == s["cohort"]
        assert r["staleness"] == [0, 0, 0, 0]
        for key in ("bytes_down", "bytes_up", "cum_bytes", "sim_clock", "train_loss"):
            assert r[key] == s[key], key


def test_skewed_speeds_give_stale_updates_weighted_as_documented(tmp_path, monkeypatch):
    """Polynomial a = 1: each delta enters the example-weighted mean multiplied by 1/(1+τ)."""
    cfg = _cfg(tmp_path, *ASYNC, "asynchronous.staleness=polynomial", "asynchronous.staleness_a=1")
    job = build_job(cfg)
    raw, reduced = {}, []
    real_fit, real_reduce = in_process.fit_client, job.pipeline.reduce

    def fit(job, client, global_params, payload, state, round_, **kw):
        outcome = real_fit(job, client, global_params, payload, state, round_, **kw)
        raw[(client.id, round_)] = outcome.update  # round_ = the start version + 1
        return outcome

    def reduce(round_, updates):
        reduced.append(list(updates))
        return real_reduce(round_, updates)

    monkeypatch.setattr(in_process, "fit_client", fit)
    monkeypatch.setattr(job.pipeline, "reduce", reduce)
    state = RoundState(round=0, global_params=job.initial_params)
    records, stale_seen = [], 0
    for _ in range(6):
        before = state.global_params
        record = asynchronous.run_async_round(job, state)
        records.append(record)
        updates = reduced[-1]
        assert len(updates) == 2 and len(record["staleness"]) == 2  # K = 2 per step
        assert record["staleness_max"] == max(record["staleness"])
        for update, tau in zip(updates, record["staleness"], strict=True):
            original = raw[(update.client_id, record["round"] - tau)]
            for k, v in original.delta.items():
                torch.testing.assert_close(update.delta[k], v * (1.0 / (1 + tau)))
            stale_seen += tau > 0
        mean = weighted_average([u.delta for u in updates], [u.num_examples for u in updates])
        for k in before:
            torch.testing.assert_close(state.global_params[k], before[k] + mean[k])
    assert stale_seen > 0  # the slow clients' updates arrive after a server step
    clock = [r["sim_clock"] for r in records]
    assert clock == sorted(clock) and clock[-1] > clock[0]
    assert [r["round"] for r in records] == [1, 2, 3, 4, 5, 6]


def test_a_run_records_staleness_and_the_clock(tmp_path):
    summary, records = _run(tmp_path, "skewed", "rounds=4", *ASYNC)
    assert any(r["staleness_max"] > 0 for r in records)
    clock = [r["sim_clock"] for r in records]
    assert all(b > a for a, b in zip(clock, clock[1:], strict=False))
    assert all(len(r["staleness"]) == 2 and len(r["cohort"]) == 2 for r in records)
    for previous, r in zip([0.0, *clock], records, strict=False):  # each update's own time
        assert len(r["arrived_at"]) == 2 and max(r["arrived_at"]) == r["sim_clock"]
        assert all(previous <= t <= r["sim_clock"] for t in r["arrived_at"])
    assert summary["asynchronous_updates"] == 8 and summary["sim_clock"] == clock[-1]
    assert all("test_accuracy" in r for r in records)


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["adapter.freeze_a=true"],  # FFA-LoRA
        # HetLoRA padding, compression with error feedback and a norm bound in the chain
        [
            "system.ranks=[2, 4]",
            "compression.method=topk",
            "compression.fraction=0.5",
            "robust.norm_bound=1.0",
        ],
    ],
    ids=["lora", "ffa-lora", "ranks-topk-bound"],
)
def test_lora_and_the_update_chain_run_asynchronously(tmp_path, extra):
    summary, records = _run(tmp_path, "lora", "rounds=3", *ASYNC, *LORA, *extra)
    assert summary["rounds_completed"] == 3
    assert any(r["staleness_max"] > 0 for r in records)
    last = records[-1]
    line = f"staleness ≤ {last['staleness_max']}  clock {last['sim_clock']:.1f}"
    assert line in round_line(last, 3)  # the console says how stale, and when
    params = _params(tmp_path, "lora")
    initial = build_job(_cfg(tmp_path, *ASYNC, *LORA, *extra)).initial_params
    b_names = [k for k in initial if "lora_B" in k]
    a_names = [k for k in initial if "lora_A" in k]
    assert b_names and all(not torch.equal(params[k], initial[k]) for k in b_names)
    if "adapter.freeze_a=true" in extra:  # FFA-LoRA: A is frozen, so it neither trains nor travels
        assert a_names == []
    else:
        assert a_names and all(not torch.equal(params[k], initial[k]) for k in a_names)


def test_a_personal_head_stays_with_each_client_through_stale_steps(tmp_path):
    summary, records = _run(tmp_path, "personal", "rounds=4", *ASYNC, 'strategy.personal=["head"]')
    assert summary["rounds_completed"] == 4 and any(r["staleness_max"] > 0 for r in records)
    arrived = {c for r in records for c in r["cohort"]}
    saved = {int(p.stem) for p in (tmp_path / "personal" / "clients").glob("*.safetensors")}
    assert arrived <= saved
    initial = build_job(_cfg(tmp_path, *ASYNC)).initial_params["classifier.weight"]
    heads = [load_file(tmp_path / "personal" / "clients" / f"{c}.safetensors") for c in arrived]
    assert all(not torch.equal(h["classifier.weight"], initial) for h in heads)  # each trained
    weights = [h["classifier.weight"] for h in heads]
    assert all(not torch.equal(a, b) for i, a in enumerate(weights) for b in weights[i + 1 :])


def test_a_failing_client_is_recorded_when_it_would_arrive_and_replaced(tmp_path, monkeypatch):
    job = build_job(_cfg(tmp_path, *ASYNC))
    real_fit = in_process.fit_client
    victim = draw_clients(list(range(8)), 4, seed=0, version=0)[0]

    def fit(job, client, *args, **kwargs):
        if client.id == victim:
            raise RuntimeError("out of memory on this client")
        return real_fit(job, client, *args, **kwargs)

    monkeypatch.setattr(in_process, "fit_client", fit)
    state = RoundState(round=0, global_params=job.initial_params)
    records = [asynchronous.run_async_round(job, state) for _ in range(4)]
    excluded = [e for r in records for e in r["excluded"]]
    assert {"client": victim, "reason": "RuntimeError: out of memory on this client"} in excluded
    for r in records:  # the failure arrives (and is replaced) but is never applied
        assert len(r["staleness"]) == len(r["cohort"]) - len(r["excluded"])
    assert all(len(r["staleness"]) == 2 for r in records)  # K valid updates still fill a step


def test_clients_left_out_by_their_rank_are_never_dispatched(tmp_path):
    job = build_job(_cfg(tmp_path, *ASYNC, *LORA, "system.ranks=[2, 4]", "system.min_rank=4"))
    profiles = job.feature("system").profiles
    weak = {c for c, p in enumerate(profiles) if p.rank < 4}
    assert weak and set(job.feature("asynchronous").eligible) == set(range(8)) - weak
    state = RoundState(round=0, global_params=job.initial_params)
    for _ in range(3):
        record = asynchronous.run_async_round(job, state)
        assert not weak & set(record["cohort"]) and record["excluded"] == []


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("privacy.noise=distributed", "privacy.noise"),
        ("privacy.adaptive_clip=true", "privacy.adaptive_clip"),
        ("secagg.enabled=true", "secagg.enabled"),
        ("system.deadline=10", "system.deadline"),
        ("simulation.parallel_clients=2", "simulation.parallel_clients"),
        ("distill.enabled=true", "distill.enabled"),
        ("asynchronous.staleness=linear", "asynchronous.staleness"),
        ("asynchronous.buffer=5", "asynchronous.buffer = 5 > asynchronous.concurrency = 4"),
        ("asynchronous.staleness_a=-1", "asynchronous.staleness_a"),
    ],
)
def test_what_async_cannot_serve_is_refused_in_the_config(setting, named):
    with pytest.raises(ConfigError) as err:
        load_config(None, [*FAST, *ASYNC, setting])
    assert named in str(err.value)


def test_client_dp_under_fedbuff_is_accounted_without_amplification_by_sampling(tmp_path):
    dp = ["privacy.noise=central", "privacy.noise_multiplier=1.0", "privacy.clip=0.5"]
    summary, records = _run(tmp_path, "dp", "rounds=4", *ASYNC, *dp)
    # every step a Gaussian mechanism at sample rate 1: a client is in at most one update
    # of a step, and whether it arrives is not sampled uniformly, so no amplification is taken
    for r in records:
        assert r["epsilon"] == pytest.approx(epsilon(1.0, 1.0, r["round"], 1e-5))
        assert r["dp_noise_std"] == pytest.approx(1.0 * 0.5 / 2)  # z * C over K = 2
        assert r["update_norm_max"] <= 0.5 + 1e-6  # clipped, then weighted by s(τ) <= 1
    assert summary["sample_rate"] == 1.0 and summary["epsilon"] == records[-1]["epsilon"]
    assert any(r["staleness_max"] > 0 for r in records)
    lines = (tmp_path / "dp" / "privacy_ledger.jsonl").read_text().splitlines()
    assert [json.loads(x)["sample_rate"] for x in lines] == [1.0] * 4
    # the price, as docs/async.md quotes it: 10 steps at z = 1 against 10 rounds at rate 0.1
    assert epsilon(1.0, 1.0, 10, 1e-5) == pytest.approx(19.05, abs=0.01)
    assert epsilon(1.0, 0.1, 10, 1e-5) == pytest.approx(3.44, abs=0.01)


def test_dp_sgd_under_fedbuff_counts_the_steps_of_updates_that_arrived(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, *ASYNC, "dpsgd.enabled=true", "dpsgd.noise_multiplier=0.8")
    job = build_job(cfg)
    per_visit: dict[int, int] = {}
    trained: list[int] = []
    real_fit = in_process.fit_client

    def fit(job, client, *args, **kwargs):
        outcome = real_fit(job, client, *args, **kwargs)
        per_visit[client.id] = int(outcome.update.metrics["steps"])
        trained.append(client.id)
        return outcome

    monkeypatch.setattr(in_process, "fit_client", fit)
    state = RoundState(round=0, global_params=job.initial_params)
    arrived: dict[int, int] = {}
    for _ in range(4):
        record = asynchronous.run_async_round(job, state)
        for cid in record["cohort"]:
            arrived[cid] = arrived.get(cid, 0) + 1
        # a release costs privacy: the steps of clients still in flight are not counted yet
        spent = {cid: n * per_visit[cid] for cid, n in arrived.items()}
        assert job.feature("dpsgd").steps == spent
        worst = max(
            client_epsilon(
                cfg.dpsgd,
                batch_size=cfg.client.batch_size,
                examples=job.federation[cid].num_examples,
                steps=n,
            )
            for cid, n in spent.items()
        )
        assert record["dpsgd_epsilon_max"] == pytest.approx(worst)
    assert len(trained) > sum(arrived.values())  # updates trained, still in flight, not spent


@pytest.mark.parametrize("strategy", ["scaffold", "flora", "local", "centralized"])
def test_strategies_that_need_more_than_the_mean_are_refused_by_capability(tmp_path, strategy):
    extra = LORA if strategy == "flora" else []
    with pytest.raises(ConfigError, match=f"strategy.name = '{strategy}', which"):
        build_job(_cfg(tmp_path, *ASYNC, *extra, f"strategy.name={strategy}"))


def test_another_transport_is_refused(tmp_path):
    job = build_job(_cfg(tmp_path, *ASYNC))
    state = RoundState(round=0, global_params=job.initial_params)
    with pytest.raises(FedFMError, match="implements no launch/arrival"):
        asynchronous.run_async_round(job, state, transport=Transport())


def test_a_resumed_run_equals_the_uninterrupted_one(tmp_path):
    """Checkpointed after step 2 with clients (and their error-feedback state) in flight."""
    extra = [
        *ASYNC,
        "rounds=4",
        "checkpoint.every=2",
        "compression.method=topk",
        "compression.fraction=0.5",
    ]
    _run(tmp_path, "full", *extra)
    cfg = _cfg(tmp_path, "name=cut", *extra)
    cut = prepare_run_dir(cfg, overwrite=False)
    assert execute(cfg, run_dir=cut, stop_after=3, console=QUIET) == {"stopped_after": 3}
    saved = load_checkpoint(cut)  # after step 2: two clients in flight, with their updates
    assert saved.round == 2 and len(saved.features["asynchronous"]["server"]["in_flight"]) == 2
    assert any("/delta/" in k for k in saved.feature_tensors["asynchronous"])
    assert any("/pipeline/" in k for k in saved.feature_tensors["asynchronous"])  # residuals
    execute(resume_config(cut, []), run_dir=cut, resume=True, console=QUIET, plot=False)
    a, b = _params(tmp_path, "full"), _params(tmp_path, "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    full_records = read_records(tmp_path / "full" / "metrics.jsonl")
    assert strip(read_records(cut / "metrics.jsonl")) == strip(full_records)
    assert any(r["staleness_max"] > 0 for r in full_records[2:])


def test_a_synchronous_run_keeps_its_clock_across_a_resume(tmp_path, full_and_resumed):
    """A synchronous round lasts as long as its slowest client, or the deadline when a
    straggler is dropped; the clock is the system feature's state, so a resume goes on."""
    overrides = [*FAST, f"output_dir={tmp_path}", "rounds=3", "checkpoint.every=1"]
    overrides += ["system.deadline=20"]
    _, _, cut = full_and_resumed(overrides, 2)
    full_records = read_records(tmp_path / "full" / "metrics.jsonl")
    assert [r["sim_clock"] for r in read_records(cut / "metrics.jsonl")] == [
        r["sim_clock"] for r in full_records
    ]
    assert [r["sim_clock"] for r in full_records] == [20.0, 40.0, 60.0]  # slow ones dropped
    assert all(r["stragglers"] for r in full_records)


def test_the_comparison_plots_accuracy_against_the_simulated_clock(tmp_path):
    _, sync = _run(tmp_path, "sync", "rounds=2")
    _, fedbuff = _run(tmp_path, "fedbuff", "rounds=2", *ASYNC)
    assert clock_axis({"sync": sync, "fedbuff": fedbuff}) == SIMULATED_AXIS
    _, md = compare_runs([tmp_path / "sync", tmp_path / "fedbuff"], tmp_path / "report")
    assert (tmp_path / "report" / CLOCK_PLOT).stat().st_size > 1000
    assert CLOCK_PLOT in md.read_text()
    _run(tmp_path, "unclocked", "rounds=1", "system.speeds=[]")  # no simulated clock
    _, md = compare_runs([tmp_path / "sync", tmp_path / "unclocked"], tmp_path / "mixed")
    assert not (tmp_path / "mixed" / CLOCK_PLOT).exists()
    assert CLOCK_PLOT not in md.read_text()
    record = json.loads((tmp_path / "unclocked" / "metrics.jsonl").read_text().splitlines()[0])
    assert "sim_clock" not in record
