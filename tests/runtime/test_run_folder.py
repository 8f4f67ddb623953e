"""Starting a run: errors before work, no debris, and fresh start and --resume that agree."""

import json

import pytest

from fedfm.cli import main
from fedfm.config import load_config
from fedfm.runtime import run as run_module
from fedfm.runtime.run_folder import folder_state, prepare_run_dir

FAST = [
    "data.dataset=digits",
    "model.name=mlp",
    "adapter.method=full",
    "data.num_clients=4",
    "rounds=1",
]


def _run(output_dir, *overrides, extra=()):
    args = ["run", *extra]
    for item in (*FAST, f"output_dir={output_dir}", "name=r", *overrides):
        args += ["--set", item]
    return main(args)


def _error_line(capsys, *, before_work: bool = True) -> str:
    """The one error line; ``before_work``: nothing before it (not even the run's header)."""
    lines = capsys.readouterr().out.strip().splitlines()
    assert "Traceback" not in "\n".join(lines) and lines[-1].startswith("error:"), lines
    assert len(lines) == 1 if before_work else lines[0].startswith("fedfm run"), lines
    return lines[-1]


@pytest.mark.parametrize(
    ("overrides", "message", "before_work"),
    [
        (["data.dataset=nope"], "is neither a registered dataset", True),
        (["output_dir={file}/runs"], "is a file, not a folder", True),
        (["privacy.noise=central", "privacy.target_epsilon=0.0001"], "is too small", True),
        (["model.name=minilm"], "set model.name = 'mlp'", False),  # found building the job
    ],
)
def test_a_failed_start_is_one_line_and_leaves_no_folder(
    tmp_path, capsys, overrides, message, before_work
):
    (tmp_path / "file").write_text("not a folder")
    output_dir = tmp_path / "runs"
    overrides = [o.format(file=tmp_path / "file") for o in overrides]
    assert _run(output_dir, *overrides) == 2
    assert message in _error_line(capsys, before_work=before_work)
    assert not output_dir.exists()


def test_an_unwritable_output_dir_is_refused(tmp_path, capsys, monkeypatch):
    # tests run as root, whom chmod does not stop: pretend the folder is read-only
    monkeypatch.setattr("os.access", lambda path, mode: False)
    assert _run(tmp_path) == 2
    assert f"{tmp_path} is not writable" in _error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_start_keeps_a_folder_that_existed(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    assert _run(tmp_path, "model.name=minilm") == 2
    assert "set model.name = 'mlp'" in _error_line(capsys, before_work=False)
    assert (tmp_path / "r").is_dir()


def test_ctrl_c_in_round_one_leaves_nothing_and_the_same_command_runs(
    tmp_path, capsys, monkeypatch
):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "run_round", interrupt)
    assert _run(tmp_path) == 130
    assert "stopped before its first round ended" in capsys.readouterr().out
    assert not (tmp_path / "r").exists()
    monkeypatch.undo()
    assert _run(tmp_path) == 0


def test_a_folder_killed_before_round_one_is_restarted_not_resumed(tmp_path, capsys):
    # what a kill -9 in round 1 leaves: the config, the run id, the round-0 record
    cfg = load_config(None, [*FAST, f"output_dir={tmp_path}", "name=r", "eval.initial=true"])
    run_dir = prepare_run_dir(cfg, overwrite=False)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"round": 0}) + "\n")
    assert folder_state(run_dir) == "not_started"
    assert main(["run", "--resume", str(run_dir)]) == 2
    out = _error_line(capsys)
    assert "nothing to resume" in out and f"`fedfm run {run_dir / 'config.toml'}`" in out
    assert main(["run", str(run_dir / "config.toml")]) == 0  # the command it gave: reuses it
    assert folder_state(run_dir) == "checkpointed"


def test_rounds_without_a_checkpoint_send_both_ways_to_overwrite(tmp_path, capsys):
    # what checkpoint.every = 0 (or a kill between a round's record and its checkpoint) leaves
    cfg = load_config(None, [*FAST, f"output_dir={tmp_path}", "name=r", "checkpoint.every=0"])
    run_dir = prepare_run_dir(cfg, overwrite=False)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"round": 1}) + "\n")
    assert folder_state(run_dir) == "unresumable"
    assert _run(tmp_path, "checkpoint.every=0") == 2
    fresh = _error_line(capsys)
    assert main(["run", "--resume", str(tmp_path / "r")]) == 2
    resume = _error_line(capsys)
    for out in (fresh, resume):
        assert "--overwrite" in out and "--resume" not in out
