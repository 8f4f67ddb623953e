"""Clipping, the adaptive clip norm and the Gaussian mechanism: property-based checks."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedfm.errors import ConfigError
from fedfm.privacy.clipping import clip_update, l2_norm, next_clip, split_noise_multiplier
from fedfm.privacy.noise import add_gaussian_noise

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)
vectors = arrays(np.float32, st.integers(1, 40), elements=finite)


@given(a=vectors, b=vectors, bound=st.floats(1e-3, 1e3))
def test_clipped_norm_is_min_of_norm_and_bound_and_direction_is_kept(a, b, bound):
    params = {"a": torch.from_numpy(a), "b": torch.from_numpy(b)}
    clipped, norm = clip_update(params, bound)
    assert norm == pytest.approx(
        math.sqrt(float((a.astype(np.float64) ** 2).sum() + (b.astype(np.float64) ** 2).sum()))
    )
    assert l2_norm(clipped) <= bound * (1 + 1e-5) + 1e-6
    assert l2_norm(clipped) == pytest.approx(min(norm, bound), rel=1e-4, abs=1e-5)
    if norm > 0:  # a positive multiple of the input: clipping never rotates the update
        factor = l2_norm(clipped) / norm
        for k in params:
            torch.testing.assert_close(clipped[k], params[k] * factor, rtol=1e-4, atol=1e-5)


def test_clip_rejects_a_non_positive_bound():
    with pytest.raises(ValueError, match="clip norm must be > 0"):
        clip_update({"w": torch.ones(2)}, 0.0)


@given(
    clip=st.floats(1e-3, 1e3),
    b=st.floats(0, 1),
    gamma=st.floats(0.01, 0.99),
    lr=st.floats(0.01, 1),
)
def test_adaptive_clip_moves_toward_the_target_quantile(clip, b, gamma, lr):
    new = next_clip(clip, b, gamma, lr)
    assert new > 0
    if b > gamma:  # more updates inside the bound than wanted: shrink it
        assert new < clip
    elif b < gamma:
        assert new > clip
    assert new == pytest.approx(clip * math.exp(-lr * (b - gamma)))


def test_adaptive_clip_converges_to_the_quantile_of_fixed_norms():
    norms = np.linspace(0.1, 10, 101)
    clip = 50.0
    for _ in range(400):
        clip = next_clip(clip, float((norms <= clip).mean()), 0.5, 0.2)
    assert clip == pytest.approx(float(np.median(norms)), rel=0.1)


@given(z=st.floats(0.1, 10), sigma_b=st.floats(0.1, 50))
def test_split_noise_keeps_the_total_privacy_of_one_mechanism(z, sigma_b):
    if z >= 2 * sigma_b:
        with pytest.raises(ConfigError, match="count_noise"):  # named by the CLI, no traceback
            split_noise_multiplier(z, sigma_b)
        return
    z_delta = split_noise_multiplier(z, sigma_b)
    assert z_delta >= z  # the update pays for the count's release with more noise
    assert z_delta**-2 + (2 * sigma_b) ** -2 == pytest.approx(z**-2)


@settings(max_examples=20, deadline=None)
@given(std=st.floats(0.01, 10), seed=st.integers(0, 2**31 - 1))
def test_gaussian_noise_has_the_stated_spread_and_is_seeded(std, seed):
    params = {"w": torch.zeros(20_000), "b": torch.full((3,), 5.0)}
    noisy = add_gaussian_noise(params, std, torch.Generator().manual_seed(seed))
    again = add_gaussian_noise(params, std, torch.Generator().manual_seed(seed))
    torch.testing.assert_close(noisy["w"], again["w"])
    assert float(noisy["w"].std()) == pytest.approx(std, rel=0.05)
    assert abs(float(noisy["w"].mean())) < 5 * std / math.sqrt(20_000)
    assert torch.equal(params["w"], torch.zeros(20_000))  # the input is left alone


def test_negative_noise_is_refused():
    with pytest.raises(ValueError, match="stddev must be >= 0"):
        add_gaussian_noise({"w": torch.zeros(1)}, -1.0, torch.Generator())
