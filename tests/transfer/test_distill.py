"""Distillation between the server's FM and the clients' small model: the mechanism on a
feature MLP, the config checks, and rounds of the ``distill`` feature on tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedfm.config import load_config
from fedfm.data.batching import Encoded
from fedfm.errors import ConfigError
from fedfm.resources.models import MLPClassifier
from fedfm.transfer.distill import distill_steps, logits_on
from fedfm.transfer.kd import kd_loss, teacher_probs


def test_distill_steps_pull_a_student_onto_its_teacher() -> None:
    torch.manual_seed(0)
    teacher, student = MLPClassifier(8, 4), MLPClassifier(8, 4)
    data = Encoded(
        ids=None,
        features=np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32),
        labels=None,
    )
    logits = logits_on(teacher, data, batch_size=5)  # batches of 5: same as one pass
    assert torch.allclose(logits, teacher(x=torch.from_numpy(data.features)).logits, atol=1e-6)
    targets = teacher_probs(logits, 2.0)
    before = float(kd_loss(logits_on(student, data, batch_size=64), targets, 2.0))
    losses = distill_steps(
        student, data, targets, steps=300, lr=1e-2, batch_size=16, temperature=2.0, seed=0
    )
    after = float(kd_loss(logits_on(student, data, batch_size=64), targets, 2.0))
    assert len(losses) == 300 and after < 0.1 * before
    agree = logits_on(student, data, batch_size=64).argmax(-1) == logits.argmax(-1)
    assert agree.float().mean() > 0.9
    # seeded: the same steps again give the same student
    torch.manual_seed(1)
    a, b = MLPClassifier(8, 4), MLPClassifier(8, 4)
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        distill_steps(
            m, data, targets, steps=3, lr=1e-2, batch_size=16, temperature=2.0, seed=[0, 1]
        )
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_config_checks_name_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(
            None, ["distill.enabled=true", "distill.directions=up", "distill.temperature=0"]
        )
    text = str(err.value)
    assert "distill.directions = 'up'" in text and "distill.temperature = 0" in text
    assert "distill.public" in text  # enabled without a public set
    with pytest.raises(ConfigError, match="model.name = 'mlp'"):
        load_config(
            None, ["distill.enabled=true", "distill.public=trec6", "model.name=mlp",
                   "data.dataset=digits"],
        )  # fmt: skip
    load_config(None, ["distill.temperature=0.5"])  # off: the values only are checked


def _overrides(folder: Path, tmp: Path, *extra: str) -> list[str]:
    return [
        f"model.name={folder}", "adapter.method=full", "data.max_train_examples=90",
        "data.max_test_examples=30", "data.num_clients=3", "data.min_client_size=4",
        "rounds=2", "client.steps=2", "client.batch_size=8", "checkpoint.every=0",
        f"output_dir={tmp}", "eval.batch_size=32", *extra,
    ]  # fmt: skip


DISTILL = ("distill.enabled=true", "distill.public=trec6", "distill.public_size=24",
           "distill.steps=3", "distill.batch_size=8", "distill.lr=1e-2")  # fmt: skip


@pytest.mark.parametrize("directions", ["both", "to_client", "to_teacher"])
def test_a_round_distils_in_the_directions_asked(
    tiny_model_dirs: dict[str, Path], tmp_path: Path, directions: str
) -> None:
    from fedfm.models.params import get_params
    from fedfm.runtime.job import build_job
    from fedfm.runtime.simulation import RoundState, run_round

    bert = tiny_model_dirs["bert"]
    cfg = load_config(
        None,
        _overrides(bert, tmp_path, *DISTILL, f"distill.teacher={bert}",
                   f"distill.directions={directions}"),
    )  # fmt: skip
    job = build_job(cfg)
    feature = job.feature("distill")
    teacher_before = get_params(feature.teacher)
    plain = build_job(load_config(None, _overrides(bert, tmp_path)))
    state = RoundState(0, job.initial_params)
    plain_state = RoundState(0, plain.initial_params)
    record = run_round(job, state)
    plain_record = run_round(plain, plain_state)

    to_client, to_teacher = directions != "to_teacher", directions != "to_client"
    assert ("distill_to_client_loss_first" in record) == to_client
    assert ("distill_to_teacher_loss_first" in record) == to_teacher
    assert 0 <= record["teacher_test_accuracy"] <= 1
    # the same cohort, updates and bytes as without distillation: nothing extra travels
    assert record["cohort"] == plain_record["cohort"]
    assert record["bytes_up"] == plain_record["bytes_up"] > 0
    changed = any(
        not torch.equal(state.global_params[k], plain_state.global_params[k])
        for k in state.global_params
    )
    assert changed == to_client
    teacher_after = get_params(feature.teacher)
    moved = any(not torch.equal(teacher_before[k], teacher_after[k]) for k in teacher_after)
    assert moved == to_teacher
    assert set(feature.tensor_state()) == set(teacher_after)


def test_a_run_with_distillation_records_and_summarises(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from fedfm.runtime.run import execute, prepare_run_dir

    bert = tiny_model_dirs["bert"]
    cfg = load_config(
        None, _overrides(bert, tmp_path, *DISTILL, f"distill.teacher={bert}", "name=kd")
    )
    summary = execute(cfg, run_dir=prepare_run_dir(cfg, overwrite=False))
    assert 0 <= summary["teacher_test_accuracy"] <= 1


def test_small_text_model_is_built_once_and_loads(tmp_path: Path) -> None:
    from fedfm.resources.models import load_model
    from fedfm.transfer.small import small_text_model

    folder = small_text_model(layers=1, hidden=16, heads=2, seed=3, root=tmp_path)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert small_text_model(layers=1, hidden=16, heads=2, seed=3, root=tmp_path) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    loaded = load_model(str(folder), task="classification", num_labels=6)
    assert loaded.model.config.num_hidden_layers == 1 and loaded.model.config.hidden_size == 16
    out = loaded.model(**loaded.tokenizer(["Who wrote Hamlet?"], return_tensors="pt"))
    assert out.logits.shape == (1, 6)
    assert not list(tmp_path.glob(".*"))  # no staging folder left behind
