"""Robust reductions: each resists the outliers it is built for, and matches the mean when
every client is honest and identical."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfm.update.robust import (
    bound_norms,
    coordinate_median,
    krum_scores,
    multi_krum,
    trimmed_mean,
)


def _honest_and_evil(n_honest, n_evil, seed=0):
    rng = np.random.default_rng(seed)
    honest = [
        {"w": torch.tensor(rng.normal(1.0, 0.1, 8), dtype=torch.float32)} for _ in range(n_honest)
    ]
    evil = [{"w": torch.full((8,), -100.0)} for _ in range(n_evil)]
    return honest, evil


@settings(max_examples=30, deadline=None)
@given(n_honest=st.integers(5, 12), n_evil=st.integers(0, 2))
def test_median_and_trimmed_mean_stay_with_the_honest_majority(n_honest, n_evil):
    honest, evil = _honest_and_evil(n_honest, n_evil)
    for reduced in (coordinate_median(honest + evil), trimmed_mean(honest + evil, 0.3)):
        assert reduced["w"].min() > 0.5 and reduced["w"].max() < 1.5


def test_median_of_an_even_count_averages_the_middle_pair():
    ds = [{"w": torch.tensor([v])} for v in (1.0, 2.0, 4.0, 100.0)]
    assert coordinate_median(ds)["w"].item() == 3.0


def test_trimmed_mean_with_no_trim_is_the_mean():
    ds = [{"w": torch.tensor([v, -v])} for v in (1.0, 2.0, 6.0)]
    torch.testing.assert_close(trimmed_mean(ds, 0.0)["w"], torch.tensor([3.0, -3.0]))
    with pytest.raises(ValueError, match="robust.trim"):
        trimmed_mean(ds, 0.5)


def test_multi_krum_drops_the_attackers_and_krum_picks_an_honest_update():
    honest, evil = _honest_and_evil(8, 2)
    mean, kept = multi_krum(honest + evil, [1.0] * 10, byzantine=2, keep=8)
    assert sorted(kept) == list(range(8))
    torch.testing.assert_close(mean["w"], torch.stack([h["w"] for h in honest]).mean(0))
    _, (one,) = multi_krum(honest + evil, [1.0] * 10, byzantine=2, keep=1)
    assert one < 8


def test_krum_refuses_a_cohort_too_small_for_its_f():
    honest, _ = _honest_and_evil(4, 0)
    with pytest.raises(ValueError, match="cohort > robust.byzantine \\+ 2"):
        krum_scores(honest, byzantine=2)


def test_norm_bounding_scales_only_the_large_updates():
    small, big = {"w": torch.tensor([0.3, 0.4])}, {"w": torch.tensor([30.0, 40.0])}
    (s, b), norms = bound_norms([small, big], 1.0)
    torch.testing.assert_close(s["w"], small["w"])
    torch.testing.assert_close(b["w"], torch.tensor([0.6, 0.8]))
    assert norms == pytest.approx([0.5, 50.0])
