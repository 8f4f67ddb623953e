"""Privacy accounting through Opacus' accountants (RDP, or PRV for tighter numbers).

Both DP-FedAvg (a round samples a cohort of clients) and DP-SGD (a step samples a batch of
examples) compose a subsampled Gaussian mechanism; what differs is what is sampled. Sampling
is analysed as Poisson sampling at rate ``cohort / clients`` (or ``batch / examples``), the
usual approximation for fixed-size sampling without replacement (as in TFF and Opacus).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from fedfm.errors import ConfigError

# RDP orders: Opacus' defaults (up to 63) plus larger ones, which low-noise settings need
ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 96, 128, 256, 512]


def _extra(kind: str) -> dict[str, list[float]]:
    return {"alphas": ORDERS} if kind == "rdp" else {}


def _accountant(kind: str):  # noqa: ANN202 (an Opacus accountant)
    logging.getLogger("opacus").setLevel(logging.ERROR)  # per-order convergence chatter
    from opacus.accountants import PRVAccountant, RDPAccountant  # noqa: PLC0415 (slow import)

    return {"rdp": RDPAccountant, "prv": PRVAccountant}[kind]()


def epsilon(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, kind: str = "rdp"
) -> float:
    """Epsilon at ``delta`` after ``steps`` subsampled Gaussian mechanisms (inf if no noise).

    Example:
        >>> round(epsilon(1.0, 0.1, 100, 1e-5), 2)
        7.9
    """
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    accountant = _accountant(kind)
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    with np.errstate(divide="ignore"):  # PRV at sample rate 1 takes log(1 - q) = -inf
        return float(accountant.get_epsilon(delta, **_extra(kind)))


def noise_for_epsilon(
    target_epsilon: float, sample_rate: float, steps: int, delta: float, kind: str = "rdp"
) -> float:
    """The smallest noise multiplier whose epsilon after ``steps`` is at most the target.

    Raises:
        ConfigError: no noise reaches the target (it is below the epsilon that even infinite
            noise spends at ``delta`` under the RDP conversion, or needs a noise multiplier
            above Opacus' search limit of 1e6).
    """
    floor = epsilon_floor(delta) if kind == "rdp" else 0.0
    too_low = (
        f"privacy.target_epsilon = {target_epsilon:g} is too small: at delta {delta:g} "
        f"({kind} accountant, sample rate {sample_rate:.3g}, {steps} rounds) "
    )
    fix = (
        "raise privacy.target_epsilon or privacy.delta, or set privacy.noise_multiplier "
        "(and target_epsilon = 0) instead of deriving it"
    )
    if target_epsilon <= floor:  # fails in Opacus only after ~17 slow evaluations
        raise ConfigError(f"{too_low}no amount of noise gets below epsilon {floor:.3g}: {fix}")
    from opacus.accountants.utils import MAX_SIGMA, get_noise_multiplier  # noqa: PLC0415

    logging.getLogger("opacus").setLevel(logging.ERROR)
    try:
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=kind,
                epsilon_tolerance=0.005,
                **_extra(kind),
            )
        )
    except ValueError as err:  # Opacus: "The privacy budget is too low."
        raise ConfigError(
            f"{too_low}it needs a noise multiplier above {MAX_SIGMA:g}: {fix}"
        ) from err


def epsilon_floor(delta: float) -> float:
    """The least epsilon the RDP accountant reports at ``delta`` over :data:`ORDERS`, for any
    noise: its RDP-to-DP conversion (Balle et al., 2020, as in Opacus) with zero RDP."""
    return min(-(math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a) for a in ORDERS)


@dataclass(frozen=True)
class Budget:
    """A run's client-level privacy plan, fixed before round 1.

    Attributes:
        noise_multiplier: z (the noise stddev over the clip norm).
        sample_rate: cohort size over the number of clients.
        rounds: rounds the run may take without exceeding ``target_epsilon``.
        delta: the delta every epsilon is reported at.
        kind: the accountant.
    """

    noise_multiplier: float
    sample_rate: float
    rounds: int
    delta: float
    kind: str

    def epsilon(self, rounds: int) -> float:
        return epsilon(self.noise_multiplier, self.sample_rate, rounds, self.delta, self.kind)


def plan_budget(
    *,
    noise_multiplier: float,
    target_epsilon: float,
    sample_rate: float,
    rounds: int,
    delta: float,
    kind: str,
    over_budget: str,
) -> Budget:
    """Resolve the noise and the rounds a run may take; refuse a run that cannot fit.

    With ``noise_multiplier = 0`` the noise is the least that keeps ``rounds`` rounds within
    ``target_epsilon``. With both set, a run whose ``rounds`` would spend more than the
    target is refused (``over_budget = "refuse"``) or cut to the rounds that fit ("stop").
    """
    if noise_multiplier == 0:
        z = noise_for_epsilon(target_epsilon, sample_rate, rounds, delta, kind)
        return Budget(z, sample_rate, rounds, delta, kind)
    budget = Budget(noise_multiplier, sample_rate, rounds, delta, kind)
    if target_epsilon == 0:
        return budget
    spent = budget.epsilon(rounds)
    if spent <= target_epsilon:
        return budget
    fits = _rounds_within(budget, target_epsilon)
    if over_budget == "stop" and fits > 0:
        return Budget(noise_multiplier, sample_rate, fits, delta, kind)
    needed = noise_for_epsilon(target_epsilon, sample_rate, rounds, delta, kind)
    cut = f"cut rounds to <= {fits}" if fits else "no number of rounds fits at this noise"
    stop = "set privacy.over_budget = 'stop' to run only the rounds that fit, " if fits else ""
    raise ConfigError(
        f"privacy: {rounds} rounds at noise_multiplier = {noise_multiplier:g} and sample rate "
        f"{sample_rate:.4g} spend epsilon {spent:.3g} > privacy.target_epsilon = "
        f"{target_epsilon:g} (delta {delta:g}). Raise privacy.noise_multiplier to >= "
        f"{needed:.3g} ({cut}), {stop}or set noise_multiplier = 0 to derive it"
    )


def _rounds_within(budget: Budget, target_epsilon: float) -> int:
    """The most rounds whose epsilon is at most the target (binary search; monotone)."""
    lo, hi = 0, budget.rounds
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if budget.epsilon(mid) <= target_epsilon:
            lo = mid
        else:
            hi = mid - 1
    return lo
