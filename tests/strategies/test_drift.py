"""Client drift: the Gram matrix of updates and their mean pairwise cosine."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfm.config import load_config
from fedfm.runtime.job import build_job
from fedfm.runtime.simulation import RoundState, run_round
from fedfm.strategies.aggregate import (
    EXACT_STATISTICS,
    _mean_cosine,
    gram,
    mean_pairwise_cosine,
    update_statistics,
)

SHAPES = {"w": (3, 4), "b": (4,), "s": ()}


def _random(seed, shapes=SHAPES, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g).to(dtype) for k, shape in shapes.items()}


def _flat(d):
    return torch.cat([d[k].reshape(-1).to(torch.float64) for k in SHAPES])


def _scale(d, c):
    return {k: c * v for k, v in d.items()}


def test_gram_matches_flattened_dot_products():
    deltas = [_random(s) for s in range(4)]
    g = gram(deltas)
    assert g.shape == (4, 4) and g.dtype == torch.float64
    flat = torch.stack([_flat(d) for d in deltas])
    torch.testing.assert_close(g, flat @ flat.T)
    torch.testing.assert_close(g, g.T)
    assert bool((torch.linalg.eigvalsh(g) > -1e-9).all())  # positive semi-definite


def test_gram_of_half_precision_is_accumulated_in_float64():
    deltas = [_random(s, dtype=torch.float16) for s in range(3)]
    flat = torch.stack([_flat(d) for d in deltas])
    torch.testing.assert_close(gram(deltas), flat @ flat.T)


def test_gram_of_one_update_is_its_squared_norm():
    d = _random(7)
    torch.testing.assert_close(gram([d]), (_flat(d) @ _flat(d)).reshape(1, 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streamed_update_statistics_agree_with_the_exact_gram(dtype):
    """A cohort above EXACT_STATISTICS elements streams in float32: the norms and the mean
    cosine still match the float64 Gram's, a zero update included (its cosines are 0)."""
    shapes = {"w": (64, 300), "b": (300,), "s": ()}
    deltas = [_random(s, shapes, dtype) for s in range(5)]
    deltas[1] = {k: v + deltas[0][k] for k, v in deltas[1].items()}  # some alignment
    deltas.append({k: torch.zeros_like(v) for k, v in deltas[0].items()})
    assert len(deltas) * sum(v.numel() for v in deltas[0].values()) > EXACT_STATISTICS
    g = gram(deltas)
    norms, cosine = update_statistics(deltas)
    assert norms[-1] == 0.0
    exact = g.diagonal().sqrt()
    torch.testing.assert_close(torch.tensor(norms, dtype=torch.float64), exact, rtol=1e-4, atol=0)
    k, unit = len(deltas), g.diagonal().sqrt().clamp(min=1e-30)
    cos = g / unit[:, None] / unit[None, :]
    expected = float((cos.sum() - cos.diagonal().sum()) / (k * (k - 1)))
    assert cosine == pytest.approx(expected, abs=1e-5)
    assert cosine > 0.03  # the aligned pair shows (its two cosines of 0.7 over 30)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_update_statistics_of_a_small_cohort_match_the_gram_to_float64_rounding(dtype):
    deltas = [_random(s, dtype=dtype) for s in range(4)]
    deltas.insert(2, {k: torch.zeros_like(v) for k, v in deltas[0].items()})  # its cosines: 0
    g = gram(deltas)
    norms, cosine = update_statistics(deltas)
    torch.testing.assert_close(torch.tensor(norms, dtype=torch.float64), g.diagonal().sqrt())
    assert norms[2] == 0.0
    assert cosine == pytest.approx(_mean_cosine(g.numpy()), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("streamed", [False, True], ids=["block", "streamed"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_an_update_holding_nan_or_inf_has_a_non_finite_norm(streamed, bad):
    """What the round's screen relies on to find non-finite updates without a pass of its own
    (:func:`fedfm.runtime.simulation.screen`): the others' norms stay as they were."""
    shapes = {"w": (64, 300), "b": (300,), "s": ()} if streamed else SHAPES
    deltas = [_random(s, shapes) for s in range(4)]
    clean, _ = update_statistics(deltas)
    deltas[1]["b"][-1] = bad
    assert (len(deltas) * sum(v.numel() for v in deltas[0].values()) > EXACT_STATISTICS) is streamed
    norms, cosine = update_statistics(deltas)
    assert not math.isfinite(norms[1]) and not math.isfinite(cosine)
    assert [norms[0], *norms[2:]] == [clean[0], *clean[2:]]


def test_update_statistics_of_updates_with_no_tensors_are_zero():
    assert update_statistics([{}, {}]) == ([0.0, 0.0], 0.0)
    assert update_statistics([{}]) == ([0.0], None)


def test_update_statistics_of_one_update_has_no_cosine():
    big = {"w": torch.ones(EXACT_STATISTICS + 1)}
    norms, cosine = update_statistics([big])
    assert norms == [pytest.approx(math.sqrt(EXACT_STATISTICS + 1), rel=1e-6)] and cosine is None


def test_mean_pairwise_cosine_identical_opposite_orthogonal():
    a = _random(0)
    assert mean_pairwise_cosine([a, a]) == pytest.approx(1.0)
    assert mean_pairwise_cosine([a, a, a]) == pytest.approx(1.0)
    assert mean_pairwise_cosine([a, _scale(a, -1.0)]) == pytest.approx(-1.0)
    x = {"w": torch.tensor([1.0, 0.0, 0.0]), "b": torch.tensor([0.0])}
    y = {"w": torch.tensor([0.0, 0.0, 0.0]), "b": torch.tensor([2.0])}
    z = {"w": torch.tensor([0.0, -3.0, 0.0]), "b": torch.tensor([0.0])}
    assert mean_pairwise_cosine([x, y]) == pytest.approx(0.0)
    assert mean_pairwise_cosine([x, y, z]) == pytest.approx(0.0)


def test_mean_pairwise_cosine_is_the_mean_over_pairs():
    deltas = [_random(s) for s in range(4)]
    flat = [_flat(d) for d in deltas]
    expected = [
        float(flat[i] @ flat[j] / (flat[i].norm() * flat[j].norm()))
        for i, j in itertools.combinations(range(4), 2)
    ]
    assert mean_pairwise_cosine(deltas) == pytest.approx(sum(expected) / len(expected))


def test_mean_pairwise_cosine_is_scale_invariant():
    deltas = [_random(s) for s in range(3)]
    base = mean_pairwise_cosine(deltas)
    scaled = [_scale(deltas[0], 1e-3), _scale(deltas[1], 250.0), _scale(deltas[2], 7.0)]
    assert mean_pairwise_cosine(scaled) == pytest.approx(base, abs=1e-6)


@pytest.mark.parametrize("n", [0, 1])
def test_mean_pairwise_cosine_needs_two_updates(n):
    with pytest.raises(ValueError, match="at least 2"):
        mean_pairwise_cosine([_random(s) for s in range(n)])


_values = st.lists(
    st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=32), min_size=3, max_size=3
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_values, min_size=2, max_size=5))
def test_mean_pairwise_cosine_lies_in_minus_one_one(rows):
    deltas = [{"w": torch.tensor(r[:2]), "b": torch.tensor(r[2])} for r in rows]
    value = mean_pairwise_cosine(deltas)
    assert math.isfinite(value)
    assert -1.0 - 1e-9 <= value <= 1.0 + 1e-9


def test_fedavg_round_records_update_cosine(tmp_path):
    cfg = load_config(
        None,
        [
            "data.dataset=digits",
            "model.name=mlp",
            "adapter.method=full",
            "data.num_clients=4",
            "strategy.clients_per_round=3",
            "client.lr=0.05",
            "client.optimizer=sgd",
            f"output_dir={tmp_path}",
        ],
    )
    job = build_job(cfg)
    record = run_round(job, RoundState(round=0, global_params=job.initial_params))
    assert len(record["cohort"]) == 3 and not record["excluded"]
    assert isinstance(record["update_cosine"], float)
    assert -1.0 <= record["update_cosine"] <= 1.0


def test_single_client_round_has_no_update_cosine(tmp_path):
    cfg = load_config(
        None,
        [
            "data.dataset=digits",
            "model.name=mlp",
            "adapter.method=full",
            "data.num_clients=4",
            "strategy.clients_per_round=1",
            f"output_dir={tmp_path}",
        ],
    )
    job = build_job(cfg)
    record = run_round(job, RoundState(round=0, global_params=job.initial_params))
    assert "update_cosine" not in record
