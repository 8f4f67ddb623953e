"""Client-level DP, secure aggregation, robust aggregation and attacks in whole runs
(digits + MLP: fast)."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fedfm.config import load_config
from fedfm.errors import ConfigError
from fedfm.features.client_dp import LEDGER_FILE
from fedfm.privacy.accountant import epsilon
from fedfm.report.metrics import read_records
from fedfm.runtime.job import build_job
from fedfm.runtime.run import execute, prepare_run_dir
from fedfm.runtime.simulation import RoundState, run_round
from fedfm.runtime.transports import in_process

FAST = [
    "data.dataset=digits",
    "model.name=mlp",
    "adapter.method=full",
    "data.num_clients=20",
    "data.partition=iid",
    "strategy.clients_per_round=10",
    "client.lr=0.01",
    "client.epochs=3",
    "rounds=4",
]


def _cfg(tmp_path, *extra):
    return load_config(None, [*FAST, f"output_dir={tmp_path}", *extra])


def _run(cfg):
    run_dir = prepare_run_dir(cfg, overwrite=False)
    return execute(cfg, run_dir=run_dir), run_dir


def test_central_dp_run_writes_a_ledger_that_matches_the_accountant(tmp_path):
    cfg = _cfg(
        tmp_path, "privacy.noise=central", "privacy.noise_multiplier=1.0", "privacy.clip=0.5"
    )
    summary, run_dir = _run(cfg)
    ledger = [json.loads(line) for line in (run_dir / LEDGER_FILE).read_text().splitlines()]
    assert [e["round"] for e in ledger] == [1, 2, 3, 4]
    for entry in ledger:
        assert entry["epsilon"] == pytest.approx(epsilon(1.0, 0.5, entry["round"], 1e-5))
        assert entry["clip"] == 0.5 and entry["sample_rate"] == 0.5
    assert summary["epsilon"] == ledger[-1]["epsilon"]
    records = read_records(run_dir / "metrics.jsonl")
    assert all(r["dp_noise_std"] == pytest.approx(0.5 / 10) for r in records)


@pytest.mark.parametrize("noise", ["central", "distributed"])
def test_dp_noise_on_the_mean_has_the_stated_spread(tmp_path, noise):
    """Central noise, or the clients' distributed shares adding up to the same amount."""
    # lr ~0 makes every delta ~0: what the server then holds is the noise alone
    job = build_job(
        _cfg(
            tmp_path,
            f"privacy.noise={noise}",
            "privacy.noise_multiplier=2.0",
            "privacy.clip=0.1",
            "client.lr=1e-12",
        )
    )
    state = RoundState(round=0, global_params=job.initial_params)
    run_round(job, state)
    step = torch.cat(
        [(state.global_params[k] - job.initial_params[k]).reshape(-1) for k in job.initial_params]
    )
    assert float(step.std()) == pytest.approx(2.0 * 0.1 / 10, rel=0.05)  # z * clip / cohort


def test_target_epsilon_derives_the_noise_and_the_run_stays_within_it(tmp_path):
    summary, _ = _run(_cfg(tmp_path, "privacy.noise=central", "privacy.target_epsilon=3.0"))
    assert summary["epsilon"] <= 3.0
    assert summary["noise_multiplier"] > 0 and not summary["stopped_by_budget"]


def test_a_run_over_its_budget_is_refused_or_stopped(tmp_path):
    over = [
        "privacy.noise=central",
        "privacy.noise_multiplier=2.0",
        "privacy.target_epsilon=4",
        "rounds=20",
    ]
    with pytest.raises(ConfigError, match="spend epsilon .* > privacy.target_epsilon = 4"):
        build_job(_cfg(tmp_path, *over))
    summary, run_dir = _run(_cfg(tmp_path, *over, "privacy.over_budget=stop"))
    assert summary["stopped_by_budget"] and 0 < summary["rounds_completed"] < 20
    assert summary["epsilon"] <= 4.0
    assert "test_accuracy" in read_records(run_dir / "metrics.jsonl")[-1]  # last round evaluated


def test_adaptive_clipping_tracks_the_norms_and_resumes_exactly(tmp_path, full_and_resumed):
    overrides = [
        *FAST,
        f"output_dir={tmp_path}",
        "privacy.noise=central",
        "privacy.noise_multiplier=0.5",
        "privacy.adaptive_clip=true",
        "privacy.clip=100.0",
        "privacy.clip_lr=0.5",
        "checkpoint.every=1",
    ]
    full, resumed, cut_dir = full_and_resumed(overrides, 2)
    clips = [r["dp_clip"] for r in read_records(tmp_path / "full" / "metrics.jsonl")]
    assert clips[0] == 100.0 and clips[-1] < clips[0]  # every norm is far below 100: shrink
    assert resumed["final"] == full["final"]
    resumed_clips = [r["dp_clip"] for r in read_records(cut_dir / "metrics.jsonl")]
    assert resumed_clips == clips


def test_secure_aggregation_gives_the_plain_fedavg_result(tmp_path):
    _, plain_dir = _run(_cfg(tmp_path, "name=plain"))
    summary, secure_dir = _run(_cfg(tmp_path, "name=secure", "secagg.enabled=true"))
    plain = load_file(plain_dir / "adapter.safetensors")
    secure = load_file(secure_dir / "adapter.safetensors")
    for k in plain:
        torch.testing.assert_close(secure[k], plain[k], atol=1e-5, rtol=0)
    records = read_records(secure_dir / "metrics.jsonl")
    plain_records = read_records(plain_dir / "metrics.jsonl")
    for r, p in zip(records, plain_records, strict=True):
        assert r["bytes_up"] > p["bytes_up"]  # keys and shares cost extra
        assert r["secagg_seconds"] > 0 and r["secagg_dropped"] == []


def test_secure_aggregation_survives_dropouts_and_composes_with_dp(tmp_path):
    summary, run_dir = _run(
        _cfg(
            tmp_path,
            "secagg.enabled=true",
            "secagg.dropout=0.2",
            "privacy.noise=distributed",
            "privacy.noise_multiplier=0.3",
            "privacy.adaptive_clip=true",
        )
    )
    records = read_records(run_dir / "metrics.jsonl")
    assert all(len(r["secagg_dropped"]) == 2 for r in records)
    assert all(np.isfinite(r["test_accuracy"]) for r in records)
    assert summary["final"]["test_accuracy"] > 0.5


def test_secure_aggregation_refuses_a_cohort_too_small(tmp_path):
    with pytest.raises(ConfigError, match="secagg"):
        build_job(_cfg(tmp_path, "secagg.enabled=true", "strategy.clients_per_round=2"))
    with pytest.raises(ConfigError, match="needs 7 survivors to unmask \\(at most 3 may drop\\)"):
        build_job(_cfg(tmp_path, "secagg.enabled=true", "secagg.dropout=0.4"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["privacy.delta=1.0"], "privacy.delta = 1.0 must be in \\(0, 1\\)"),
        (
            ["privacy.noise=central", "privacy.noise_multiplier=-1"],
            "privacy.noise_multiplier = -1.0 must be >= 0",
        ),
        (["privacy.clip=0"], "privacy.clip = 0.0 must be > 0"),
        (["privacy.noise=central"], "needs privacy.noise_multiplier > 0 or"),
        (
            ["privacy.noise=central", "privacy.noise_multiplier=1", "robust.aggregator=median"],
            "use robust.norm_bound instead",
        ),
        (["secagg.enabled=true", "robust.aggregator=krum"], "the server sees only the sum"),
        (["secagg.enabled=true", "compression.method=topk"], "secagg.enabled"),
        (["attack.kind=sign_flip"], "attacks nobody"),
    ],
)
def test_impossible_privacy_settings_name_the_setting(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(tmp_path, *overrides)


def _final_accuracy(tmp_path, *overrides):
    summary, run_dir = _run(_cfg(tmp_path, "rounds=5", *overrides))
    return summary["final"]["test_accuracy"], read_records(run_dir / "metrics.jsonl")


def test_sign_flipping_breaks_fedavg_but_not_median_or_multikrum(tmp_path):
    attack = ["attack.kind=sign_flip", "attack.fraction=0.3", "attack.scale=5"]
    clean, _ = _final_accuracy(tmp_path, "name=clean")
    attacked, records = _final_accuracy(tmp_path, "name=mean", *attack)
    median, _ = _final_accuracy(tmp_path, "name=median", *attack, "robust.aggregator=median")
    krum, krum_records = _final_accuracy(
        tmp_path, "name=krum", *attack, "robust.aggregator=multikrum"
    )
    adam_median, _ = _final_accuracy(
        tmp_path,
        "name=adam",
        *attack,
        "robust.aggregator=median",
        "strategy.name=fedadam",
        "strategy.server_lr=0.05",
    )
    assert attacked < clean - 0.3
    assert median > attacked + 0.4 and krum > attacked + 0.4  # both survive the attack
    assert adam_median > attacked + 0.4  # a server optimiser steps on the robust delta
    assert any(r["malicious"] for r in records)
    for r in krum_records:  # Multi-Krum keeps an attacker only when honest updates run out
        honest = len(r["cohort"]) - len(r["malicious"])
        assert len(set(r["robust_kept"]) & set(r["malicious"])) == max(
            0, len(r["robust_kept"]) - honest
        )


def test_norm_bounding_limits_a_scaling_attack(tmp_path):
    attack = ["attack.kind=scale", "attack.fraction=0.1", "attack.scale=50"]
    clean, _ = _final_accuracy(tmp_path, "name=clean")
    attacked, _ = _final_accuracy(tmp_path, "name=mean", *attack)
    bounded, records = _final_accuracy(tmp_path, "name=bound", *attack, "robust.norm_bound=1.0")
    assert attacked < clean - 0.2 and bounded > clean - 0.1
    assert all(set(r["malicious"]) <= set(r["robust_bounded"]) for r in records)


def test_a_malformed_update_is_rejected_and_recorded(tmp_path, monkeypatch):
    job = build_job(_cfg(tmp_path))
    real = in_process.fit_client

    def bad_shape(job, client, *args, **kwargs):
        outcome = real(job, client, *args, **kwargs)
        if client.id == outcome.update.client_id and client.id % 2:
            name = next(iter(outcome.update.delta))
            outcome.update.delta[name] = torch.zeros(3)
        return outcome

    monkeypatch.setattr(in_process, "fit_client", bad_shape)
    record = run_round(job, RoundState(round=0, global_params=job.initial_params))
    odd = [c for c in record["cohort"] if c % 2]
    assert [e["client"] for e in record["excluded"]] == odd
    assert all(
        "malformed update" in e["reason"] and "shape (3,)" in e["reason"]
        for e in record["excluded"]
    )


TEXT = [
    "data.dataset=trec6",
    "data.max_train_examples=240",
    "data.max_test_examples=90",
    "data.max_length=32",
    "data.num_clients=4",
    "data.partition=iid",
    "strategy.clients_per_round=4",
    "client.epochs=2",
    "client.lr=0.005",
    "rounds=3",
]


def test_backdoor_clients_teach_the_trigger_and_its_success_is_reported(tmp_path):
    attack = [
        "attack.kind=backdoor",
        "attack.fraction=0.5",
        "attack.poison_fraction=0.8",
        "attack.target_label=2",
    ]
    cfg = load_config(None, [*TEXT, f"output_dir={tmp_path}", "name=attacked", *attack])
    job = build_job(cfg)
    attacks = job.feature("attacks")
    assert attacks.poison_offset == 240 and len(job.train) == 480
    assert set(attacks.backdoor_test.labels.tolist()) == {2}
    assert len(attacks.backdoor_test) == int((job.dataset.test.labels != 2).sum())
    indices = job.client_context().indices
    attacker = job.federation[min(attacks.malicious)]
    assert (indices(attacker) >= 240).any()
    honest = job.federation[min(set(range(4)) - attacks.malicious)]
    assert (indices(honest) == honest.train).all()

    attacked, run_dir = _run(cfg)
    clean_cfg = load_config(
        None, [*TEXT, f"output_dir={tmp_path}", "name=clean", *attack, "attack.poison_fraction=0.0"]
    )
    clean, _ = _run(clean_cfg)
    records = read_records(run_dir / "metrics.jsonl")
    assert all(0 <= r["test_attack_success_rate"] <= 1 for r in records)
    assert (
        attacked["final"]["test_attack_success_rate"]
        > clean["final"]["test_attack_success_rate"] + 0.3
    )
