"""Synthetic data (``[synthetic]``): labelled examples written by a generative FM, used for
a server warm-up before round 1, mixed into every client's data, or in place of it
(:mod:`fedfm.synthetic`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from fedfm.config import RunConfig
from fedfm.features.base import Feature, Record, register

if TYPE_CHECKING:
    from fedfm.runtime.job import Job
    from fedfm.synthetic.dataset import SyntheticSet


@register
class Synthetic(Feature):
    """Options: ``synthetic`` (the set, when the caller made it already: ``execute`` does,
    to show its progress), ``warmup`` (``False``: skip the server warm-up, as a worker that
    only trains clients does)."""

    name = "synthetic"

    def __init__(
        self,
        cfg: RunConfig,
        *,
        synthetic: SyntheticSet | None = None,
        warmup: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(cfg)
        if synthetic is None:  # before the model loads and seeds its fresh tensors
            from rich.console import Console

            from fedfm.synthetic.build import synthesize

            synthetic = synthesize(cfg, console=Console(quiet=True))
        self.set: SyntheticSet = synthetic
        self.warmup = warmup
        self.info: Record = {}

    @classmethod
    def active(cls, cfg: RunConfig) -> bool:
        return cfg.synthetic.mode != "none"

    @classmethod
    def problems(cls, flat: dict[str, Any]) -> list[str]:
        problems = []
        unit = ("synthetic.top_p", "synthetic.near_duplicate", "synthetic.contamination_similarity")
        for key in unit:
            if not 0 < flat[key] <= 1:
                problems.append(f"{key} = {flat[key]!r} must be in (0, 1]")
        if not 0 <= flat["synthetic.min_confidence"] < 1:
            value = flat["synthetic.min_confidence"]
            problems.append(f"synthetic.min_confidence = {value!r} must be in [0, 1)")
        if flat["synthetic.min_words"] > flat["synthetic.max_words"]:
            problems.append(
                f"synthetic.min_words = {flat['synthetic.min_words']} is above "
                f"synthetic.max_words = {flat['synthetic.max_words']}: no text could pass the "
                "length filter"
            )
        mode = flat["synthetic.mode"]
        if mode != "none" and flat["attack.kind"] in ("label_flip", "backdoor"):
            problems.append(
                f"synthetic.mode = {mode!r} with attack.kind = {flat['attack.kind']!r}: poisoned "
                "copies of a mixed real and synthetic pool are not supported; drop one of the two"
            )
        if mode == "client_mix" and flat["synthetic.ratio"] == 0:
            problems.append("synthetic.mode = 'client_mix' with synthetic.ratio = 0 adds nothing")
        return problems

    def prepare(self, job: Job) -> None:
        """The synthetic examples join the training pool (after the real ones), the clients
        get them as the mode says, and the server warms the model up on them."""
        from fedfm.attacks import concat
        from fedfm.data.batching import encode
        from fedfm.resources.types import Split
        from fedfm.synthetic.dataset import synthetic_summary
        from fedfm.synthetic.mix import with_synthetic
        from fedfm.synthetic.warmup import server_warmup

        cfg, synthetic = self.cfg, self.set
        rows = np.arange(len(job.train), len(job.train) + len(synthetic))
        written = Split(synthetic.texts, synthetic.labels)
        job.train = concat(
            job.train, encode(written, job.tokenizer, max_length=cfg.data.max_length)
        )
        job.federation = with_synthetic(
            job.federation, rows, mode=cfg.synthetic.mode, ratio=cfg.synthetic.ratio, seed=cfg.seed
        )
        self.info = synthetic_summary(synthetic, cfg.synthetic.mode)
        if cfg.synthetic.mode == "server_warmup" and self.warmup:
            self.info |= server_warmup(job.model, job.task, job.train, rows, cfg)

    def banner(self, job: Job) -> list[str]:
        info = self.info
        if "warmup_seconds" not in info:
            return []
        return [
            f"server warm-up: {info['warmup_steps']} steps on {info['warmup_examples']} synthetic "
            f"examples in {info['warmup_seconds']:.1f} s (loss {info['warmup_loss']:.3f})"
        ]

    def summary(self, job: Job, records: list[Record]) -> Record:
        return dict(self.info)
