"""Which strategies a config's update stages can serve, read from the strategies' capabilities.

The server stages (central noise, secure aggregation, robust reduction, norm bounds) act on
the cohort's deltas and hand the strategy one reduced mean delta. A strategy that reads more
than that (``Strategy.needs``) would step on tensors those stages never saw, and one that
sends nothing (``Strategy.communicates = False``) gives them nothing to act on. DP-SGD
clips per-example gradients, so it cannot cover a loss term or gradient correction that is
not per-example (``Strategy.local_terms``).
"""

from __future__ import annotations

from collections.abc import Callable

from fedfm.config import RunConfig
from fedfm.errors import ConfigError
from fedfm.strategies import STRATEGIES, Strategy

# what each value of Strategy.needs means: what the strategy reads besides the mean delta
NEEDS = {
    "factors": "reads every client's own LoRA factors (each raw update) besides the mean delta",
    "extras": "uploads tensors beside each update (Update.extras: control variate deltas)",
}


def server_settings(cfg: RunConfig) -> list[str]:
    """The config settings that put a server stage in the update chain, as ``key = value``."""
    settings = []
    if cfg.privacy.noise != "none":
        settings.append(f"privacy.noise = {cfg.privacy.noise!r}")
    if cfg.secagg.enabled:
        settings.append("secagg.enabled = true")
    if cfg.robust.aggregator != "mean":
        settings.append(f"robust.aggregator = {cfg.robust.aggregator!r}")
    if cfg.robust.norm_bound > 0:
        settings.append(f"robust.norm_bound = {cfg.robust.norm_bound:g}")
    return settings


def _serving(ok: Callable[[type[Strategy]], bool]) -> str:
    """The registered strategies for which ``ok`` holds, as a list to suggest."""
    return ", ".join(n for n in STRATEGIES if ok(STRATEGIES.get(n)))


def compatibility_problems(cfg: RunConfig, strategy_class: type[Strategy]) -> list[str]:
    """Why the update stages of ``cfg`` cannot serve ``strategy_class`` (empty when they can).

    Example:
        >>> from fedfm.config import load_config
        >>> cfg = load_config(None, ["strategy.name=scaffold", "secagg.enabled=true"])
        >>> print(compatibility_problems(cfg, STRATEGIES.get("scaffold"))[0][:61])
        strategy.name = 'scaffold' uploads tensors beside each update
    """
    problems = []
    name, settings = cfg.strategy.name, server_settings(cfg)
    stages = " and ".join(settings)
    them, cover = ("it", "covers") if len(settings) == 1 else ("them", "cover")
    plain = _serving(lambda s: s.communicates and not s.needs)
    if settings and not strategy_class.communicates:
        problems.append(
            f"strategy.name = {name!r} is a no-federation reference: no update travels, so "
            f"{stages} would act on nothing; drop {them}, or use a federated strategy: {plain}"
        )
    elif settings and strategy_class.needs:
        reads = " and ".join(NEEDS.get(n, f"needs {n!r}") for n in sorted(strategy_class.needs))
        problems.append(
            f"strategy.name = {name!r} {reads}, but {stages} {cover} only the mean delta: drop "
            f"{them}, or use one of: {plain}"
        )
    if cfg.dpsgd.enabled and strategy_class.local_terms:
        per_example = _serving(lambda s: s.communicates and not s.local_terms)
        problems.append(
            f"dpsgd.enabled = true with strategy.name = {name!r}: its local loss term or "
            "gradient correction is not per-example, so DP-SGD would ignore it; use one of: "
            f"{per_example}"
        )
    return problems


def check_compatibility(cfg: RunConfig, strategy_class: type[Strategy]) -> None:
    """Raise :class:`ConfigError` with every problem of :func:`compatibility_problems`."""
    problems = compatibility_problems(cfg, strategy_class)
    if problems:
        err = ConfigError("invalid config:\n  " + "\n  ".join(problems))
        err.problems = problems
        raise err
