"""The experiment runner on a tiny fake experiment (two digits + MLP arms, 2 rounds each).

Runs are reused, resumed or redone by comparing each arm's resolved config with the run
folder's ``config.toml``; the report gathers a title, the experiment's body, an optional
quick-version note and ``discussion.md``.
"""

import json
import re
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from fedfm.config import load_config, to_toml
from fedfm.errors import ConfigError, FedFMError
from fedfm.experiments import runner
from fedfm.experiments.analysis import final, fmt, md_table, plot_panels
from fedfm.experiments.base import EXPERIMENTS, Arm, ArmResult, Experiment
from fedfm.experiments.runner import run_experiment
from fedfm.runtime.checkpoint import CHECKPOINT_FILE
from fedfm.runtime.run import execute, prepare_run_dir

NAME = "test-tiny-runner"
TITLE = "Tiny: two seeds of digits + MLP"
BODY = "Final test accuracy over seeds:"
ARMS = ["mlp-s0", "mlp-s1"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASE = (
    "data.dataset=digits",
    "model.name=mlp",
    "adapter.method=full",
    "rounds=2",
    "data.num_clients=3",
    "data.max_train_examples=150",
    "data.max_test_examples=60",
    "checkpoint.every=1",
)


@EXPERIMENTS.register(NAME)
class TinyExperiment(Experiment):
    name = NAME
    title = TITLE
    extra: Mapping[str, tuple[str, ...]] = {}  # arm name -> more overrides (tests patch it)

    def arms(self, quick: bool) -> list[Arm]:
        return [
            Arm(
                f"mlp-s{seed}",
                (*BASE, f"seed={seed}", *self.extra.get(f"mlp-s{seed}", ())),
                {"model": "mlp", "seed": seed},
            )
            for seed in (0, 1)
        ]

    def measure(self, quick: bool, work_dir: Path) -> dict[str, Any]:
        return {"quick": quick, "work_dir_is_dir": work_dir.is_dir()}

    def report(
        self,
        results: list[ArmResult],
        measurements: Mapping[str, Any],
        out_dir: Path,
        *,
        quick: bool,
    ) -> str:
        plot_panels(
            [("digits", {"mlp": results})], "test_accuracy", out_dir / "acc.png", ylabel="acc"
        )
        accs = [final(r.records, "test_accuracy") for r in results]
        rows = [[r.arm.name, fmt(a)] for r, a in zip(results, accs, strict=True)]
        return f"{BODY} {fmt(accs)}\n\n{md_table(['arm', 'acc'], rows)}\n![acc](acc.png)\n"


@EXPERIMENTS.register(NAME + "-dup")
class DuplicateArms(Experiment):
    name = NAME + "-dup"
    title = "Duplicate arm names"

    def arms(self, quick: bool) -> list[Arm]:
        return [Arm("same", BASE), Arm("same", (*BASE, "seed=1"))]

    def report(self, results, measurements, out_dir, *, quick):  # pragma: no cover
        return ""


def _quiet() -> Console:
    return Console(quiet=True)


def _run(out: Path, runs: Path, **kwargs) -> Path:
    return run_experiment(NAME, out_dir=out, runs_dir=runs, console=_quiet(), **kwargs)


def _results(out: Path) -> dict[str, Any]:
    return json.loads((out / "results.json").read_text())


def _mtimes(runs: Path) -> dict[str, int]:
    return {
        f"{arm}/{f}": (runs / arm / f).stat().st_mtime_ns
        for arm in ARMS
        for f in ("metrics.jsonl", "summary.json", CHECKPOINT_FILE)
    }


def _spy(monkeypatch) -> list[tuple[str, bool]]:
    """Record ``(run name, resume)`` of every run the runner executes."""
    calls: list[tuple[str, bool]] = []
    real = runner.execute

    def spy(cfg, **kwargs):
        calls.append((cfg.run_name, kwargs.get("resume", False)))
        return real(cfg, **kwargs)

    monkeypatch.setattr(runner, "execute", spy)
    return calls


def _forbid_runs(monkeypatch) -> None:
    def fail(cfg, **kwargs):
        raise AssertionError(f"arm {cfg.run_name} was run again instead of reused")

    monkeypatch.setattr(runner, "execute", fail)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """The experiment run once from scratch; later tests reuse its runs folder."""
    base = tmp_path_factory.mktemp("exp")
    out, runs = base / "out", base / "runs"
    report = _run(out, runs)
    return SimpleNamespace(out=out, runs=runs, report=report, mtimes=_mtimes(runs))


# ---------------------------------------------------------------- a full run


def test_report_has_title_body_and_plot(done):
    assert done.report == done.out / "report.md"
    text = done.report.read_text()
    assert text.startswith(f"# {TITLE}\n")
    assert f"`fedfm exp {NAME}`" in text
    assert BODY in text
    assert re.search(rf"{BODY} \d\.\d{{3}} ± \d\.\d{{3}}", text)  # numbers from the runs
    assert "| mlp-s0 |" in text and "| mlp-s1 |" in text
    assert "Quick version" not in text
    assert "## Discussion" not in text
    assert (done.out / "acc.png").read_bytes().startswith(PNG_MAGIC)


def test_results_json_holds_every_arm(done):
    results = _results(done.out)
    assert results["experiment"] == NAME
    assert results["quick"] is False
    assert results["measurements"] == {"quick": False, "work_dir_is_dir": True}
    assert [a["name"] for a in results["arms"]] == ARMS
    for seed, arm in enumerate(results["arms"]):
        assert arm["labels"] == {"model": "mlp", "seed": seed}
        assert arm["config"]["seed"] == seed
        assert arm["config"]["name"] == f"mlp-s{seed}"
        assert arm["config"]["data"]["dataset"] == "digits"
        assert arm["config"]["output_dir"] == str(done.runs)
        assert [r["round"] for r in arm["records"]] == [1, 2]
        assert arm["summary"]["rounds_completed"] == 2
        assert arm["summary"]["final"]["test_accuracy"] == arm["records"][-1]["test_accuracy"]
        # the same as the run folder's own files
        run_dir = done.runs / arm["name"]
        assert arm["summary"] == json.loads((run_dir / "summary.json").read_text())
        assert len(arm["records"]) == len((run_dir / "metrics.jsonl").read_text().splitlines())


def test_arm_configs_are_written_and_load(done):
    for arm in TinyExperiment().arms(quick=False):
        path = done.out / "configs" / f"{arm.name}.toml"
        cfg = load_config(path)
        assert cfg == runner.arm_config(arm, done.runs)
        assert path.read_text() == to_toml(cfg)
        assert path.read_text() == (done.runs / arm.name / "config.toml").read_text()
    assert sorted(p.name for p in (done.out / "configs").iterdir()) == [f"{a}.toml" for a in ARMS]


# ---------------------------------------------------------------- reuse, discussion, quick
# (these share the module's runs folder and forbid running anything)


def test_second_call_reuses_finished_runs(done, tmp_path, monkeypatch):
    _forbid_runs(monkeypatch)
    report = _run(tmp_path / "out", done.runs)
    assert _mtimes(done.runs) == done.mtimes
    assert _results(tmp_path / "out")["arms"] == _results(done.out)["arms"]
    assert report.read_text() == done.report.read_text()


def test_discussion_is_appended(done, tmp_path, monkeypatch):
    _forbid_runs(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    (out / "discussion.md").write_text("The two seeds agree.\n")
    text = _run(out, done.runs).read_text()
    assert text.endswith("\n## Discussion\n\nThe two seeds agree.\n")
    assert text.index(BODY) < text.index("## Discussion")
    assert text.startswith(f"# {TITLE}\n")


def test_quick_report_carries_the_quick_note(done, tmp_path, monkeypatch):
    _forbid_runs(monkeypatch)  # the tiny experiment's quick arms are its full arms
    out = tmp_path / "out"
    text = _run(out, done.runs, quick=True).read_text()
    assert text.startswith(f"# {TITLE}\n")
    assert "Quick version" in text
    assert f"`fedfm exp {NAME} --quick`" in text
    assert text.index("Quick version") < text.index(BODY)
    results = _results(out)
    assert results["quick"] is True
    assert results["measurements"]["quick"] is True


def _copy_runs(src: Path, dst: Path) -> Path:
    """The finished arm runs of ``src`` under ``dst``, their configs pointed at ``dst``."""
    for arm in ARMS:
        (dst / arm).mkdir(parents=True)
        for f in (src / arm).iterdir():
            if f.is_file():
                (dst / arm / f.name).write_bytes(f.read_bytes())
        toml = dst / arm / "config.toml"
        toml.write_text(toml.read_text().replace(str(src), str(dst)))
    return dst


def test_measurements_are_cached_until_remeasure(done, tmp_path, monkeypatch):
    _forbid_runs(monkeypatch)
    calls = []
    real = TinyExperiment.measure

    def counting(self, quick, work_dir):
        calls.append(quick)
        return {**real(self, quick, work_dir), "nan": float("nan")}

    monkeypatch.setattr(TinyExperiment, "measure", counting)
    runs = _copy_runs(done.runs, tmp_path / "runs")  # so the cache starts empty
    _run(tmp_path / "a", runs)
    _run(tmp_path / "b", runs)
    assert calls == [False]  # the second report reused the first one's measurements
    assert _results(tmp_path / "b")["measurements"] == _results(tmp_path / "a")["measurements"]
    assert _results(tmp_path / "b")["measurements"]["nan"] is None
    _run(tmp_path / "c", runs, remeasure=True)
    _run(tmp_path / "d", runs, quick=True)  # other arms (here: quick) are measured afresh
    assert calls == [False, False, True]


def test_a_run_made_before_a_config_key_existed_is_reused(done, tmp_path, monkeypatch):
    """config.toml files written by an older fedfm lack newer keys: still the same config."""
    _forbid_runs(monkeypatch)
    runs = _copy_runs(done.runs, tmp_path / "runs")
    for arm in ARMS:
        toml = (runs / arm / "config.toml").read_text()
        old = re.sub(r"\n\[compression\][^\[]*", "\n", toml)
        assert old != toml
        (runs / arm / "config.toml").write_text(old)
    _run(tmp_path / "out", runs)  # _forbid_runs: nothing is re-run


def test_the_same_runs_folder_spelled_another_way_is_reused(done, tmp_path, monkeypatch):
    """A relative path to the runs folder must not look like a new config and wipe the runs."""
    _forbid_runs(monkeypatch)
    monkeypatch.chdir(done.runs.parent)
    _run(tmp_path / "out", Path(done.runs.name))
    assert _mtimes(done.runs) == done.mtimes


# ---------------------------------------------------------------- redo, resume, --only


def test_changed_overrides_rerun_only_that_arm(tmp_path, monkeypatch):
    out, runs = tmp_path / "out", tmp_path / "runs"
    _run(out, runs)
    before = _mtimes(runs)
    monkeypatch.setattr(TinyExperiment, "extra", {"mlp-s1": ("client.lr=0.02",)})
    calls = _spy(monkeypatch)
    _run(out, runs)
    assert calls == [("mlp-s1", False)]  # redone from scratch, not resumed
    after = _mtimes(runs)
    assert {k: v for k, v in after.items() if k.startswith("mlp-s0/")} == {
        k: v for k, v in before.items() if k.startswith("mlp-s0/")
    }
    assert after["mlp-s1/summary.json"] != before["mlp-s1/summary.json"]
    assert load_config(runs / "mlp-s1" / "config.toml").client.lr == 0.02
    arms = {a["name"]: a for a in _results(out)["arms"]}
    assert arms["mlp-s1"]["config"]["client"]["lr"] == 0.02
    assert arms["mlp-s0"]["config"]["client"]["lr"] != 0.02
    assert load_config(out / "configs" / "mlp-s1.toml").client.lr == 0.02


def test_interrupted_arm_is_resumed_not_restarted(tmp_path, monkeypatch):
    out, runs = tmp_path / "out", tmp_path / "runs"
    arm = TinyExperiment().arms(quick=False)[1]
    cfg = runner.arm_config(arm, runs)
    run_dir = prepare_run_dir(cfg, overwrite=False)
    assert execute(cfg, run_dir=run_dir, stop_after=1, console=_quiet()) == {"stopped_after": 1}
    assert (run_dir / CHECKPOINT_FILE).is_file() and not (run_dir / "summary.json").exists()
    (round_1,) = (run_dir / "metrics.jsonl").read_text().splitlines()

    calls = _spy(monkeypatch)
    _run(out, runs)
    assert calls == [("mlp-s0", False), ("mlp-s1", True)]
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert lines[0] == round_1  # round 1 kept as logged before the interruption
    assert [json.loads(x)["round"] for x in lines] == [1, 2]
    assert json.loads((run_dir / "summary.json").read_text())["rounds_completed"] == 2
    arms = {a["name"]: a for a in _results(out)["arms"]}
    assert arms["mlp-s1"]["records"][0] == json.loads(round_1)


def test_only_runs_matching_arms_and_writes_no_report(tmp_path, monkeypatch):
    out, runs = tmp_path / "out", tmp_path / "runs"
    calls = _spy(monkeypatch)
    report = _run(out, runs, only="*s1*")
    assert calls == [("mlp-s1", False)]
    assert report == out / "report.md"
    assert not out.exists()  # no report, results or configs
    assert (runs / "mlp-s1" / "summary.json").is_file()
    assert not (runs / "mlp-s0").exists()


def test_only_matching_nothing_raises(tmp_path, monkeypatch):
    _forbid_runs(monkeypatch)
    with pytest.raises(FedFMError, match=r"'\*nothing\*' matches no arm.*mlp-s0, mlp-s1"):
        _run(tmp_path / "out", tmp_path / "runs", only="*nothing*")
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- errors


def test_duplicate_arm_names_raise(tmp_path, monkeypatch):
    _forbid_runs(monkeypatch)
    with pytest.raises(FedFMError, match="duplicate arm names"):
        run_experiment(
            NAME + "-dup", out_dir=tmp_path / "o", runs_dir=tmp_path / "r", console=_quiet()
        )


def test_unknown_experiment_has_a_did_you_mean(tmp_path):
    with pytest.raises(ConfigError, match=f"Did you mean '{NAME}'") as info:
        run_experiment(
            "test-tiny-runer", out_dir=tmp_path / "o", runs_dir=tmp_path / "r", console=_quiet()
        )
    assert "unknown experiment" in str(info.value)
    assert not (tmp_path / "o").exists()


def test_registering_a_name_twice_raises():
    with pytest.raises(ValueError, match="already registered"):
        EXPERIMENTS.register(NAME)(TinyExperiment)
