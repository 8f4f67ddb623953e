"""``[distill]``: ensemble distillation between the server's FM and the clients' small model
(FedDF, Lin et al. 2020; the mutual transfer of FedMKT, Fan et al. 2024).

The run's ``model.name`` is the clients' small model, trained by ordinary rounds. The server
also holds the FM (``distill.teacher`` with a LoRA adapter and a classifier head, or the
final params of a finished run, ``distill.teacher_adapter``) and an unlabelled public set
(``distill.public``). After every aggregation (:meth:`Feature.after_aggregate`):

1. ``to_client``: the FM's soft targets on the public set (softmax at ``T``) are distilled
   into the aggregated small model (``distill.steps`` Adam steps of ``T² · KL``), which
   becomes the round's global params;
2. ``to_teacher``: the ensemble of the cohort's small models (each ``previous + delta``; the
   mean of their softmaxes at ``T``, FedDF) is distilled into the FM's adapter and head.

Both use the FM as it was at the start of the round. Nothing extra travels: the FM and the
public set live on the server, so the round's bytes are the small model's, as without
distillation. The record adds each direction's first and last step loss; the evaluation
adds the FM's accuracy on the test set (``teacher_test_accuracy``), after step 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedfm.config import RunConfig
from fedfm.features.base import Feature, Record, register
from fedfm.transfer.choices import DIRECTIONS

if TYPE_CHECKING:
    import torch

    from fedfm.data.batching import Encoded
    from fedfm.models.params import Params
    from fedfm.runtime.job import Job
    from fedfm.runtime.simulation import RoundIntake, RoundPlan, RoundState
    from fedfm.strategies.base import Update


@register
class Distill(Feature):
    """The FM on the server and the clients' small model teach each other every round."""

    name = "distill"

    def __init__(self, cfg: RunConfig, **options: Any) -> None:
        super().__init__(cfg)
        self.teacher: torch.nn.Module | None = None
        self.public_student: Encoded | None = None  # the public set, small model's tokenizer
        self.public_teacher: Encoded | None = None  # the same texts, the FM's tokenizer
        self.test_teacher: Encoded | None = None  # the global test set, the FM's tokenizer
        self.pending: Record = {}
        self.last_accuracy: float | None = None

    @classmethod
    def active(cls, cfg: RunConfig) -> bool:
        return cfg.distill.enabled

    @classmethod
    def problems(cls, flat: dict[str, Any]) -> list[str]:
        problems = []
        if flat["distill.directions"] not in DIRECTIONS:
            problems.append(
                f"distill.directions = {flat['distill.directions']!r} is not one of "
                f"{', '.join(DIRECTIONS)}"
            )
        for key in ("distill.steps", "distill.batch_size"):
            if flat[key] < 1:
                problems.append(f"{key} = {flat[key]} must be >= 1")
        for key in ("distill.temperature", "distill.lr"):
            if not flat[key] > 0:
                problems.append(f"{key} = {flat[key]} must be > 0")
        for key in ("distill.teacher_lr", "distill.public_size"):
            if flat[key] < 0:
                problems.append(f"{key} = {flat[key]} must be >= 0 (0 = {_ZERO[key]})")
        if not flat["distill.enabled"]:
            return problems
        if not flat["distill.public"]:
            problems.append(
                "distill.enabled = true needs an unlabelled public set: set distill.public to "
                "a registry dataset name (e.g. 'trec6') or a data file"
            )
        if flat["backend"] != "simulation":
            problems.append(
                f"distill.enabled = true with backend = {flat['backend']!r}: distillation is "
                "built and tested for the in-process simulator only; set backend = 'simulation'"
            )
        if flat["model.name"] == "mlp":
            problems.append(
                "distill.enabled = true with model.name = 'mlp': the FM teaches through text, "
                "so the clients' small model must read text (a Hugging Face folder)"
            )
        return problems

    # ------------------------------------------------------------------ set-up
    def setup(self, job: Job) -> None:
        import torch

        from fedfm.data.batching import encode
        from fedfm.errors import ConfigError
        from fedfm.resources.types import CLASSIFICATION, Split

        if job.dataset.task != CLASSIFICATION or job.tokenizer is None:
            raise ConfigError(
                f"distill.enabled = true needs a text classification dataset, but "
                f"data.dataset = {job.cfg.data.dataset!r} is {job.dataset.task} "
                f"({job.dataset.modality}): set distill.enabled = false"
            )
        with torch.random.fork_rng():  # the run's own draws stay as without distillation
            torch.manual_seed(job.cfg.seed)
            self.teacher, tokenizer = _load_teacher(job.cfg, job.dataset.num_labels)
        self.teacher.to(next(job.model.parameters()).device)
        texts = _public_texts(job.cfg)
        public = Split(inputs=texts, labels=None)
        max_length = job.cfg.data.max_length
        self.public_student = encode(public, job.tokenizer, max_length=max_length)
        self.public_teacher = encode(public, tokenizer, max_length=max_length)
        self.test_teacher = encode(job.dataset.test, tokenizer, max_length=max_length)

    def banner(self, job: Job) -> list[str]:
        d = self.cfg.distill
        assert self.public_student is not None
        return [
            f"distill: {d.directions}, T = {d.temperature}, {d.steps} steps, public set "
            f"{d.public!r} ({len(self.public_student)} texts, on the server)"
        ]

    # ------------------------------------------------------------------ rounds
    def after_aggregate(
        self, job: Job, state: RoundState, previous: Params, updates: list[Update]
    ) -> None:
        from fedfm.models.params import get_params, set_params
        from fedfm.transfer.distill import distill_steps, logits_on
        from fedfm.transfer.kd import ensemble_probs, teacher_probs

        d = self.cfg.distill
        assert self.teacher is not None and self.public_student is not None
        assert self.public_teacher is not None
        round_ = state.round + 1  # the round being finished
        steps: dict[str, Any] = {
            "steps": d.steps,
            "batch_size": d.batch_size,
            "temperature": d.temperature,
        }
        record: Record = {}
        fm_targets = None
        if d.directions in ("both", "to_client"):  # the FM as it was at the round's start
            fm_logits = logits_on(self.teacher, self.public_teacher, batch_size=d.batch_size * 4)
            fm_targets = teacher_probs(fm_logits, d.temperature)
        if d.directions in ("both", "to_teacher"):
            members = []
            for update in updates:  # a member's model: the params it started from + its delta
                set_params(job.model, {k: previous[k] + update.delta[k] for k in previous})
                members.append(
                    logits_on(job.model, self.public_student, batch_size=d.batch_size * 4)
                )
            ensemble = ensemble_probs(members, d.temperature)
            losses = distill_steps(
                self.teacher, self.public_teacher, ensemble, lr=d.teacher_lr or d.lr,
                seed=_seed(job.cfg.seed, round_, 2), **steps,
            )  # fmt: skip
            record.update(_losses("distill_to_teacher", losses))
        set_params(job.model, state.global_params)
        if fm_targets is not None:
            losses = distill_steps(
                job.model, self.public_student, fm_targets, lr=d.lr,
                seed=_seed(job.cfg.seed, round_, 1), **steps,
            )  # fmt: skip
            state.global_params = get_params(job.model)
            record.update(_losses("distill_to_client", losses))
        self.pending = record

    def round_record(
        self, job: Job, state: RoundState, plan: RoundPlan, intake: RoundIntake
    ) -> Record:
        record, self.pending = self.pending, {}
        return record

    def evaluate(self, job: Job, state: RoundState) -> Record:
        import numpy as np

        from fedfm.data.batching import batches

        assert self.teacher is not None and self.test_teacher is not None
        data = self.test_teacher
        scored = job.task.evaluate(
            self.teacher,
            batches(
                data, np.arange(len(data)), batch_size=job.cfg.eval.batch_size, causal_lm=False
            ),
        )
        self.last_accuracy = float(scored["accuracy"])
        return {"teacher_test_accuracy": self.last_accuracy}

    def summary(self, job: Job, records: list[Record]) -> Record:
        return {"teacher_test_accuracy": self.last_accuracy}

    # ------------------------------------------------------------------ checkpoints
    def tensor_state(self) -> dict[str, torch.Tensor]:
        from fedfm.models.params import get_params

        return get_params(self.teacher) if self.teacher is not None else {}

    def load_tensor_state(self, tensors: dict[str, torch.Tensor]) -> None:
        from fedfm.models.params import set_params

        if self.teacher is not None and tensors:
            set_params(self.teacher, tensors)


_ZERO = {"distill.teacher_lr": "`distill.lr`", "distill.public_size": "all of it"}


def _seed(seed: int, round_: int, stream: int) -> list[int]:
    return [seed, round_, stream]


def _losses(prefix: str, losses: list[float]) -> Record:
    return {f"{prefix}_loss_first": losses[0], f"{prefix}_loss_last": losses[-1]}


def _load_teacher(cfg: RunConfig, num_labels: int) -> tuple[torch.nn.Module, Any]:
    """The FM with its adapter and head: a fresh default LoRA, or a finished run's params."""
    from fedfm.config import AdapterConfig, load_config
    from fedfm.models.adapters import apply_adapter
    from fedfm.models.init_adapter import init_params
    from fedfm.models.params import backbone_hash, get_params, set_params
    from fedfm.resources.models import load_model
    from fedfm.resources.types import CLASSIFICATION
    from fedfm.run_files import CONFIG_FILE

    name, adapter, pretrained = cfg.distill.teacher, AdapterConfig(), True
    folder = cfg.distill.teacher_adapter
    if folder:  # that run's model and adapter, so its params fit
        run_cfg = load_config(Path(folder).expanduser() / CONFIG_FILE)
        name, adapter, pretrained = run_cfg.model.name, run_cfg.adapter, run_cfg.model.pretrained
    loaded = load_model(name, task=CLASSIFICATION, num_labels=num_labels, pretrained=pretrained)
    model = apply_adapter(
        loaded.model, adapter, architecture=loaded.architecture, task=CLASSIFICATION
    )
    if folder:
        params = init_params(folder, get_params(model), backbone=backbone_hash(model))
        set_params(model, params)
    return model.eval(), loaded.tokenizer


def _public_texts(cfg: RunConfig) -> list[str]:
    """A seeded subsample of ``distill.public``'s training texts (labels never read)."""
    from dataclasses import replace

    from fedfm.data.federation import subsample
    from fedfm.data.load import is_file_dataset, load_data

    name = cfg.distill.public  # a file is read as plain texts: no label column needed
    task = "causal_lm" if is_file_dataset(name) else "auto"
    data = replace(cfg.data, dataset=name, task=task, label_names=())
    split = subsample(load_data(data).train, cfg.distill.public_size, seed=cfg.seed + 1)
    return [str(t) for t in split.inputs]
