"""The update chain: with no stage it is FedAvg's weighted mean; its server stages compose in
one order (bound, reduce, finish) and report in that order."""

import pytest
import torch

from fedfm.config import CompressionConfig, PrivacyConfig, RobustConfig, SecAggConfig
from fedfm.privacy.client_dp import ClientDP
from fedfm.strategies import Update
from fedfm.strategies.aggregate import weighted_average
from fedfm.update.chain import Chain
from fedfm.update.compress import Compress
from fedfm.update.dp import ClipStage
from fedfm.update.robust import NormBound, RobustReduce
from fedfm.update.secure_sum import SecureSum
from fedfm.update.stage import Cohort, Stage


def _updates(n=5, seed=0, dp_bits=False):
    g = torch.Generator().manual_seed(seed)
    return [
        Update(
            i,
            {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)},
            num_examples=10 + 7 * i,
            metrics={"dp/unclipped": float(i % 2)} if dp_bits else {},
        )
        for i in range(n)
    ]


def _dp(**kwargs):
    cfg = PrivacyConfig(noise="central", noise_multiplier=0.5, clip=1.0, **kwargs)
    return ClientDP(cfg, cohort=5, num_clients=20, rounds=3)


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_no_stage_is_the_example_weighted_mean_bit_for_bit():
    updates = _updates()
    reduced = Chain().reduce(3, updates)
    expected = weighted_average([u.delta for u in updates], [u.num_examples for u in updates])
    assert _equal(reduced.mean, expected)
    assert reduced.info == {} and (reduced.bytes_up, reduced.bytes_down) == (0, 0)


def test_only_encoding_stages_make_a_chain_true():
    assert not Chain()
    assert not Chain([NormBound(1.0), RobustReduce(RobustConfig(aggregator="median"))])
    assert Chain([Compress(CompressionConfig(method="topk", fraction=0.5))])
    assert Chain([ClipStage(_dp())])


def test_a_chain_has_at_most_one_reducing_stage():
    with pytest.raises(ValueError, match="at most one reducing stage, got robust, secagg"):
        Chain([RobustReduce(RobustConfig(aggregator="median")), SecureSum(SecAggConfig())])


def test_a_chain_that_ends_in_a_sum_is_refused():
    class SumOnly(Stage):
        name = "sum_only"
        takes_sum = True

    with pytest.raises(ValueError, match="ends with a sum"):
        Chain([SumOnly()]).reduce(1, _updates())


def test_central_dp_noises_the_plain_sum_with_the_rounds_server_seed():
    updates = _updates(dp_bits=True)
    dp, twin = _dp(adaptive_clip=True, count_noise=1.0), _dp(adaptive_clip=True, count_noise=1.0)
    reduced = Chain([ClipStage(dp)], seed=7).reduce(2, updates)
    total = {k: torch.stack([u.delta[k] for u in updates]).sum(dim=0) for k in updates[0].delta}
    cohort = Cohort(2, 7, updates, [u.delta for u in updates])
    mean, info = twin.noised_mean(total, 2.0, cohort.generator())  # bits: 0+1+0+1+0
    assert _equal(reduced.mean, mean) and reduced.info == info
    assert list(reduced.info) == ["dp_clip", "dp_noise_std", "dp_unclipped_fraction"]
    assert dp.clip == twin.clip != 1.0  # the adaptive clip moved


def test_secure_sum_carries_the_dp_bits_and_reports_before_the_noise():
    small = _updates(dp_bits=True)  # inside secagg.clip: nothing is clamped
    updates = [
        Update(u.client_id, {k: v / 10 for k, v in u.delta.items()}, 1, u.metrics) for u in small
    ]
    dp, plain = _dp(), _dp()
    secure = Chain([ClipStage(dp), SecureSum(SecAggConfig(enabled=True))], seed=1).reduce(
        1, updates
    )
    clear = Chain([ClipStage(plain)], seed=1).reduce(1, updates)
    for k in clear.mean:  # the same noise on a sum that differs only by fixed-point rounding
        torch.testing.assert_close(secure.mean[k], clear.mean[k], atol=1e-5, rtol=0)
    assert list(secure.info) == [
        "secagg_dropped",
        "secagg_seconds",
        "secagg_clamped",
        "dp_clip",
        "dp_noise_std",
    ]
    assert secure.info["secagg_clamped"] == 0
    assert secure.bytes_up > 0 and secure.bytes_down > 0


def test_norm_bound_runs_before_the_robust_reduction_and_reports_first():
    updates = _updates()
    updates[4] = Update(4, {k: 100 * v for k, v in updates[4].delta.items()}, 1)
    robust = RobustReduce(RobustConfig(aggregator="multikrum", byzantine=1))
    reduced = Chain([NormBound(3.0), robust]).reduce(1, updates)
    assert list(reduced.info) == ["robust_bounded", "robust_byzantine", "robust_kept"]
    assert 4 in reduced.info["robust_bounded"] and reduced.info["robust_byzantine"] == 1
    assert len(reduced.info["robust_kept"]) == 4
