"""FedPFT's mechanism: mixtures per class, the exact upload, seeded sampling, and the command's
summary on a feature dataset (digits) and on text through a tiny encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedfm.config import load_config
from fedfm.models.params import serialize
from fedfm.transfer.head import fedavg_head, head_bytes, make_head
from fedfm.transfer.pft import (
    ClassMixture,
    components_for,
    fit_client_mixtures,
    mixture_tensors,
    mixtures_from_tensors,
    sample_features,
    sample_mixture,
    upload_bytes,
)


def two_classes(
    rng: np.random.Generator, n: int = 200, d: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([rng.normal(-2.0, 0.5, (n, d)), rng.normal(3.0, 1.0, (n, d))])
    return x.astype(np.float32), np.repeat([0, 2], n)


def test_components_fall_back_for_small_classes() -> None:
    assert [components_for(n, 3) for n in (1, 2, 3, 5, 6, 100)] == [1, 1, 1, 2, 3, 3]


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_mixtures_recover_each_class_and_are_seeded(covariance: str) -> None:
    x, y = two_classes(np.random.default_rng(0))
    mixtures = fit_client_mixtures(x, y, components=1, covariance=covariance, seed=0)
    assert [m.label for m in mixtures] == [0, 2] and [m.count for m in mixtures] == [200, 200]
    assert np.allclose(mixtures[0].means, -2.0, atol=0.15)
    assert np.allclose(mixtures[1].means, 3.0, atol=0.25)
    variances = mixtures[1].covariances[0]
    variances = np.diag(variances) if covariance == "full" else variances
    assert np.allclose(variances, 1.0, atol=0.25)
    assert mixtures[0].covariance == covariance
    again = fit_client_mixtures(x, y, components=2, covariance=covariance, seed=0)
    same = fit_client_mixtures(x, y, components=2, covariance=covariance, seed=0)
    assert all(np.array_equal(a.means, b.means) for a, b in zip(again, same, strict=True))


def test_a_lone_row_is_its_own_gaussian() -> None:
    x = np.array([[1.0, 2.0], [0.0, 0.0], [0.1, 0.0]], np.float32)
    mixtures = fit_client_mixtures(x, np.array([5, 1, 1]), components=3, seed=0)
    lone = mixtures[1]
    assert (lone.label, lone.count) == (5, 1)
    assert np.array_equal(lone.means, [[1.0, 2.0]]) and lone.weights.tolist() == [1.0]
    assert len(mixtures[0].weights) == 1  # 2 rows: one component, not 3


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_upload_round_trips_exactly_and_bytes_are_its_payload(covariance: str) -> None:
    x, y = two_classes(np.random.default_rng(1), d=4)
    mixtures = fit_client_mixtures(x, y, components=2, covariance=covariance, seed=0)
    wire = serialize(mixture_tensors(mixtures))
    assert upload_bytes(mixtures) == len(wire)
    from fedfm.models.params import deserialize

    back = mixtures_from_tensors(deserialize(wire))
    for a, b in zip(mixtures, back, strict=True):
        assert (a.label, a.count) == (b.label, b.count)
        for name in ("weights", "means", "covariances"):
            assert np.array_equal(getattr(a, name), getattr(b, name))
    # floats: 2 classes x (2 weights + 2x4 means + 2x4 or 2x4x4 covariances), one int64 count
    floats = 2 * (2 + 8 + (8 if covariance == "diag" else 32))
    assert floats * 4 + 2 * 8 < len(wire) < floats * 4 + 2 * 8 + 1024  # + the JSON header


def test_sampling_matches_the_mixture_and_is_seeded_per_client() -> None:
    diag = ClassMixture(
        0,
        10,
        np.array([0.25, 0.75], np.float32),
        np.array([[-5.0, 0.0], [5.0, 1.0]], np.float32),
        np.array([[1.0, 4.0], [0.25, 1.0]], np.float32),
    )
    draws = sample_mixture(diag, 40_000, np.random.default_rng(0))
    left = draws[draws[:, 0] < 0]
    assert len(left) / len(draws) == pytest.approx(0.25, abs=0.01)
    assert left.mean(0) == pytest.approx([-5.0, 0.0], abs=0.05)
    assert left.var(0) == pytest.approx([1.0, 4.0], rel=0.05)
    cov = np.array([[[2.0, 1.2], [1.2, 1.0]]], np.float32)
    full = ClassMixture(1, 3, np.ones(1, np.float32), np.zeros((1, 2), np.float32), cov)
    drawn = sample_mixture(full, 40_000, np.random.default_rng(0))
    assert np.cov(drawn.T) == pytest.approx(cov[0], abs=0.06)

    x, y = sample_features([[diag], [full]], per_class=0, seed=3)
    assert y.tolist() == [0] * 10 + [1] * 3  # each client's class counts
    x2, _ = sample_features([[diag], [full]], per_class=0, seed=3)
    assert np.array_equal(x, x2)
    other = ClassMixture(1, 3, np.ones(1, np.float32), np.ones((1, 2), np.float32), cov)
    x3, _ = sample_features([[diag], [other]], per_class=0, seed=3)
    assert np.array_equal(x[:10], x3[:10]) and not np.array_equal(x[10:], x3[10:])
    x4, y4 = sample_features([[diag], [full]], per_class=7, seed=3)
    assert len(y4) == 14


def test_fedavg_of_one_client_counts_bytes_and_learns() -> None:
    x, y = two_classes(np.random.default_rng(2))
    head = make_head(3, 3, kind="mlp", hidden=8, seed=0)
    one_way = head_bytes(head)
    result = fedavg_head(
        head, [(x[::2], y[::2]), (x[1::2], y[1::2])], rounds=3, epochs=1, lr=1e-2,
        batch_size=32, seed=0, test=(x, y),
    )  # fmt: skip
    assert result.bytes == 3 * 2 * 2 * one_way
    assert len(result.accuracies) == 3 and result.accuracies[-1] > 0.95


def test_run_pft_on_digits_writes_its_summary(tmp_path: Path) -> None:
    from fedfm.transfer.run_pft import run_pft

    cfg = load_config(
        None,
        ["data.dataset=digits", "model.name=mlp", "data.num_clients=4", "pft.epochs=10",
         "pft.fedavg_rounds=3", "pft.components=2"],
    )  # fmt: skip
    summary = run_pft(cfg, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert load_config(tmp_path / "run" / "config.toml") == cfg
    acc, sent = summary["accuracy"], summary["bytes"]
    assert acc["pft"] > 0.75 and acc["centralized"] > 0.85  # 10 classes: chance is 0.1
    assert sent["pft_up"] == sum(sent["pft_per_client"]) and len(sent["pft_per_client"]) == 4
    assert sent["fedavg"] == 3 * 2 * 4 * sent["head"]
    assert summary["synthetic_examples"] == summary["train_examples"]


def test_run_pft_on_text_through_a_tiny_encoder(
    tmp_path: Path, tiny_model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedfm.transfer.features import cached_embeddings, embed_texts, load_encoder
    from fedfm.transfer.run_pft import run_pft

    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))
    encoder = load_encoder(str(tiny_model_dirs["bert"]))
    texts = ["Who wrote Hamlet?", "What is the capital of France and why?", "When?"]
    one = embed_texts(encoder, texts, max_length=32, batch_size=1)
    many = embed_texts(encoder, texts, max_length=32, batch_size=8)
    assert one.shape == (3, 16) and np.allclose(np.linalg.norm(one, axis=1), 1.0, atol=1e-5)
    assert np.allclose(one, many, atol=1e-5)
    cached = cached_embeddings(encoder, texts, max_length=32)
    assert np.array_equal(cached, cached_embeddings(encoder, texts, max_length=32))
    assert len(list((tmp_path / "cache" / "features").glob("*.npy"))) == 1

    cfg = load_config(
        None,
        [f"pft.encoder={tiny_model_dirs['bert']}", "data.max_train_examples=150",
         "data.max_test_examples=40", "data.num_clients=3", "pft.epochs=2",
         "pft.fedavg_rounds=1", "pft.samples_per_class=5", "data.min_client_size=4"],
    )  # fmt: skip
    summary = run_pft(cfg, tmp_path / "text")
    assert summary["feature_dim"] == 16 and summary["test_examples"] == 40
    assert summary["synthetic_examples"] == 5 * summary["mixtures"]  # 5 per (client, class)
    assert 3 <= summary["mixtures"] <= 3 * 6
