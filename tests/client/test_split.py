"""``split.enabled``: split fine-tuning. The server's loss and every trainable tensor's gradient
equal the whole model's (the issue's test), a round trains the same params as an ordinary
one, the bytes are the exact payload sizes of what travels, and what the split cannot do is
refused naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from fedfm.client.fit import prepare
from fedfm.client.split import Sent, bounded
from fedfm.client.state import ClientState
from fedfm.client.trainer import _epochs_or_steps
from fedfm.config import load_config
from fedfm.errors import ConfigError
from fedfm.models.params import payload_bytes
from fedfm.models.prefix import prefix_states
from fedfm.report.metrics import read_records
from fedfm.runtime.job import build_job
from fedfm.runtime.run import execute, prepare_run_dir
from fedfm.runtime.simulation import RoundState, run_round

SMALL = [
    "data.max_train_examples=96",
    "data.max_test_examples=24",
    "data.num_clients=3",
    "data.min_client_size=8",
    "data.max_length=24",
    "strategy.fraction=1.0",
    "client.batch_size=8",
    "client.lr=0.01",
    "checkpoint.every=0",
]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))


def _lines(tmp_path: Path) -> str:
    rows = tmp_path / "lines.jsonl"
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "near"] * 2
    rows.write_text(
        "".join(json.dumps({"text": " ".join(words[: 3 + i % 15])}) + "\n" for i in range(60))
    )
    return json.dumps(str(rows))


def _overrides(kind: str, dirs: dict[str, Path], tmp_path: Path, *extra: str) -> list[str]:
    """A tiny BERT classifier on TREC-6, or a tiny Llama causal LM on a file of lines."""
    if kind == "bert":
        data = ["data.dataset=trec6"]
    else:
        data = [f"data.dataset={_lines(tmp_path)}", "data.task=causal_lm", "data.partition=iid"]
    return [f"model.name={json.dumps(str(dirs[kind]))}", *data, *SMALL, *extra]


def _grads(job) -> dict[str, torch.Tensor]:  # noqa: ANN001
    named = dict(job.model.named_parameters())
    return {k: named[k].grad.clone() for k in job.initial_params if named[k].grad is not None}


def _zero(job) -> None:  # noqa: ANN001
    for p in job.model.parameters():
        p.grad = None


def prepare_batches(job):  # noqa: ANN001, ANN201
    """Client 0's first round's batches, as its local training draws them."""
    client = job.federation[0]
    plan = prepare(job.client_context(), client, job.initial_params, {}, ClientState(), 1)
    return _epochs_or_steps(plan.make_batches, plan.cfg)


CASES = {"bert-k1": ("bert", 1), "bert-k2": ("bert", 2), "llama-k1": ("llama", 1)}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("train_mode", [False, True], ids=["eval", "train-seeded"])
def test_the_servers_loss_and_every_gradient_equal_the_whole_models(
    case: str, train_mode: bool, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """The issue's test: one batch through the three halves against one forward and
    backward of the whole model, dropout off (eval) and on with the same seed (train)."""
    kind, k = CASES[case]
    overrides = [*_overrides(kind, tiny_model_dirs, tmp_path), "split.enabled=true"]
    job = build_job(load_config(None, [*overrides, f"split.layers={k}"]))
    split = job.feature("split").split
    torch.manual_seed(0)  # the adapter's LoRA B starts at 0: give every factor a gradient
    with torch.no_grad():
        for name, p in job.model.named_parameters():
            if name in job.initial_params:
                p.add_(0.1 * torch.randn_like(p))
    batch = next(iter(prepare_batches(job)))
    job.model.train(train_mode)

    torch.default_generator.manual_seed(5)
    whole = job.task.loss(job.model, batch)
    whole.backward()
    expected = _grads(job)
    _zero(job)

    torch.default_generator.manual_seed(5)
    step = split.session(seed=0)
    sent = step.client_forward(batch)
    loss, grad = step.server_step(job.task, sent)
    assert grad is not None and grad.shape == sent.activations.shape
    step.client_backward(grad)
    got = _grads(job)

    torch.testing.assert_close(loss, whole.detach(), rtol=1e-6, atol=1e-7)
    assert set(got) == set(expected) == set(job.initial_params)
    client = {n for n in got if n in split.client_side}
    assert client and set(got) - client  # both halves hold trained tensors
    for name in expected:
        assert expected[name].abs().max() > 0, name
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_the_bytes_of_a_step_are_the_payloads_that_travel(
    kind: str, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    job = build_job(
        load_config(None, [*_overrides(kind, tiny_model_dirs, tmp_path), "split.enabled=true"])
    )
    step = job.feature("split").split.session(seed=0)
    batch = next(iter(prepare_batches(job)))
    job.model.train()
    step.step(job.task, batch)
    b, t = batch["attention_mask"].shape
    hidden = job.model.config.hidden_size
    labels = (b, t) if kind == "llama" else (b,)  # a causal LM's labels are its token ids
    data = 4 * b * t * hidden + 8 * b * t + 8 * int(np.prod(labels))
    up = safetensors.torch.save(
        {
            "activations": torch.zeros(b, t, hidden),
            "attention_mask": torch.zeros(b, t, dtype=torch.int64),
            "labels": torch.zeros(labels, dtype=torch.int64),
        }
    )
    down = safetensors.torch.save({"grad": torch.zeros(b, t, hidden)})
    assert step.bytes_up == len(up) and data < len(up) < data + 400
    grad_data = 4 * b * t * hidden
    assert step.bytes_down == len(down) and grad_data < len(down) < grad_data + 200
    metrics = step.metrics()
    assert metrics.pop("split_client_seconds") > 0  # the client's own halves, timed
    assert metrics == {"split_bytes_up": len(up), "split_bytes_down": len(down)}


def _expected_split_bytes(job, round_: int, global_params) -> tuple[int, int]:  # noqa: ANN001
    """Every step's payloads of a round, from the batches the cohort draws."""
    ctx, up, down = job.client_context(), 0, 0
    trains = job.cfg.split.client_trains
    for client in job.federation.clients:
        plan = prepare(ctx, client, global_params, {}, ClientState(), round_)
        for batch in _epochs_or_steps(plan.make_batches, plan.cfg):
            mask = batch["attention_mask"]
            activations = torch.zeros(*mask.shape, job.model.config.hidden_size)
            up += payload_bytes(Sent(activations, mask, batch["labels"]).payload())
            down += payload_bytes({"grad": activations}) if trains else 0
    return up, down


def _round(overrides: list[str]) -> tuple[dict, dict, object]:
    job = build_job(load_config(None, overrides))
    state = RoundState(round=0, global_params=job.initial_params)
    record = run_round(job, state)
    return state.global_params, record, job


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_a_split_round_trains_the_ordinary_params_and_counts_every_byte(
    kind: str, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """Dropout on (the tiny BERT's 0.1): the halves draw the masks in the whole model's order."""
    base = _overrides(kind, tiny_model_dirs, tmp_path)
    plain, plain_record, _ = _round(base)
    split, record, job = _round([*base, "split.enabled=true"])
    moved = max((split[k] - job.initial_params[k]).abs().max().item() for k in split)
    assert moved > 1e-4
    for name in plain:
        torch.testing.assert_close(split[name], plain[name], rtol=1e-5, atol=1e-6)
    assert record["train_loss"] == pytest.approx(plain_record["train_loss"], rel=1e-5)

    up, down = _expected_split_bytes(job, 1, job.initial_params)
    assert (record["split_bytes_up"], record["split_bytes_down"]) == (up, down)
    server = job.feature("split").server_side
    client_part = {k: v for k, v in job.initial_params.items() if k not in server}
    assert server and client_part
    cohort = len(record["cohort"])
    # down: the client's part of the params to each member, and the gradients
    assert record["bytes_down"] == cohort * payload_bytes(client_part) + down
    # up: the client's part of each delta (the server-side part stays), and the activations
    assert record["bytes_up"] == cohort * payload_bytes(client_part) + up
    assert record["cum_bytes"] == record["bytes_up"] + record["bytes_down"]
    assert plain_record["bytes_up"] == cohort * payload_bytes(job.initial_params)


def test_a_frozen_client_part_sends_no_gradient_and_keeps_its_tensors(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """``split.client_trains = false`` is an ordinary run that trains only the layers above
    the cut (the tiny BERT has 2: ``system.layers = [1]``)."""
    base = _overrides("bert", tiny_model_dirs, tmp_path)
    plain, _, _ = _round([*base, "system.layers=[1]"])
    frozen, record, job = _round([*base, "split.enabled=true", "split.client_trains=false"])
    split = job.feature("split").split
    assert split.client_side and split.frozen == split.client_side
    for name in split.client_side:
        assert torch.equal(frozen[name], job.initial_params[name]), name
    for name in plain:
        torch.testing.assert_close(frozen[name], plain[name], rtol=1e-5, atol=1e-6)
    up, down = _expected_split_bytes(job, 1, job.initial_params)
    assert record["split_bytes_down"] == down == 0
    assert record["split_bytes_up"] == up > 0
    cohort = len(record["cohort"])
    assert record["bytes_up"] == cohort * payload_bytes({}) + up  # no tensor travels up


def test_noise_and_the_bound_act_on_what_is_sent(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    base = [*_overrides("bert", tiny_model_dirs, tmp_path), "split.enabled=true"]
    clean = build_job(load_config(None, base))
    batch = next(iter(prepare_batches(clean)))
    clean.model.eval()
    states = prefix_states(clean.model, clean.feature("split").split.stack, 1, batch)
    for extra, check in (
        (["split.clip=0.5"], "bound"),
        (["split.noise=0.3"], "noise"),
    ):
        job = build_job(load_config(None, [*base, *extra]))
        job.model.eval()
        sent = job.feature("split").split.session(seed=1).client_forward(batch).activations
        again = job.feature("split").split.session(seed=1).client_forward(batch).activations
        assert torch.equal(sent, again)  # seeded
        if check == "bound":
            real = sent * batch["attention_mask"].unsqueeze(-1)
            assert real.flatten(1).norm(dim=1).max() <= 0.5 + 1e-5
            torch.testing.assert_close(sent, bounded(states, batch["attention_mask"], 0.5))
        else:
            assert (sent - states).std().item() == pytest.approx(0.3, rel=0.1)


def test_a_run_records_the_split_bytes(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            *_overrides("bert", tiny_model_dirs, tmp_path),
            "split.enabled=true",
            "rounds=2",
            f"output_dir={tmp_path / 'runs'}",
        ],
    )
    run_dir = prepare_run_dir(cfg, overwrite=False)
    summary = execute(cfg, run_dir=run_dir, plot=False)
    records = read_records(run_dir / "metrics.jsonl")
    assert [r["round"] for r in records] == [1, 2]
    assert all(r["split_bytes_up"] > 0 and r["split_bytes_down"] > 0 for r in records)
    assert summary["split"]["bytes_up"] == sum(r["split_bytes_up"] for r in records)
    assert records[-1]["cum_bytes"] == sum(r["bytes_up"] + r["bytes_down"] for r in records)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["backend=ray"], r"split.enabled = true with backend = 'ray': the network protocol"),
        (["simulation.parallel_clients=2"], "simulation.parallel_clients = 2"),
        (["privacy.noise=central", "privacy.noise_multiplier=1.0"], "set split.noise > 0"),
        (["dpsgd.enabled=true"], "dpsgd.enabled = true"),
        (["client.prefix_cache=true"], "client.prefix_cache = true"),
        (["data.task=preference"], "data.task = 'preference'"),
        (["adapter.method=full"], "adapter.method = 'full'"),
        (["compression.method=topk"], "compression.method = 'topk'"),
        (["secagg.enabled=true"], "secagg.enabled = true"),
        (["client.gradient_checkpointing=true"], "client.gradient_checkpointing"),
        (["asynchronous.enabled=true"], "asynchronous.enabled = true"),
        (["offsite.enabled=true"], "offsite.enabled = true"),
        (["split.layers=0"], "split.layers = 0 must be >= 1"),
        (["split.noise=-1"], "split.noise = -1.0 must be >= 0"),
    ],
)
def test_what_the_split_cannot_do_is_refused_with_the_config(extra: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, [*extra, "split.enabled=true"])


def test_client_level_dp_is_taken_with_noise_on_the_activations() -> None:
    cfg = load_config(
        None,
        [
            "split.enabled=true",
            "split.noise=0.1",
            "privacy.noise=central",
            "privacy.noise_multiplier=1.0",
        ],
    )
    assert cfg.split.noise == 0.1


@pytest.mark.parametrize(
    ("kind", "extra", "match"),
    [
        ("bert", ["split.layers=3"], r"split.layers = 3, but the model has 2 layers"),
        ("bert", ["adapter.method=head"], "split.client_trains = true, but no trainable"),
        ("bert", ["strategy.name=local"], "strategy.name = 'local'"),
        ("llama", ["data.dataset=trec6", "data.task=classification"], "llama classifier"),
        ("gpt2", [], "not one of the architectures"),
    ],
)
def test_what_the_split_cannot_do_is_refused_when_the_job_is_built(
    kind: str, extra: list[str], match: str, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    base = _overrides("llama" if kind == "gpt2" else kind, tiny_model_dirs, tmp_path)
    base[0] = f"model.name={json.dumps(str(tiny_model_dirs[kind]))}"
    with pytest.raises(ConfigError, match=match):
        build_job(load_config(None, [*base, *extra, "split.enabled=true"]))
