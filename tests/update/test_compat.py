"""Which strategies the update stages serve: read from capabilities, refused before any data
loads, with the setting, the strategy and what to use instead."""

import re

import pytest

from fedfm.config import load_config
from fedfm.errors import ConfigError
from fedfm.runtime import job as job_module
from fedfm.strategies import STRATEGIES
from fedfm.update.compat import compatibility_problems

NOISE = ["privacy.noise=central", "privacy.noise_multiplier=1"]
DPSGD = ["dpsgd.enabled=true", "dpsgd.noise_multiplier=1"]


def _problems(*overrides):
    cfg = load_config(None, list(overrides))
    return compatibility_problems(cfg, STRATEGIES.get(cfg.strategy.name))


def test_capabilities_are_declared_where_the_algorithm_needs_them():
    flags = {
        n: (s.communicates, s.needs, s.local_terms) for n in STRATEGIES for s in [STRATEGIES.get(n)]
    }
    assert flags["flora"] == (True, frozenset({"factors"}), False)
    assert flags["scaffold"] == (True, frozenset({"extras"}), True)
    assert flags["fedprox"] == (True, frozenset(), True)
    assert not flags["local"][0] and not flags["centralized"][0]
    assert flags["fedavg"] == flags["fedadam"] == (True, frozenset(), False)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["strategy.name=flora", *NOISE],
            "strategy.name = 'flora' reads every client's own LoRA factors .* but "
            "privacy.noise = 'central' covers only the mean delta: drop it",
        ),
        (
            ["strategy.name=scaffold", "robust.aggregator=median", "robust.norm_bound=1"],
            "'scaffold' uploads tensors .* robust.aggregator = 'median' and "
            "robust.norm_bound = 1 cover only the mean delta: drop them",
        ),
        (
            ["strategy.name=local", "robust.aggregator=median"],
            "'local' is a no-federation reference: .* robust.aggregator = 'median' would act on "
            "nothing",
        ),
        (["strategy.name=centralized", *NOISE], "'centralized' is a no-federation reference"),
        (
            ["strategy.name=fedprox", *DPSGD],
            "dpsgd.enabled = true with strategy.name = 'fedprox': .* not per-example",
        ),
        (
            ["strategy.name=scaffold", *DPSGD],
            "dpsgd.enabled = true with strategy.name = 'scaffold'",
        ),
    ],
)
def test_a_stage_a_strategy_cannot_take_is_refused(overrides, message):
    problems = _problems(*overrides)
    assert len(problems) == 1 and re.search(message, problems[0]), problems
    assert "use " in problems[0] and "fedavg" in problems[0]  # what to use instead


@pytest.mark.parametrize(
    "overrides",
    [
        ["strategy.name=fedavg", *NOISE, "robust.norm_bound=1"],
        ["strategy.name=fedyogi", *NOISE, "secagg.enabled=true"],
        ["strategy.name=fedadam", "robust.aggregator=median", *DPSGD],
        ["strategy.name=flora", "compression.method=topk", *DPSGD],  # client stages only
        ["strategy.name=scaffold", "compression.method=quantize"],
        ["strategy.name=local", *DPSGD],
    ],
)
def test_stages_a_strategy_can_take_pass(overrides):
    assert _problems(*overrides) == []


def test_the_suggestions_name_only_strategies_that_would_serve():
    (problem,) = _problems("strategy.name=flora", "secagg.enabled=true")
    suggested = problem.rsplit("use one of: ", 1)[1].split(", ")
    assert suggested == ["fedadagrad", "fedadam", "fedavg", "fedavgm", "fedprox", "fedyogi"]


def test_build_job_refuses_before_the_dataset_loads(monkeypatch):
    def no_load(cfg):
        raise AssertionError("the dataset was loaded before the strategy was checked")

    monkeypatch.setattr(job_module, "load_data", no_load)
    cfg = load_config(None, ["strategy.name=scaffold", *NOISE, *DPSGD])
    with pytest.raises(ConfigError) as err:
        job_module.build_job(cfg)
    assert len(err.value.problems) == 2  # every problem at once
