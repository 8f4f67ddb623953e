"""Split fine-tuning (``[split]``): each client computes only the embeddings and its bottom
``split.layers`` layers; the server runs the rest on the activations it sends
(:mod:`fedfm.client.split`). This module checks the config, cuts the model, hands every
client's context the cut, and counts the activations and gradients each round carried.
See ``docs/split.md``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fedfm.config import RunConfig
from fedfm.errors import ConfigError
from fedfm.features.base import Feature, Record, register

if TYPE_CHECKING:
    from fedfm.client.context import ClientContext
    from fedfm.client.split import SplitModel
    from fedfm.runtime.job import Job
    from fedfm.runtime.simulation import RoundIntake, RoundPlan, RoundState
    from fedfm.strategies.base import Update

KEY = "split.enabled"
MiB = 2**20


@register
class Split(Feature):
    """Cuts the shared model at layer ``split.layers`` when the job is built; every client
    trains through the cut; a round's record gets ``split_bytes_up`` and
    ``split_bytes_down``, which are also in its ``bytes_up``, ``bytes_down`` and
    ``cum_bytes``."""

    name = "split"

    def __init__(self, cfg: RunConfig, **options: Any) -> None:
        super().__init__(cfg)
        self.split: SplitModel | None = None
        self._up = 0  # what this round's arrivals sent (reset with each round's record)
        self._down = 0

    @classmethod
    def active(cls, cfg: RunConfig) -> bool:
        return cfg.split.enabled

    @classmethod
    def problems(cls, flat: dict[str, Any]) -> list[str]:
        problems = []
        if flat["split.layers"] < 1:
            problems.append(
                f"split.layers = {flat['split.layers']!r} must be >= 1: the client computes "
                "the embeddings and layers 0..k-1"
            )
        for key in ("split.noise", "split.clip"):
            if not flat[key] >= 0:
                problems.append(f"{key} = {flat[key]!r} must be >= 0")
        if not flat[KEY]:
            return problems
        return problems + [
            f"{KEY} = true with {what}: {why}; {fix}"
            for bad, what, why, fix in _refused(flat)
            if bad
        ]

    def setup(self, job: Job) -> None:
        from fedfm.client.split import SplitModel, client_side
        from fedfm.models.prefix import DECODERS, ENCODERS, layer_stack, model_type

        cfg = self.cfg.split
        kind = model_type(job.model)
        if job.dataset.task == "preference":  # data.task = "auto" resolved from a file
            raise ConfigError(f"{KEY} = true with data.task = 'preference': {PAIRS}")
        if kind in DECODERS and not job.causal_lm:
            raise ConfigError(
                f"{KEY} = true with a {kind} classifier: its head pools the last non-pad "
                "token, which it finds from input_ids, and the server receives activations "
                f"only; set {KEY} = false (or train a generative task)"
            )
        if kind not in (*ENCODERS, *DECODERS):
            shown = kind or type(job.model).__name__
            raise ConfigError(
                f"{KEY} = true, but model {shown!r} is not one of the architectures the cut "
                f"is implemented for ({', '.join(ENCODERS)} encoders; {', '.join(DECODERS)} "
                f"decoders): set {KEY} = false"
            )
        if not job.strategy.communicates:
            raise ConfigError(
                f"{KEY} = true with strategy.name = {self.cfg.strategy.name!r}, a reference "
                "that has no server taking part in training: choose a federated strategy or "
                f"set {KEY} = false"
            )
        stack = layer_stack(job.model, generative=job.causal_lm)
        depth = len(stack.layers)
        if not 1 <= cfg.layers <= depth:
            raise ConfigError(
                f"split.layers = {cfg.layers}, but the model has {depth} layers: set "
                f"split.layers in [1, {depth}]"
            )
        names = list(job.initial_params)
        client = client_side(names, stack, cfg.layers)
        server = frozenset(names) - client
        if cfg.client_trains and not client:
            raise ConfigError(
                f"split.client_trains = true, but no trainable tensor lies below layer "
                f"{cfg.layers} (adapter.method = {self.cfg.adapter.method!r}): the client "
                "would have nothing to train; set split.client_trains = false, or use "
                "adapter.method = 'lora' or 'ia3'"
            )
        if not cfg.client_trains and not server:
            raise ConfigError(
                f"split.client_trains = false, but every trainable tensor lies below layer "
                f"{cfg.layers}: nothing would train; lower split.layers or set "
                "split.client_trains = true"
            )
        self.split = SplitModel(
            job.model,
            stack,
            cfg.layers,
            client_trains=cfg.client_trains,
            noise=cfg.noise,
            clip=cfg.clip,
            client_side=client,
            server_side=server,
        )

    @property
    def server_side(self) -> frozenset[str]:
        """Trainable tensors the server computes and keeps (:attr:`Job.server_side`)."""
        return self.split.server_side if self.split is not None else frozenset()

    def client_context(self, ctx: ClientContext) -> ClientContext:
        return replace(ctx, split=self.split)

    def banner(self, job: Job) -> list[str]:
        if self.split is None:
            return []
        cfg = self.cfg.split
        part = "trains (LoRA/IA3 below the cut)" if cfg.client_trains else "is frozen"
        return [
            f"split: clients compute the embeddings and layers 0-{cfg.layers - 1} of "
            f"{len(self.split.stack.layers)}; their part {part}; the server sees every "
            "example's activations and labels (they reveal the data: docs/split.md)"
        ]

    def received(self, job: Job, client_id: int, update: Update) -> None:
        # sent whether or not the update is kept
        self._up += int(update.metrics.get("split_bytes_up", 0))
        self._down += int(update.metrics.get("split_bytes_down", 0))

    def protocol_bytes(self, job: Job, plan: RoundPlan, intake: RoundIntake) -> tuple[int, int]:
        return self._up, self._down

    def round_record(
        self, job: Job, state: RoundState, plan: RoundPlan, intake: RoundIntake
    ) -> Record:
        record = {"split_bytes_up": self._up, "split_bytes_down": self._down}
        self._up = self._down = 0
        return record

    def summary(self, job: Job, records: list[Record]) -> Record:
        if self.split is None:
            return {}
        return {
            "split": {
                "layers": self.split.layers,
                "client_trains": self.split.client_trains,
                "bytes_up": sum(r.get("split_bytes_up", 0) for r in records),
                "bytes_down": sum(r.get("split_bytes_down", 0) for r in records),
            }
        }


PAIRS_WHY = (
    "a DPO example is a pair of sequences scored twice (with and without the adapter), a "
    "protocol the split does not carry"
)
PAIRS = f"{PAIRS_WHY}; set {KEY} = false"


def _refused(flat: dict[str, Any]) -> list[tuple[bool, str, str, str]]:
    """``(refused, setting, why, fix)`` for every setting split fine-tuning does not take."""
    backend, method = flat["backend"], flat["adapter.method"]
    privacy, noise = flat["privacy.noise"], flat["split.noise"]
    parallel = flat["simulation.parallel_clients"]
    return [
        (
            backend != "simulation",
            f"backend = {backend!r}",
            "the network protocol that would carry activations and gradients between a "
            "client and the server is not built (the simulator counts the bytes it would "
            "carry)",
            f"set backend = 'simulation' or {KEY} = false",
        ),
        (
            parallel > 1,
            f"simulation.parallel_clients = {parallel}",
            "stacked clients share one forward, which the cut does not split per client",
            "set simulation.parallel_clients = 0",
        ),
        (
            privacy != "none" and not noise > 0,
            f"privacy.noise = {privacy!r}",
            "client-level DP protects the update, but every activation and label the client "
            "sends reaches the server unprotected",
            "set split.noise > 0 (which is still not a DP guarantee on the data: see "
            "docs/split.md), or privacy.noise = 'none'",
        ),
        (
            flat["dpsgd.enabled"],
            "dpsgd.enabled = true",
            "DP-SGD's per-example clipping across the cut is not built, and the activations "
            "and labels sent would not be covered by its guarantee",
            f"set dpsgd.enabled = false or {KEY} = false",
        ),
        (
            flat["client.prefix_cache"],
            "client.prefix_cache = true",
            "both cut the model, and the two cuts are not composed",
            f"set client.prefix_cache = false (split.client_trains = false runs the client's "
            f"frozen part once per step instead) or {KEY} = false",
        ),
        (
            flat["data.task"] == "preference",
            "data.task = 'preference'",
            PAIRS_WHY,
            f"set {KEY} = false",
        ),
        (
            method in ("full", "bitfit"),
            f"adapter.method = {method!r}",
            "the embeddings train, and a decoder's head shares their tensor (tied "
            "embeddings), so the two halves would train one tensor",
            "use 'lora', 'ia3' or 'head'",
        ),
        (
            flat["compression.method"] != "none",
            f"compression.method = {flat['compression.method']!r}",
            "the server-side part's delta never travels and the compressed wire form does "
            "not keep the tensors' names the byte count goes by",
            "set compression.method = 'none'",
        ),
        (
            flat["secagg.enabled"],
            "secagg.enabled = true",
            "the server computes the server-side part itself and sees every activation: "
            "masking the sum of the updates hides nothing that matters",
            "set secagg.enabled = false",
        ),
        (
            flat.get("asynchronous.enabled", False),
            "asynchronous.enabled = true",
            "the buffered asynchronous driver sends the params its own way, and does not "
            "leave the server-side part out of what it counts as sent",
            "set asynchronous.enabled = false",
        ),
        (
            flat.get("offsite.enabled", False),
            "offsite.enabled = true",
            "offsite tuning's emulator drops middle layers, and the two cuts are not composed",
            "set offsite.enabled = false",
        ),
        (
            flat["client.gradient_checkpointing"],
            "client.gradient_checkpointing = true",
            "recomputing the client's layers in the backward pass through the cut is not built",
            "set client.gradient_checkpointing = false",
        ),
    ]
