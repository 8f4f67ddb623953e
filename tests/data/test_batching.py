"""Training batches: a seeded shuffle, or (``client.bucket_by_length``) length buckets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedfm.config import load_config
from fedfm.data.batching import BUCKET_BATCHES, Encoded, batches, length_buckets
from fedfm.errors import ConfigError


def _text(lengths: np.ndarray) -> Encoded:
    """A text split whose example ``i`` is ``lengths[i]`` tokens of id ``i + 1`` (pad 0)."""
    ids = [np.full(n, i + 1, dtype=np.int64) for i, n in enumerate(lengths)]
    return Encoded(ids=ids, features=None, labels=np.arange(len(ids)) % 3, pad_id=0)


def _skewed(n: int, seed: int = 0) -> np.ndarray:
    """Mostly short examples and a long tail, like questions or speeches."""
    return np.minimum(1 + np.random.default_rng(seed).geometric(0.08, size=n), 128)


def _rows(batch: dict[str, torch.Tensor]) -> list[int]:
    """The example indices of a ``_text`` batch (its first token is index + 1)."""
    return (batch["input_ids"][:, 0] - 1).tolist()


def _epoch(data: Encoded, indices: np.ndarray, **kw) -> list[list[int]]:
    return [_rows(b) for b in batches(data, indices, causal_lm=False, **kw)]


def _padded_tokens(data: Encoded, indices: np.ndarray, **kw) -> tuple[int, int]:
    """``(padding tokens, all tokens)`` over one epoch's batches."""
    pad = total = 0
    for b in batches(data, indices, causal_lm=False, **kw):
        mask = b["attention_mask"]
        pad += int((mask == 0).sum())
        total += mask.numel()
    return pad, total


@pytest.mark.parametrize(("n", "batch_size"), [(1, 4), (7, 4), (64, 8), (1003, 16), (5000, 3)])
def test_each_index_exactly_once_with_the_plain_batch_sizes(n, batch_size):
    data = _text(_skewed(n + 20))
    indices = np.random.default_rng(1).choice(n + 20, size=n, replace=False)
    for seed in range(3):
        bucketed = _epoch(data, indices, batch_size=batch_size, seed=seed, bucket_by_length=True)
        plain = _epoch(data, indices, batch_size=batch_size, seed=seed)
        assert sorted(i for b in bucketed for i in b) == sorted(indices.tolist())
        assert sorted(map(len, bucketed)) == sorted(map(len, plain))


def test_no_indices_give_no_batches():
    data = _text(_skewed(10))
    empty = np.array([], dtype=np.int64)
    assert _epoch(data, empty, batch_size=4, seed=0, bucket_by_length=True) == []


def test_same_seed_same_batches_other_seed_other_order():
    data = _text(_skewed(2000))
    indices = np.arange(2000)
    kw = {"batch_size": 8, "bucket_by_length": True}
    first = _epoch(data, indices, seed=11, **kw)
    assert _epoch(data, indices, seed=11, **kw) == first
    other = _epoch(data, indices, seed=12, **kw)
    assert other != first
    assert [b[0] for b in other] != [b[0] for b in first]  # the batches' order moved too


def test_batch_order_is_shuffled_not_sorted():
    lengths = _skewed(2000)
    cut = length_buckets(lengths, np.arange(2000), batch_size=8, seed=3)
    widths = [lengths[b].max() for b in cut]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)


@pytest.mark.parametrize("n", [3 * 8 * BUCKET_BATCHES, 3 * 8 * BUCKET_BATCHES + 13, 61])
def test_batches_are_cut_from_length_sorted_chunks(n):
    data = _text(_skewed(n))
    indices = np.arange(n)
    lengths = data.lengths()
    # the same generator calls, replayed: shuffle, then sort each chunk by length
    shuffled = np.random.default_rng(5).permutation(indices)
    chunk = 8 * BUCKET_BATCHES
    expected = set()
    for start in range(0, len(shuffled), chunk):
        part = shuffled[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        expected |= {tuple(part[s : s + 8]) for s in range(0, len(part), 8)}
    got = _epoch(data, indices, batch_size=8, seed=5, bucket_by_length=True)
    assert {tuple(b) for b in got} == expected


@pytest.mark.parametrize("n", [40, 227, 16 * BUCKET_BATCHES])
def test_a_client_within_one_chunk_pads_like_the_length_sorted_evaluation(n):
    """Up to one chunk, the buckets are the fully sorted order's batches (ties aside)."""
    data = _text(_skewed(n, seed=n))
    indices = np.arange(n)
    bucketed = _padded_tokens(data, indices, batch_size=16, seed=9, bucket_by_length=True)
    assert bucketed == _padded_tokens(data, indices, batch_size=16, seed=None)


def test_less_padding_than_a_plain_shuffle_on_skewed_lengths():
    data = _text(_skewed(3000))
    indices = np.arange(3000)
    plain_pad, plain_total = _padded_tokens(data, indices, batch_size=16, seed=0)
    bucket_pad, bucket_total = _padded_tokens(
        data, indices, batch_size=16, seed=0, bucket_by_length=True
    )
    real = int(data.lengths().sum())
    assert plain_total - plain_pad == bucket_total - bucket_pad == real
    assert bucket_pad < 0.1 * plain_pad  # measured: 3.2% of the plain shuffle's padding


def test_off_is_the_plain_seeded_permutation():
    data = _text(_skewed(100))
    indices = np.arange(5, 100)
    order = np.random.default_rng(7).permutation(indices)
    expected = [order[s : s + 8].tolist() for s in range(0, len(order), 8)]
    assert _epoch(data, indices, batch_size=8, seed=7) == expected
    assert _epoch(data, indices, batch_size=8, seed=7, bucket_by_length=False) == expected


def test_feature_datasets_ignore_it():
    features = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    data = Encoded(ids=None, features=features, labels=np.zeros(50, dtype=np.int64))
    kw = {"batch_size": 8, "causal_lm": False, "seed": 2}
    plain = [b["x"] for b in batches(data, np.arange(50), **kw)]
    bucketed = [b["x"] for b in batches(data, np.arange(50), bucket_by_length=True, **kw)]
    assert len(plain) == len(bucketed)
    for a, b in zip(plain, bucketed, strict=True):
        assert torch.equal(a, b)


def test_refused_with_dpsgd_naming_the_key():
    keys = ["dpsgd.enabled=true", "dpsgd.noise_multiplier=1.0", "client.bucket_by_length=true"]
    with pytest.raises(ConfigError, match="client.bucket_by_length = true"):
        load_config(None, keys)
    assert load_config(None, keys[:2]).client.bucket_by_length is False


# ---------------------------------------------------------------- end to end


@pytest.fixture
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))


@pytest.mark.usefixtures("_cache")
def test_a_tiny_causal_lm_run_trains_with_it(tmp_path, tiny_model_dirs, monkeypatch):
    from fedfm.client import fit as fit_module
    from fedfm.report.metrics import read_records
    from fedfm.runtime.run import execute, prepare_run_dir

    rows = tmp_path / "lines.jsonl"
    words = ["to", "be", "or", "not", "to", "be", "that", "is", "the", "question", "whether"]
    rows.write_text(
        "".join(
            json.dumps({"text": " ".join(words[: 1 + (i * 7) % len(words)] * (1 + i % 3))}) + "\n"
            for i in range(60)
        )
    )
    seen = []

    def spy(*args, **kw):
        seen.append(kw["bucket_by_length"])
        return batches(*args, **kw)

    monkeypatch.setattr(fit_module, "batches", spy)
    cfg = load_config(
        None,
        [
            f"data.dataset={json.dumps(str(rows))}",
            "data.task=causal_lm",
            "data.partition=iid",
            "data.num_clients=2",
            f"model.name={json.dumps(str(tiny_model_dirs['llama']))}",
            "adapter.method=lora",
            "strategy.clients_per_round=2",
            "rounds=2",
            "client.epochs=2",
            "client.batch_size=4",
            "client.bucket_by_length=true",
            f"output_dir={json.dumps(str(tmp_path / 'runs'))}",
        ],
    )
    run_dir = prepare_run_dir(cfg, overwrite=False)
    execute(cfg, run_dir=run_dir, plot=False)
    assert len(seen) == 2 * 2 * 2 and all(seen)  # rounds x clients x epochs, all bucketed
    records = read_records(run_dir / "metrics.jsonl")
    assert len([r for r in records if "train_loss" in r]) == 2
    assert all(np.isfinite(r["train_loss"]) for r in records if "train_loss" in r)
