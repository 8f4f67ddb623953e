"""The accountant against Google's dp-accounting computing the same mechanism, and the budget
rules (derive the noise, refuse, stop)."""

import math

import dp_accounting
import pytest

from fedfm.errors import ConfigError
from fedfm.privacy.accountant import epsilon, epsilon_floor, noise_for_epsilon, plan_budget


@pytest.mark.parametrize(
    ("z", "q", "steps"), [(1.0, 0.1, 100), (0.8, 0.05, 300), (2.0, 0.5, 20), (1.1, 0.01, 1000)]
)
def test_rdp_epsilon_matches_dp_accounting_reference(z, q, steps):
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps
    )
    reference = dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(1e-5)
    assert epsilon(z, q, steps, 1e-5, "rdp") == pytest.approx(reference, rel=0.01)


def test_prv_epsilon_matches_dp_accounting_pld_reference():
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.0)), 100
    )
    reference = dp_accounting.pld.PLDAccountant().compose(event).get_epsilon(1e-5)
    assert epsilon(1.0, 0.1, 100, 1e-5, "prv") == pytest.approx(reference, rel=0.02)


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    assert epsilon(1.0, 0.1, 0, 1e-5) == 0.0
    assert math.isinf(epsilon(0.0, 0.1, 10, 1e-5))
    assert epsilon(1.0, 0.1, 10, 1e-5) < epsilon(1.0, 0.1, 20, 1e-5)
    assert epsilon(2.0, 0.1, 10, 1e-5) < epsilon(1.0, 0.1, 10, 1e-5)


def test_derived_noise_meets_the_target_tightly():
    z = noise_for_epsilon(4.0, 0.1, 50, 1e-5)
    assert epsilon(z, 0.1, 50, 1e-5) <= 4.0
    assert epsilon(0.95 * z, 0.1, 50, 1e-5) > 4.0  # not wastefully large


def _plan(**kw):
    args = dict(
        noise_multiplier=1.0,
        target_epsilon=4.0,
        sample_rate=0.1,
        rounds=50,
        delta=1e-5,
        kind="rdp",
        over_budget="refuse",
    )
    return plan_budget(**{**args, **kw})


def test_a_run_over_budget_is_refused_with_the_fix():
    with pytest.raises(ConfigError) as err:
        _plan()
    message = str(err.value)
    assert "privacy.target_epsilon = 4" in message
    assert "noise_multiplier to >=" in message and "cut rounds to <=" in message
    assert "over_budget = 'stop'" in message


def test_a_budget_no_round_fits_says_so():
    with pytest.raises(ConfigError, match="no number of rounds fits"):
        _plan(noise_multiplier=0.3, target_epsilon=0.5)


def test_over_budget_stop_runs_only_the_rounds_that_fit():
    budget = _plan(over_budget="stop")
    assert 0 < budget.rounds < 50
    assert budget.epsilon(budget.rounds) <= 4.0 < budget.epsilon(budget.rounds + 1)


def test_target_mode_derives_the_noise_for_all_rounds():
    budget = _plan(noise_multiplier=0.0)
    assert budget.rounds == 50
    assert budget.epsilon(50) <= 4.0


def test_a_budget_no_noise_can_meet_is_refused_at_once():
    # Opacus' epsilon(655360, 0.5, 8, 1e-5), its last try before "budget too low", is 0.0083671
    assert epsilon_floor(1e-5) == pytest.approx(0.0083671, rel=1e-4)
    with pytest.raises(ConfigError, match=r"privacy.target_epsilon = 0.0001 is too small"):
        noise_for_epsilon(1e-4, 0.5, 8, 1e-5)  # Opacus: ValueError after ~30 s
