"""``eval.initial``: a round-0 record that evaluates the model before any training."""

from rich.console import Console

from fedfm.config import load_config
from fedfm.report.metrics import read_records
from fedfm.runtime.job import build_job
from fedfm.runtime.run import execute, prepare_run_dir, resume_config
from fedfm.runtime.simulation import (
    RoundState,
    evaluate_clients,
    evaluate_global,
    initial_record,
)

FAST = [
    "data.dataset=digits",
    "model.name=mlp",
    "adapter.method=full",
    "data.num_clients=4",
    "strategy.fraction=0.5",
    "client.lr=0.05",
    "client.optimizer=sgd",
]


def _cfg(tmp_path, *extra):
    return load_config(None, [*FAST, f"output_dir={tmp_path}", *extra])


def _records(run_dir):
    return read_records(run_dir / "metrics.jsonl")


def _run(cfg, **kwargs):
    run_dir = prepare_run_dir(cfg, overwrite=False)
    return run_dir, execute(cfg, run_dir=run_dir, console=Console(quiet=True), **kwargs)


def test_initial_record_evaluates_the_untrained_model(tmp_path):
    cfg = _cfg(tmp_path, "rounds=2", "eval.initial=true", "eval.per_client=true", "name=init")
    run_dir, summary = _run(cfg)
    records = _records(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2]
    first = records[0]
    assert first["cum_bytes"] == first["full_model_cum_bytes"] == 0
    assert first["bytes_down"] == first["bytes_up"] == 0
    assert first["num_examples"] == 0 and first["cohort"] == [] and first["excluded"] == []
    assert "train_loss" not in first

    job = build_job(cfg)  # the same seed builds the same untrained params
    expected = evaluate_global(job, job.initial_params)
    for key, value in expected.items():
        assert first[f"test_{key}"] == value
    clients = evaluate_clients(job, job.initial_params)
    assert first["client_accuracy_mean"] == clients["client_accuracy_mean"]
    assert first["client_accuracy_worst10"] == clients["client_accuracy_worst10"]

    # round 0 is a reference point, not a result: the summary ignores it
    assert summary["rounds_completed"] == 2
    assert summary["best_test_accuracy"] == max(r["test_accuracy"] for r in records[1:])
    assert summary["final"]["test_accuracy"] == records[-1]["test_accuracy"]
    assert summary["excluded_updates"] == 0
    # ... and the rounds after it are the same as without it
    plain_cfg = _cfg(tmp_path, "rounds=2", "eval.per_client=true", "name=plain")
    plain_dir, _ = _run(plain_cfg)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(records[1:]) == strip(_records(plain_dir))


def test_without_initial_eval_the_first_record_is_round_one(tmp_path):
    run_dir, _ = _run(_cfg(tmp_path, "rounds=1", "name=plain"))
    assert [r["round"] for r in _records(run_dir)] == [1]


def test_initial_record_function(tmp_path):
    job = build_job(_cfg(tmp_path))
    state = RoundState(round=0, global_params=job.initial_params)
    record = initial_record(job, state)
    assert record["round"] == 0 and record["cum_bytes"] == 0
    assert record["test_accuracy"] == evaluate_global(job, job.initial_params)["accuracy"]
    assert "client_accuracy_mean" not in record  # eval.per_client is off
    assert record["seconds"] >= 0
    assert state.round == 0  # evaluating changes nothing


def test_resume_keeps_exactly_one_round_zero_record(tmp_path):
    overrides = ["rounds=3", "eval.initial=true", "checkpoint.every=1"]
    cfg = _cfg(tmp_path, *overrides, "name=cut")
    run_dir, stopped = _run(cfg, stop_after=1)
    assert stopped == {"stopped_after": 1}
    assert [r["round"] for r in _records(run_dir)] == [0, 1]

    summary = execute(
        resume_config(run_dir, []), run_dir=run_dir, resume=True, console=Console(quiet=True)
    )
    records = _records(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    assert summary["rounds_completed"] == 3

    full_cfg = _cfg(tmp_path, *overrides, "name=full")
    full_dir, full = _run(full_cfg)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(records) == strip(_records(full_dir))
    assert summary["final"] == full["final"]


def test_resume_from_an_older_checkpoint_keeps_round_zero(tmp_path):
    # checkpoint after round 2, crash after round 3: round 3 is dropped and redone
    overrides = ["rounds=4", "eval.initial=true", "checkpoint.every=2"]
    cfg = _cfg(tmp_path, *overrides, "name=cut")
    run_dir, _ = _run(cfg, stop_after=3)
    assert [r["round"] for r in _records(run_dir)] == [0, 1, 2, 3]
    execute(resume_config(run_dir, []), run_dir=run_dir, resume=True, console=Console(quiet=True))
    assert [r["round"] for r in _records(run_dir)] == [0, 1, 2, 3, 4]
