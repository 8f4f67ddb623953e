"""Secure aggregation: the unmasked sum is the plain sum up to quantisation, one masked vector
looks uniform, dropouts up to the threshold are recovered and beyond it fail clearly."""

import numpy as np
import pytest
from scipy import stats

from fedfm.privacy import shamir
from fedfm.privacy.secagg import (
    SecAggClient,
    SecAggError,
    decode,
    encode,
    fixed_point_scale,
    secure_weighted_mean,
)


def _vectors(m, d, seed=0):
    rng = np.random.default_rng(seed)
    return {i: rng.normal(0, 0.05, d) for i in range(m)}


def test_shamir_needs_exactly_t_shares():
    secret = 2**255 + 12345
    shares = shamir.split(secret, n=7, t=4)
    assert shamir.combine(shares[:4]) == secret
    assert shamir.combine(shares[3:]) == secret
    assert shamir.combine(shares[:3]) != secret  # t - 1 shares give a different value


def test_fixed_point_round_trip_and_unbiased_rounding():
    scale = fixed_point_scale(1.0, 10)
    x = np.array([-1.0, -0.3, 0.0, 1e-9, 0.7, 1.0])
    back = decode(encode(x, scale, np.random.default_rng(0)), scale)
    assert np.abs(back - x).max() <= 1 / scale
    tiny = np.full(200_000, 0.3 / scale)  # 0.3 of one step: rounds up 30% of the time
    assert decode(encode(tiny, scale, np.random.default_rng(1)), scale).mean() == pytest.approx(
        0.3 / scale, rel=0.02
    )


@pytest.mark.parametrize("dropped", [set(), {1}, {0, 4, 7}])
def test_unmasked_mean_equals_the_plain_weighted_mean(dropped):
    vectors = _vectors(10, 500)
    weights = {i: float(i + 1) for i in vectors}
    result = secure_weighted_mean(vectors, weights, clip=1.0, threshold=0.6, drop=dropped, seed=0)
    alive = [i for i in vectors if i not in dropped]
    plain = sum(weights[i] * vectors[i] for i in alive) / sum(weights[i] for i in alive)
    scale = fixed_point_scale(1.0, 10)
    assert np.abs(result.mean - plain).max() <= 10 / scale  # one rounding step per client
    assert result.dropped == sorted(dropped)
    assert result.bytes_up > 0 and result.seconds > 0


def test_one_masked_vector_is_indistinguishable_from_uniform():
    clients = {i: SecAggClient(i) for i in range(5)}
    roster = {i: c.advertise() for i, c in clients.items()}
    zeros = np.zeros(100_000, dtype=np.uint32)  # the most structured input there is
    masked = clients[2].mask(zeros, roster)
    top = (masked >> 24).astype(np.int64)  # chi-square over 256 buckets of the top byte
    counts = np.bincount(top, minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-4
    low = (masked & 0xFF).astype(np.int64)
    assert stats.chisquare(np.bincount(low, minlength=256)).pvalue > 1e-4
    assert stats.kstest(masked / 2**32, "uniform").pvalue > 1e-4


def test_more_dropouts_than_the_threshold_allows_fail_clearly():
    vectors = _vectors(6, 50)
    weights = dict.fromkeys(vectors, 1.0)
    # threshold 0.67 of 6 = 5 shares: one dropout is fine, two are not
    secure_weighted_mean(vectors, weights, clip=1.0, threshold=0.67, drop={3}, seed=0)
    with pytest.raises(SecAggError, match="needs 5 surviving clients.*at most 1 may drop"):
        secure_weighted_mean(vectors, weights, clip=1.0, threshold=0.67, drop={1, 3}, seed=0)


def test_a_cohort_too_small_for_the_protocol_is_refused():
    with pytest.raises(SecAggError, match="cohort of at least 3"):
        secure_weighted_mean(
            _vectors(2, 5), {0: 1.0, 1: 1.0}, clip=1.0, threshold=0.5, drop=set(), seed=0
        )


def test_values_outside_the_clip_are_clamped_and_counted():
    vectors = {0: np.array([5.0, 0.0]), 1: np.array([0.0, 0.0]), 2: np.array([0.0, -3.0])}
    result = secure_weighted_mean(
        vectors, dict.fromkeys(vectors, 1.0), clip=1.0, threshold=0.67, drop=set(), seed=0
    )
    assert result.clamped == 2
    np.testing.assert_allclose(result.mean, [1 / 3, -1 / 3], atol=1e-8)
