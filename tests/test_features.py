"""Optional features that declare themselves: one module each, registered once, in order;
the job and the run loop over the active ones."""

import importlib

import pytest

from fedfm.config import load_config
from fedfm.errors import ConfigError
from fedfm.features import FEATURES, MODULES, Feature
from fedfm.features.base import register
from fedfm.report.metrics import read_records
from fedfm.runtime.job import build_job
from fedfm.runtime.run import execute, prepare_run_dir
from fedfm.runtime.simulation import RoundState, run_round

FAST = [
    "data.dataset=digits",
    "model.name=mlp",
    "adapter.method=full",
    "data.num_clients=6",
    "data.max_train_examples=300",
    "rounds=2",
]


def test_each_feature_module_registers_one_feature_in_the_listed_order():
    assert [f.name for f in FEATURES] == list(MODULES)
    for name, cls in zip(MODULES, FEATURES, strict=True):
        assert cls.__module__ == f"fedfm.features.{name}"
        assert cls in vars(importlib.import_module(cls.__module__)).values()
    with pytest.raises(ValueError, match="already registered"):
        register(type("Again", (FEATURES[0],), {}))


@pytest.mark.parametrize(
    ("overrides", "active"),
    [
        ([], []),
        (["privacy.noise=central", "privacy.noise_multiplier=1.0"], ["client_dp"]),
        (
            ["attack.kind=sign_flip", "attack.fraction=0.3", "robust.aggregator=median"],
            ["attacks", "robust"],
        ),
        (["system.speeds=[0.5, 1.0]", "dpsgd.enabled=true"], ["system", "dpsgd"]),
        (['strategy.personal=["head"]', "secagg.enabled=true"], ["secagg", "personal"]),
    ],
)
def test_the_job_holds_exactly_the_features_its_config_switches_on(overrides, active):
    job = build_job(load_config(None, [*FAST, *overrides]))
    assert [f.name for f in job.features] == active
    assert all(job.feature(name) is not None for name in active)
    assert job.feature("synthetic") is None


def test_a_feature_checks_its_own_keys_when_the_config_loads():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["attack.kind=scale", "dpsgd.enabled=true", "dpsgd.noise_multiplier=0"])
    assert err.value.problems == [  # every feature's problems at once, in feature order
        "attack.kind = 'scale' with attack.fraction = 0 attacks nobody: set attack.fraction in "
        "(0, 1)",
        "dpsgd.enabled = true needs dpsgd.noise_multiplier > 0",
    ]


def test_a_new_feature_is_one_class_and_the_round_and_summary_carry_it(tmp_path, monkeypatch):
    class Counter(Feature):
        """Counts the updates that arrive (a toy feature)."""

        name = "counter"

        def __init__(self, cfg, **options):
            super().__init__(cfg)
            self.arrived = 0

        @classmethod
        def active(cls, cfg):
            return True

        def received(self, job, client_id, update):
            self.arrived += 1

        def round_record(self, job, state, plan, intake):
            return {"arrived_so_far": self.arrived}

        def summary(self, job, records):
            return {"arrived": self.arrived}

        def state_dict(self):
            return {"arrived": self.arrived}

        def load_state_dict(self, state):
            self.arrived = state.get("arrived", 0)

    monkeypatch.setattr("fedfm.features.base.FEATURES", [*FEATURES, Counter])
    cfg = load_config(None, [*FAST, f"output_dir={tmp_path}", "name=counted"])
    run_dir = prepare_run_dir(cfg, overwrite=False)
    execute(cfg, run_dir=run_dir, stop_after=1)
    summary = execute(cfg, run_dir=run_dir, resume=True)  # the count comes back from the checkpoint
    records = read_records(run_dir / "metrics.jsonl")
    assert [r["arrived_so_far"] for r in records] == [3, 6]
    assert summary["arrived"] == 6


def test_dpsgd_steps_survive_a_resume(tmp_path, full_and_resumed):
    overrides = [*FAST, f"output_dir={tmp_path}", "rounds=3", "dpsgd.enabled=true"]
    full, resumed, cut_dir = full_and_resumed(overrides, 2)
    assert resumed["dpsgd_epsilon_max"] == full["dpsgd_epsilon_max"] > 0
    eps = [r["dpsgd_epsilon_max"] for r in read_records(cut_dir / "metrics.jsonl")]
    assert eps == [
        r["dpsgd_epsilon_max"] for r in read_records(tmp_path / "full" / "metrics.jsonl")
    ]


def test_the_round_record_lists_the_system_clock_before_the_update_chain():
    job = build_job(
        load_config(
            None,
            [
                *FAST,
                "system.speeds=[0.5, 1.0]",
                "system.deadline=100",
                "attack.kind=sign_flip",
                "attack.fraction=0.3",
                "privacy.noise=central",
                "privacy.noise_multiplier=1.0",
            ],
        )
    )
    record = run_round(job, RoundState(round=0, global_params=job.initial_params))
    keys = list(record)
    order = ["excluded", "stragglers", "sim_time", "dp_clip", "malicious", "epsilon"]
    assert [k for k in keys if k in order] == order
