"""LoRA-aware aggregation in a real run (digits + MLP with LoRA on its hidden layer):
FLoRA's stacking is exact, FedIT's averaging is not, FFA-LoRA is exact at half the bytes."""

import pytest
import torch

from fedfm.config import load_config
from fedfm.errors import ConfigError
from fedfm.models.lora import lora_pairs
from fedfm.runtime.job import build_job
from fedfm.runtime.run import MERGED_FILE
from fedfm.runtime.simulation import RoundState, run_round
from fedfm.runtime.transports import in_process

LORA = [
    "data.dataset=digits",
    "model.name=mlp",
    "adapter.method=lora",
    'adapter.target_modules=["hidden"]',
    "adapter.rank=4",
    "adapter.alpha=8",
    "data.num_clients=6",
    "strategy.clients_per_round=3",
    "client.lr=0.01",
]
HIDDEN = "base_model.model.hidden"


def _job(tmp_path, *extra):
    return build_job(load_config(None, [*LORA, f"output_dir={tmp_path}", *extra]))


def _effective(job, params):
    """The hidden layer's weight as the model uses it: frozen weight + scale * B @ A."""
    scale = job.cfg.adapter.alpha / job.cfg.adapter.rank
    base = dict(job.model.named_parameters())[f"{HIDDEN}.base_layer.weight"].detach()
    a = params.get(f"{HIDDEN}.lora_A.default.weight")
    if a is None:  # FFA-LoRA: A is frozen in the model
        a = dict(job.model.named_parameters())[f"{HIDDEN}.lora_A.default.weight"].detach()
    b = params[f"{HIDDEN}.lora_B.default.weight"]
    return base.double() + scale * (b.double() @ a.double())


def _round_with_client_weights(job, monkeypatch):
    """Run one round; return the mean of the clients' effective weights and the new global's."""
    state = RoundState(round=0, global_params=job.initial_params)
    seen = []
    real_fit = in_process.fit_client

    def fit(job, client, global_params, payload, st, round_, **kwargs):
        outcome = real_fit(job, client, global_params, payload, st, round_, **kwargs)
        trained = {k: global_params[k] + d for k, d in outcome.update.delta.items()}
        seen.append((_effective(job, trained), outcome.update.num_examples))
        return outcome

    monkeypatch.setattr(in_process, "fit_client", fit)
    record = run_round(job, state)
    total = sum(n for _, n in seen)
    client_mean = sum(w * n for w, n in seen) / total
    return client_mean, _effective(job, state.global_params), state, record


def test_fedit_averaging_misses_the_mean_of_client_models(tmp_path, monkeypatch):
    job = _job(tmp_path)
    client_mean, global_w, _, _ = _round_with_client_weights(job, monkeypatch)
    gap = (global_w - client_mean).norm() / (
        client_mean - _effective(job, job.initial_params)
    ).norm()
    assert gap > 1e-3  # the product of means is not the mean of products


def test_flora_exact_stacking_equals_the_mean_of_client_models(tmp_path, monkeypatch):
    job = _job(tmp_path, "strategy.name=flora", "strategy.reproject=false")
    client_mean, global_w, state, _ = _round_with_client_weights(job, monkeypatch)
    torch.testing.assert_close(global_w, client_mean, rtol=1e-5, atol=1e-6)
    # LoRA restarts from (A0, 0): the merged weights carry the whole update
    b = state.global_params[f"{HIDDEN}.lora_B.default.weight"]
    assert b.abs().sum() == 0
    a0 = job.initial_params[f"{HIDDEN}.lora_A.default.weight"]
    assert torch.equal(state.global_params[f"{HIDDEN}.lora_A.default.weight"], a0)


def test_flora_reprojection_is_exact_for_one_client_and_best_fit_for_more(tmp_path, monkeypatch):
    job = _job(tmp_path, "strategy.name=flora", "strategy.clients_per_round=1")
    client_mean, global_w, _, _ = _round_with_client_weights(job, monkeypatch)
    torch.testing.assert_close(global_w, client_mean, rtol=1e-5, atol=1e-6)

    job = _job(tmp_path, "strategy.name=flora", "strategy.clients_per_round=3")
    client_mean, global_w, _, _ = _round_with_client_weights(job, monkeypatch)
    base = _effective(job, job.initial_params)  # B = 0 at init: the frozen weight itself
    scale = job.cfg.adapter.alpha / job.cfg.adapter.rank
    s = torch.linalg.svdvals((client_mean - base) / scale)
    # three rank-4 clients: the rank-4 SVD of their mean product, error = dropped values
    torch.testing.assert_close(
        ((global_w - client_mean) / scale).norm(), s[4:].norm(), rtol=1e-4, atol=1e-6
    )


def test_ffa_lora_is_exact_with_fedavg_and_sends_only_b(tmp_path, monkeypatch):
    job = _job(tmp_path, "adapter.freeze_a=true")
    assert not [k for k in job.initial_params if "lora_A" in k]
    client_mean, global_w, _, record = _round_with_client_weights(job, monkeypatch)
    torch.testing.assert_close(global_w, client_mean, rtol=1e-5, atol=1e-6)
    full = _job(tmp_path)
    full_record = run_round(full, RoundState(round=0, global_params=full.initial_params))
    lora_only = [k for k in full.initial_params if ".lora_" in k]
    assert lora_only and record["bytes_up"] < full_record["bytes_up"]


def test_flora_exact_counts_the_stacks_a_client_missed(tmp_path):
    job = _job(tmp_path, "strategy.name=flora", "strategy.reproject=false")
    state = RoundState(round=0, global_params=job.initial_params)
    first = run_round(job, state)
    second = run_round(job, state)
    stack_bytes = job.strategy.stack_bytes[0]
    assert stack_bytes > 0
    assert second["bytes_down"] == first["bytes_down"] + 3 * stack_bytes


def test_flora_exact_run_resumes_and_saves_its_merged_weights(tmp_path, full_and_resumed):
    overrides = ["strategy.name=flora", "strategy.reproject=false", "rounds=3"]
    full, resumed, cut_dir = full_and_resumed(
        [*LORA, f"output_dir={tmp_path}", *overrides], stop_after=1
    )
    assert resumed["final"] == full["final"]
    assert resumed["total_bytes"] == full["total_bytes"]
    assert (cut_dir / MERGED_FILE).is_file()


def test_flora_needs_both_lora_factors(tmp_path):
    with pytest.raises(ConfigError, match="strategy.name = 'flora' aggregates LoRA"):
        build_job(
            load_config(
                None,
                [
                    "data.dataset=digits",
                    "model.name=mlp",
                    "adapter.method=full",
                    "strategy.name=flora",
                    f"output_dir={tmp_path}",
                ],
            )
        )
    with pytest.raises(ConfigError, match="FFA-LoRA"):
        _job(tmp_path, "strategy.name=flora", "adapter.freeze_a=true")
    assert lora_pairs(list(_job(tmp_path).initial_params))
