"""Resource profiles in a run: heterogeneous LoRA ranks (HetLoRA padding, FlexLoRA's SVD),
leaving weak clients out, and a per-round deadline with stragglers dropped or cut short."""

import pytest
import torch

from fedfm.config import SystemConfig, load_config
from fedfm.errors import ConfigError
from fedfm.models.layers import frozen_below, layer_index
from fedfm.models.lora import lora_bytes_at_rank, lora_pairs, pad_rank
from fedfm.models.params import payload_bytes
from fedfm.runtime.job import build_job
from fedfm.runtime.profiles import sample_profiles, steps_within_deadline
from fedfm.runtime.simulation import RoundState, run_round
from fedfm.runtime.transports import in_process

LORA = [
    "data.dataset=digits",
    "model.name=mlp",
    "adapter.method=lora",
    'adapter.target_modules=["hidden"]',
    "adapter.rank=8",
    "adapter.alpha=16",
    "data.num_clients=8",
    "strategy.clients_per_round=8",
    "client.lr=0.01",
]


def _job(tmp_path, *extra):
    return build_job(load_config(None, [*LORA, f"output_dir={tmp_path}", *extra]))


def _spy(monkeypatch):
    seen = {}
    real_fit = in_process.fit_client

    def fit(job, client, global_params, payload, state, round_, **kw):
        outcome = real_fit(job, client, global_params, payload, state, round_, **kw)
        seen[client.id] = (kw, outcome.update)
        return outcome

    monkeypatch.setattr(in_process, "fit_client", fit)
    return seen


def test_profiles_are_seeded_and_drawn_from_the_lists():
    cfg = SystemConfig(ranks=(2, 4, 8), speeds=(0.5, 1.0))
    a, b = sample_profiles(50, cfg, seed=3), sample_profiles(50, cfg, seed=3)
    assert a == b and a != sample_profiles(50, cfg, seed=4)
    assert {p.rank for p in a} == {2, 4, 8} and {p.speed for p in a} == {0.5, 1.0}


@pytest.mark.parametrize(
    ("steps", "speed", "late", "expected"),
    [(8, 1.0, "drop", 8), (10, 0.5, "drop", 0), (10, 0.5, "partial", 4), (3, 0.1, "partial", 0)],
)
def test_steps_within_a_deadline_of_8(steps, speed, late, expected):
    assert steps_within_deadline(steps, speed, SystemConfig(deadline=8, late=late)) == expected


def test_low_rank_clients_train_and_send_only_their_components(tmp_path, monkeypatch):
    job = _job(tmp_path, "system.ranks=[2, 4, 8]")
    seen = _spy(monkeypatch)
    state = RoundState(round=0, global_params=job.initial_params)
    record = run_round(job, state)
    pair = lora_pairs(job.initial_params)[0]
    expected_up = 0
    for cid, (kw, update) in seen.items():
        rank = job.feature("system").profiles[cid].rank
        assert kw["rank"] == (rank if rank < 8 else 0)
        assert update.delta[pair.a][rank:].abs().sum() == 0  # nothing beyond its rank
        assert update.delta[pair.b][:, rank:].abs().sum() == 0
        assert update.delta[pair.b][:, :rank].abs().sum() > 0
        expected_up += payload_bytes(lora_bytes_at_rank(update.delta, rank))
    assert {job.feature("system").profiles[c].rank for c in seen} == {2, 4, 8}
    assert record["bytes_up"] == expected_up
    assert record["bytes_down"] == expected_up  # the same truncation travels down


def test_flexlora_is_the_svd_of_the_mean_of_truncated_client_products(tmp_path, monkeypatch):
    job = _job(tmp_path, "system.ranks=[2, 4]", "strategy.name=flora")
    seen = _spy(monkeypatch)
    state = RoundState(round=0, global_params=job.initial_params)
    g = job.initial_params
    run_round(job, state)
    pair = lora_pairs(g)[0]
    total = sum(u.num_examples for _, u in seen.values())
    mean = (
        sum(
            u.num_examples
            * (
                (g[pair.b] + u.delta[pair.b])[:, : u.rank].double()
                @ (g[pair.a] + u.delta[pair.a])[: u.rank].double()
            )
            for _, u in seen.values()
        )
        / total
    )
    s = torch.linalg.svdvals(mean)
    new = state.global_params[pair.b].double() @ state.global_params[pair.a].double()
    torch.testing.assert_close((new - mean).norm(), s[8:].norm(), rtol=1e-4, atol=1e-6)


def test_min_rank_leaves_weak_clients_out(tmp_path):
    job = _job(tmp_path, "system.ranks=[2, 8]", "system.min_rank=8")
    weak = {c for c, p in enumerate(job.feature("system").profiles) if p.rank < 8}
    assert weak and len(weak) < 8
    record = run_round(job, RoundState(round=0, global_params=job.initial_params))
    assert {e["client"] for e in record["excluded"]} == weak
    assert all("system.min_rank" in e["reason"] for e in record["excluded"])
    assert record["bytes_down"] == payload_bytes(job.initial_params) * (8 - len(weak))


@pytest.mark.parametrize("late", ["drop", "partial"])
def test_deadline_drops_or_cuts_short_the_slow_clients(tmp_path, monkeypatch, late):
    job = _job(
        tmp_path,
        "client.steps=4",  # fast clients: 4 / 1.0 <= 6; slow ones: 4 / 0.25 = 16 > 6
        "system.speeds=[0.25, 1.0]",
        "system.deadline=6",
        f"system.late={late}",
    )
    seen = _spy(monkeypatch)
    record = run_round(job, RoundState(round=0, global_params=job.initial_params))
    slow = {c for c, p in enumerate(job.feature("system").profiles) if p.speed == 0.25}
    assert slow and set(record["stragglers"]) == slow
    for cid in slow:
        if late == "drop":
            assert cid not in seen
        else:
            assert seen[cid][0]["steps"] == 1  # floor(6 * 0.25)
            assert seen[cid][1].metrics["steps"] == 1
    assert ({e["client"] for e in record["excluded"]} == slow) == (late == "drop")
    assert 0 < record["sim_time"] <= 6


def test_profile_steps_set_each_clients_local_work(tmp_path, monkeypatch):
    job = _job(tmp_path, "system.steps=[1, 3]")
    seen = _spy(monkeypatch)
    run_round(job, RoundState(round=0, global_params=job.initial_params))
    for cid, (kw, update) in seen.items():
        assert update.metrics["steps"] == job.feature("system").profiles[cid].steps == kw["steps"]
    assert {job.feature("system").profiles[c].steps for c in seen} == {1, 3}


def test_cut_and_padded_ranks_round_trip():
    params = {
        "m.q.lora_A.default.weight": torch.randn(8, 5),
        "m.q.lora_B.default.weight": torch.randn(7, 8),
        "head.weight": torch.randn(3, 7),
    }
    cut = lora_bytes_at_rank(params, 3)
    assert cut["m.q.lora_A.default.weight"].shape == (3, 5)
    back = pad_rank(cut, params)
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in params.items()}
    assert torch.equal(
        back["m.q.lora_A.default.weight"][:3], params["m.q.lora_A.default.weight"][:3]
    )
    assert back["m.q.lora_A.default.weight"][3:].abs().sum() == 0
    assert back["m.q.lora_B.default.weight"][:, 3:].abs().sum() == 0
    assert torch.equal(back["head.weight"], params["head.weight"])
    assert torch.equal(
        pad_rank(lora_bytes_at_rank(params, 8), params)["m.q.lora_B.default.weight"],
        params["m.q.lora_B.default.weight"],
    )


def test_system_config_errors():
    with pytest.raises(ConfigError, match="system.ranks = \\[16\\] must lie in \\[1, adapter"):
        load_config(None, ["system.ranks=[16]"])
    with pytest.raises(ConfigError, match="adapter.method = 'full'"):
        load_config(None, ["system.ranks=[2]", "adapter.method=full"])
    with pytest.raises(ConfigError, match="a frozen A keeps every component live"):
        load_config(None, ["system.ranks=[2]", "adapter.freeze_a=true"])
    with pytest.raises(ConfigError, match=r"system.steps = \[0\] must all be >= 1"):
        load_config(None, ["system.steps=[0]"])
    with pytest.raises(ConfigError, match="system.late = 'wait'"):
        load_config(None, ["system.late=wait"])


def test_frozen_below_keeps_the_top_layers_and_everything_outside_the_stack():
    names = [f"bert.encoder.layer.{i}.attention.self.query.lora_A.default.weight" for i in range(6)]
    names += ["classifier.weight", "bert.pooler.dense.bias"]
    frozen = frozen_below(names, 2)
    assert frozen == {names[i] for i in range(4)}
    assert frozen_below(names, 0) == frozen_below(names, 6) == frozenset()
    assert frozen_below(["hidden.weight", "classifier.weight"], 1) == frozenset()
    assert layer_index("model.layers.11.self_attn.q_proj.lora_B.default.weight") == 11


def test_clients_that_train_only_the_top_layers_send_only_those(tmp_path, monkeypatch):
    cfg = load_config(
        None,
        [
            "data.dataset=trec6",
            "model.name=minilm",
            "data.num_clients=4",
            "strategy.clients_per_round=4",
            "data.max_train_examples=96",
            "data.max_test_examples=16",
            "client.steps=2",
            "system.layers=[2, 6]",
            f"output_dir={tmp_path}",
        ],
    )
    job = build_job(cfg)
    seen = _spy(monkeypatch)
    record = run_round(job, RoundState(round=0, global_params=job.initial_params))
    layers = {c: job.feature("system").profiles[c].layers for c in seen}
    assert set(layers.values()) == {2, 6}
    for cid, (kw, update) in seen.items():
        assert kw["layers"] == layers[cid]
        for name, d in update.delta.items():
            index = layer_index(name)
            trains = index is None or index >= 6 - layers[cid]
            assert bool(d.abs().sum() > 0) == trains, name
    top = {k for k in job.initial_params if (i := layer_index(k)) is None or i >= 4}
    expected = sum(
        payload_bytes(
            job.initial_params if layers[c] == 6 else {k: job.initial_params[k] for k in top}
        )
        for c in seen
    )
    assert record["bytes_up"] == expected


@pytest.mark.parametrize("layers", [1, 0])
def test_a_top_layers_client_backpropagates_only_through_the_layers_it_trains(
    layers, tiny_model_dirs, tmp_path
):
    """Its frozen tensors stop requiring gradients while it trains, so layer 0's output
    needs none (backward stops above it); afterwards every trainable tensor requires them
    again, and the frozen ones have not moved."""
    overrides = [
        f"model.name={str(tiny_model_dirs['bert'])!r}",
        "data.dataset=trec6",
        "data.num_clients=2",
        "strategy.clients_per_round=2",
        "data.max_train_examples=32",
        "data.max_test_examples=8",
        "client.steps=2",
        "checkpoint.every=0",
        f"output_dir={tmp_path}",
    ]
    job = build_job(
        load_config(None, [*overrides, *([f"system.layers=[{layers}]"] * bool(layers))])
    )
    stack = job.model.base_model.model.bert.encoder.layer
    needs_grad = []
    hook = stack[0].register_forward_hook(
        lambda module, args, out: (
            needs_grad.append(out[0].requires_grad) if module.training else None
        )
    )
    state = RoundState(round=0, global_params=job.initial_params)
    run_round(job, state)
    hook.remove()
    assert needs_grad and set(needs_grad) == {not layers}
    trainable = [p for p in job.model.parameters() if p.requires_grad]
    assert len(trainable) == len(job.initial_params)
    for name in frozen_below(list(job.initial_params), layers):
        torch.testing.assert_close(state.global_params[name], job.initial_params[name])
