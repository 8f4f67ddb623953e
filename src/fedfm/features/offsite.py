"""Offsite tuning (``[offsite]``, Xiao, Lin & Han 2023): clients train the adapters of the
bottom and top layers on an *emulator*, the model with a uniform share of its frozen middle
layers dropped (:mod:`fedfm.models.emulator`), optionally distilled by the server on public
text first (:mod:`fedfm.models.distill`); the server plugs the trained adapters into the full
model and evaluates both. See ``docs/offsite.md``.

The middle layers' adapter tensors are frozen before the params are read, so they neither
train nor travel: the params are the adapter layers' tensors and the head. Every evaluated
round records the plug-in model's metrics as the usual ``test_*`` and the emulator's as
``emulator_test_*``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from fedfm.config import RunConfig
from fedfm.errors import ConfigError
from fedfm.features.base import Feature, Record, register

if TYPE_CHECKING:
    from fedfm.client.context import ClientContext
    from fedfm.data.batching import Encoded
    from fedfm.models.distill import Distilled
    from fedfm.models.emulator import Emulator
    from fedfm.runtime.job import Job
    from fedfm.runtime.simulation import RoundState

KEY = "offsite.enabled"
DISTILL_EVAL = 128  # public test examples the distillation loss is measured on, at most
DISTILL_STREAM = 2**23  # seed stream of the distillation's batch order


@register
class Offsite(Feature):
    """Builds the emulator (and distils it), freezes the middle layers' adapter tensors,
    hands every client the emulator, and evaluates the global params in it."""

    name = "offsite"

    def __init__(self, cfg: RunConfig, **options: Any) -> None:
        super().__init__(cfg)
        self.emulator: Emulator | None = None
        self.distilled: Distilled | None = None
        self.frozen: list[str] = []  # the middle layers' adapter tensors, frozen

    @classmethod
    def active(cls, cfg: RunConfig) -> bool:
        return cfg.offsite.enabled

    @classmethod
    def problems(cls, flat: dict[str, Any]) -> list[str]:
        problems = _range_problems(flat)
        if not flat[KEY]:
            return problems
        on = f"{KEY} = true"
        if flat["offsite.bottom"] + flat["offsite.top"] == 0:
            problems.append(
                f"{on} with offsite.bottom = 0 and offsite.top = 0: no layer's adapter would "
                "train; set offsite.bottom and/or offsite.top >= 1"
            )
        method = flat["adapter.method"]
        if method in ("full", "bitfit", "head"):
            why = {
                "full": "trains every tensor, the embeddings and the emulated middle included",
                "bitfit": "trains the bias terms of the embeddings and of every layer, the "
                "emulated middle included",
                "head": "trains no layer's tensors, so there are no adapter layers to tune",
            }[method]
            problems.append(
                f"{on} with adapter.method = {method!r}: offsite tuning trains the adapters "
                f"of the bottom and top layers only, but {method!r} {why}; use "
                "adapter.method = 'lora' or 'ia3'"
            )
        refused = [
            (flat.get("client.prefix_cache", False), "client.prefix_cache = true", "false",
             "the cache holds the full model's states, not the emulator's"),
            (flat["simulation.parallel_clients"] > 1,
             f"simulation.parallel_clients = {flat['simulation.parallel_clients']}", "0",
             "stacked clients do not run through the emulator"),
            (bool(flat["system.layers"]), f"system.layers = {list(flat['system.layers'])}",
             "[]", "offsite decides which layers train (offsite.bottom and offsite.top)"),
            (flat["backend"] != "simulation", f"backend = {flat['backend']!r}", "'simulation'",
             "a Ray actor or a remote client would need the server's (distilled) emulator"),
            (flat.get("synthetic.mode") == "server_warmup", "synthetic.mode = 'server_warmup'",
             "another mode", "the warm-up would train the middle layers' adapters too"),
            (flat.get("split.enabled", False), "split.enabled = true", "false",
             "split fine-tuning runs the bottom layers apart from the emulator"),
        ]  # fmt: skip
        problems += [
            f"{on} with {what}: {why}; set {what.split(' = ')[0]} = {fix} (or {KEY} = false)"
            for bad, what, fix, why in refused
            if bad
        ]
        if flat["offsite.distill_steps"] > 0 and not flat["offsite.distill_data"]:
            problems.append(
                f"offsite.distill_steps = {flat['offsite.distill_steps']} needs public text: "
                "set offsite.distill_data to a built-in text dataset (e.g. 'sms_spam') or a "
                "data file's path, or offsite.distill_steps = 0"
            )
        return problems

    def prepare(self, job: Job) -> None:
        from fedfm.models.emulator import Emulator, layer_map, middle_names, transformer_layers

        cfg = self.cfg.offsite
        layers = transformer_layers(job.model)
        if cfg.bottom + cfg.top >= len(layers):
            raise ConfigError(
                f"offsite.bottom = {cfg.bottom} + offsite.top = {cfg.top} >= the model's "
                f"{len(layers)} layers: no middle layer is left to emulate; lower them so "
                f"that their sum is at most {len(layers) - 1}"
            )
        lmap = layer_map(len(layers), bottom=cfg.bottom, top=cfg.top, keep=cfg.keep)
        if cfg.distill_steps > 0 and not lmap.kept:
            raise ConfigError(
                f"offsite.distill_steps = {cfg.distill_steps} with offsite.keep = {cfg.keep}: "
                f"the emulator keeps none of the {len(lmap.middle)} middle layers, so there "
                "is nothing to distil; raise offsite.keep or set offsite.distill_steps = 0"
            )
        named = dict(job.model.named_parameters())
        trainable = [n for n, p in named.items() if p.requires_grad]
        self.frozen = middle_names(trainable, lmap)
        for name in self.frozen:  # before the params are read: they neither train nor travel
            named[name].requires_grad_(False)
        self.emulator = Emulator(layers, lmap)

    def setup(self, job: Job) -> None:
        if self.cfg.offsite.distill_steps > 0:
            self._distill(job)

    def _distill(self, job: Job) -> None:
        from fedfm.data.batching import batches
        from fedfm.models.distill import distill

        assert self.emulator is not None  # prepare made it
        cfg, seed = self.cfg, self.cfg.seed
        train, test = public_texts(job, cfg.offsite.distill_data, cfg.offsite.distill_examples)

        def train_batches(epoch: int) -> Any:
            order_seed = int(np.random.default_rng([seed, DISTILL_STREAM, epoch]).integers(2**31))
            return batches(
                train, np.arange(len(train)), batch_size=cfg.client.batch_size,
                causal_lm=False, seed=order_seed,
            )  # fmt: skip

        held_out = list(
            batches(test, np.arange(len(test)), batch_size=cfg.eval.batch_size, causal_lm=False)
        )
        self.distilled = distill(
            job.model,
            self.emulator.layers,
            self.emulator.map,
            train_batches,
            held_out,
            steps=cfg.offsite.distill_steps,
            lr=cfg.offsite.distill_lr,
        )
        self.emulator = replace(self.emulator, replacements=self.distilled.replacements)

    def client_context(self, ctx: ClientContext) -> ClientContext:
        return replace(ctx, emulator=self.emulator)

    def evaluate(self, job: Job, state: RoundState) -> Record:
        """The global params in the emulator on the global test set (``emulator_test_*``);
        nothing for a personalised run, which has no global model."""
        from fedfm.models.params import set_params
        from fedfm.runtime.simulation import score

        if self.emulator is None or job.strategy.personalized:
            return {}
        set_params(job.model, state.global_params)
        with self.emulator.view():
            metrics = score(job, job.test, np.arange(len(job.test)))
        return {f"emulator_test_{k}": v for k, v in metrics.items()}

    def banner(self, job: Job) -> list[str]:
        if self.emulator is None:
            return []
        lines = [self.emulator.map.describe()]
        if self.distilled is not None:
            d = self.distilled
            lines.append(
                f"offsite: emulator distilled for {d.steps} steps on "
                f"{self.cfg.offsite.distill_data!r} in {d.seconds:.1f} s (middle-block MSE "
                f"{d.loss_before:.4g} -> {d.loss_after:.4g})"
            )
        return lines

    def summary(self, job: Job, records: list[Record]) -> Record:
        if self.emulator is None:
            return {}
        out: Record = {**self.emulator.map.as_record(), "frozen_adapter_tensors": len(self.frozen)}
        if self.distilled is not None:
            d = self.distilled
            out["distill"] = {
                "steps": d.steps,
                "data": self.cfg.offsite.distill_data,
                "loss_before": d.loss_before,
                "loss_after": d.loss_after,
                "seconds": round(d.seconds, 3),
            }
        return {"offsite": out}


def _range_problems(flat: dict[str, Any]) -> list[str]:
    problems = []
    for key in ("offsite.bottom", "offsite.top", "offsite.distill_steps"):
        if flat[key] < 0:
            problems.append(f"{key} = {flat[key]!r} must be >= 0")
    if not 0.0 <= flat["offsite.keep"] <= 1.0:
        problems.append(f"offsite.keep = {flat['offsite.keep']!r} must be in [0, 1]")
    if not flat["offsite.distill_lr"] > 0:
        problems.append(f"offsite.distill_lr = {flat['offsite.distill_lr']!r} must be > 0")
    if flat["offsite.distill_examples"] < 1:
        problems.append(
            f"offsite.distill_examples = {flat['offsite.distill_examples']!r} must be >= 1"
        )
    return problems


def public_texts(job: Job, name: str, limit: int) -> tuple[Encoded, Encoded]:
    """The public data ``offsite.distill_data`` names, tokenised with the job's tokenizer:
    (at most ``limit`` training texts, at most :data:`DISTILL_EVAL` test texts).

    Raises:
        ConfigError: a dataset whose examples are not texts (features, conversations).
    """
    from fedfm.config import DataConfig
    from fedfm.data.batching import encode
    from fedfm.data.federation import subsample
    from fedfm.data.load import load_data
    from fedfm.resources.types import Split

    cfg = job.cfg
    data = load_data(DataConfig(dataset=name, text_column=cfg.data.text_column))
    out = []
    for split, most in ((data.train, limit), (data.test, DISTILL_EVAL)):
        if data.modality != "text" or not len(split) or not isinstance(split.inputs[0], str):
            raise ConfigError(
                f"offsite.distill_data = {name!r} must hold texts (a text classification or "
                f"causal LM dataset with train and test examples), but its examples are "
                f"{type(split.inputs[0]).__name__ if len(split) else 'missing'}: name another"
            )
        small = subsample(split, most, seed=cfg.seed)
        texts = Split([str(small.inputs[i]) for i in range(len(small))], None)
        out.append(encode(texts, job.tokenizer, max_length=cfg.data.max_length))
    return out[0], out[1]
