"""``simulation.parallel_clients``: a stack of clients on one backbone trains to the params that
one client after another reaches (float tolerance), on a tiny BERT classifier with dropout 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from tiny_models import make_tiny_model

from fedfm.config import load_config
from fedfm.errors import ConfigError
from fedfm.models.params import Params
from fedfm.runtime.job import build_job
from fedfm.runtime.simulation import RoundState, run_round
from fedfm.runtime.transports import TRANSPORTS
from fedfm.runtime.transports.parallel import Parallel

# float32 sums taken in another order (batched products, padded attention): ~1e-7 relative per
# step; after 2 rounds of a few AdamW steps the params agree to about 1e-6
ATOL = 1e-5

WORDS = ["what", "who", "when", "where", "why", "how", "capital", "river", "war", "play", "mile"]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT with dropout 0: the exactness this test checks holds only without dropout."""
    folder = make_tiny_model("bert", tmp_path_factory.mktemp("bert") / "bert")
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _overrides(tmp_path: Path, model: Path) -> list[str]:
    rows = tmp_path / "questions.jsonl"
    with rows.open("w") as f:
        for i in range(90):  # lengths 3..10 words: batches of different widths
            text = " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(3 + i % 8))
            f.write(json.dumps({"text": text, "label": ["a", "b", "c"][i % 3]}) + "\n")
    return [
        f"data.dataset={json.dumps(str(rows))}",
        f"model.name={json.dumps(str(model))}",
        "data.partition=quantity",  # unequal clients: unequal steps, short last batches
        "data.alpha=1.0",
        "data.num_clients=5",
        "data.max_length=16",
        "strategy.clients_per_round=5",
        "client.batch_size=4",
        "client.lr=0.01",
        "adapter.rank=4",
        "eval.every=100",
        f"output_dir={tmp_path / 'runs'}",
    ]


def _train(overrides: list[str], rounds: int = 2) -> tuple[Params, list[dict]]:
    job = build_job(load_config(None, overrides))
    state = RoundState(round=0, global_params=job.initial_params)
    with TRANSPORTS.get("simulation")(job, Path("."), Console(quiet=True)) as transport:
        if job.cfg.simulation.parallel_clients > 1:
            assert isinstance(transport, Parallel)
        records = [run_round(job, state, transport=transport) for _ in range(rounds)]
    return state.global_params, records


def _assert_same(a: Params, b: Params) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=ATOL, msg=k)


STRATEGIES = {
    "fedavg": ["strategy.name=fedavg", "client.max_grad_norm=0.5", "client.weight_decay=0.01"],
    "fedprox": ["strategy.name=fedprox", "strategy.proximal_mu=0.5"],
    "scaffold": ["strategy.name=scaffold", "client.optimizer=sgd", "client.lr=0.1"],
}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_a_stack_trains_to_the_sequential_params(tmp_path, bert, strategy):
    base = [*_overrides(tmp_path, bert), *STRATEGIES[strategy]]
    sequential, seq_records = _train(base)
    parallel, par_records = _train([*base, "simulation.parallel_clients=4"])
    _assert_same(sequential, parallel)
    for s, p in zip(seq_records, par_records, strict=True):
        assert s["cohort"] == p["cohort"] and s["excluded"] == p["excluded"] == []
        assert p["train_loss"] == pytest.approx(s["train_loss"], rel=1e-5)
    moved = max((parallel[k] - v).abs().max().item() for k, v in build_initial(base).items())
    assert moved > 100 * ATOL  # the params did train: the equality is not vacuous


def build_initial(overrides: list[str]) -> Params:
    return build_job(load_config(None, overrides)).initial_params


def test_fixed_steps_frozen_a_and_a_stack_of_two(tmp_path, bert):
    base = [*_overrides(tmp_path, bert), "client.steps=3", "adapter.freeze_a=true"]
    sequential, _ = _train(base, rounds=1)
    parallel, _ = _train([*base, "simulation.parallel_clients=2"], rounds=1)
    _assert_same(sequential, parallel)


def test_resource_profiles_ranks_layers_and_steps(tmp_path, bert):
    """Clients of other LoRA ranks, trained layers and step budgets share one stack."""
    base = [
        *_overrides(tmp_path, bert),
        "system.ranks=[2,4]",
        "system.layers=[1,2]",
        "system.steps=[2,5]",
        "client.weight_decay=0.1",  # must not move a client's frozen layers either
    ]
    sequential, _ = _train(base)
    parallel, _ = _train([*base, "simulation.parallel_clients=4"])
    _assert_same(sequential, parallel)


def test_causal_lm_on_a_tiny_llama(tmp_path, tiny_model_dirs):
    rows = tmp_path / "lines.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"text": " ".join(["line"] * (1 + i % 7)) + f" {i} of a tiny corpus"}) + "\n"
            for i in range(40)
        )
    )
    base = [
        f"data.dataset={json.dumps(str(rows))}",
        "data.task=causal_lm",
        "data.partition=quantity",
        "data.num_clients=4",
        f"model.name={json.dumps(str(tiny_model_dirs['llama']))}",  # no dropout
        "client.batch_size=4",
        "client.lr=0.01",
        "strategy.clients_per_round=4",
        "eval.every=100",
        f"output_dir={tmp_path / 'runs'}",
    ]
    sequential, _ = _train(base)
    parallel, _ = _train([*base, "simulation.parallel_clients=3"])
    _assert_same(sequential, parallel)


def test_the_seed_is_respected(tmp_path, bert):
    """With LoRA dropout on, a stack is not the sequential run, but it is seeded: the same
    seed gives the same params bit for bit."""
    base = [*_overrides(tmp_path, bert), "simulation.parallel_clients=4", "adapter.dropout=0.2"]
    once, _ = _train(base, rounds=1)
    again, _ = _train(base, rounds=1)
    other, _ = _train([*base, "seed=1"], rounds=1)
    assert all(torch.equal(once[k], again[k]) for k in once)  # same seed: bit for bit
    assert any(not torch.allclose(once[k], other[k]) for k in once)


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        (["backend=ray"], "backend = 'ray'"),
        (["adapter.method=ia3"], "adapter.method = 'ia3'"),
        (["dpsgd.enabled=true"], "dpsgd.enabled = true"),
        (["data.task=preference"], "data.task = 'preference'"),
        (["client.prefix_cache=true"], "client.prefix_cache = true"),
    ],
)
def test_what_cannot_be_stacked_is_refused_naming_the_key(extra, names):
    with pytest.raises(ConfigError, match="simulation.parallel_clients = 4") as err:
        load_config(None, ["simulation.parallel_clients=4", *extra])
    assert names in str(err.value)


def test_a_model_with_other_trainable_tensors_is_refused(tmp_path, bert):
    job = build_job(load_config(None, _overrides(tmp_path, bert)))
    norm = job.model.get_submodule("base_model.model.bert.embeddings.LayerNorm")
    norm.weight.requires_grad_(True)
    with pytest.raises(ConfigError, match="simulation.parallel_clients .*LayerNorm"):
        Parallel(job, 4)


def test_a_run_resumes_bit_for_bit(tmp_path, bert, full_and_resumed):
    """Through ``fedfm run``'s path (the transport opened by ``backend``): a run stopped after
    round 1 and resumed ends where the uninterrupted one does, to the bit."""
    overrides = [
        *_overrides(tmp_path, bert),
        "simulation.parallel_clients=3",
        "adapter.dropout=0.2",  # seeded per stack, so a resumed round redraws the same masks
        "rounds=2",
    ]
    full, resumed, cut_dir = full_and_resumed(overrides, 1)
    assert resumed["final"] == full["final"]
    a = load_file(tmp_path / "runs" / "full" / "adapter.safetensors")
    b = load_file(cut_dir / "adapter.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
