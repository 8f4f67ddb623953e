"""The client half of a round: local training, then the client's half of the update pipeline.

``fit`` starts from the global params (with the client's own tensors in place), trains with
the strategy's hooks, and returns the :class:`Upload`, the update's *wire form* exactly as
it travels (compressed, clipped, a low-rank client's first components only), beside the
:class:`~fedfm.client.state.ClientState` it keeps until it is next selected. Turning an
upload back into a delta is the server's job (:func:`fedfm.runtime.round.decode_upload`),
done once per upload whichever transport carried it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import torch

from fedfm.client.context import PIPELINE_STREAM, ClientContext, client_seed
from fedfm.client.split import SPLIT_STREAM
from fedfm.client.state import ClientState
from fedfm.client.trainer import LocalResult, train_locally
from fedfm.config import ClientConfig
from fedfm.data.batching import Batch, batches
from fedfm.data.federation import ClientData
from fedfm.models.layers import frozen_below
from fedfm.models.lora import lora_bytes_at_rank, truncate_rank
from fedfm.models.params import Params, payload_bytes, set_params, trainable_parameters
from fedfm.strategies.aggregate import subtract
from fedfm.strategies.base import LocalHooks
from fedfm.tasks import Task


@dataclass(frozen=True)
class Upload:
    """What a client sends after a round, as it travels.

    Attributes:
        wire: the update pipeline's wire form of the client's shared delta (without a
            pipeline, the delta itself); personal and frozen tensors are not in it, and a
            client of LoRA rank ``rank`` sends only its first ``rank`` components.
        extras: the strategy's own tensors (SCAFFOLD's control variate delta).
        metrics: ``train_loss``, ``steps`` and the pipeline's signals (DP's unclipped bit).
        bytes_up: exact serialised size of ``wire`` and ``extras`` plus 4 bytes per signal.
    """

    client_id: int
    wire: Params
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    extras: Params = field(default_factory=dict)
    bytes_up: int = 0
    rank: int = 0


def with_personal(params: Params, personal: Params) -> Params:
    """``params`` with a client's own tensors in place of the global ones."""
    return {**params, **personal} if personal else params


@dataclass(frozen=True)
class LocalPlan:
    """A client's local training as :func:`prepare` sets it up, before any step.

    Attributes:
        start: the params it starts from (the strategy's start, its personal tensors in
            place, a low-rank client's components above its rank zeroed).
        hooks: the strategy's client half (``frozen`` set for a client that trains only
            its top layers).
        task: the loss it trains on (balanced for its labels with ``client.loss``).
        make_batches: ``epoch -> batches``, seeded per (seed, round, client, epoch).
        cfg: the ``[client]`` config, with a resource profile's ``steps`` in place.
        dropout_seed: seeds torch's CPU generator before the first step (dropout).
    """

    start: Params
    hooks: LocalHooks
    task: Task
    make_batches: Callable[[int], Iterator[Batch]]
    cfg: ClientConfig
    dropout_seed: int


def prepare(
    ctx: ClientContext,
    client: ClientData,
    global_params: Params,
    payload: Params,
    state: ClientState,
    round_: int,
    *,
    rank: int = 0,
    steps: int = 0,
    layers: int = 0,
) -> LocalPlan:
    """Everything :func:`fit` decides before the first local step (arguments as ``fit``'s)."""
    strategy = ctx.strategy
    start = with_personal(strategy.client_start(global_params, state.strategy), state.personal)
    if rank:
        start = truncate_rank(start, rank)
    hooks = strategy.client_hooks(global_params, payload, state.strategy)
    frozen = frozen_below(list(start), layers)
    if ctx.split is not None:  # split.client_trains = false: the client's part is frozen
        frozen = frozen | ctx.split.frozen
    if frozen:
        hooks = replace(hooks, frozen=frozen)
    indices = ctx.indices(client)

    def make_batches(epoch: int) -> Iterator[Batch]:
        source = batches if ctx.prefix is None else ctx.prefix.batches  # client.prefix_cache
        return source(
            ctx.train,
            indices,
            batch_size=ctx.client.batch_size,
            causal_lm=ctx.causal_lm,
            seed=client_seed(ctx.seed, round_, client.id, 1 + epoch),
            bucket_by_length=ctx.client.bucket_by_length,
        )

    return LocalPlan(
        start=start,
        hooks=hooks,
        task=ctx.local_task(indices),
        make_batches=make_batches,
        cfg=replace(ctx.client, steps=steps) if steps else ctx.client,
        dropout_seed=client_seed(ctx.seed, round_, client.id, 0),
    )


def fit(
    ctx: ClientContext,
    client: ClientData,
    global_params: Params,
    payload: Params,
    state: ClientState,
    round_: int,
    *,
    rank: int = 0,
    steps: int = 0,
    layers: int = 0,
) -> tuple[Upload, ClientState]:
    """Train one client and run its half of the update pipeline: ``(upload, new state)``.

    Args:
        rank: train only the first ``rank`` LoRA components and send only those (0: all).
        steps: local steps instead of the ``[client]`` config's (a resource profile's, or
            what a deadline left); 0: the config's.
        layers: train only the top ``layers`` transformer layers' tensors (0: all); the
            others neither change nor travel up.
    """
    plan = prepare(
        ctx, client, global_params, payload, state, round_, rank=rank, steps=steps, layers=layers
    )
    live = ctx.live if ctx.live is not None else trainable_parameters(ctx.model)
    set_params(ctx.model, plan.start, live)
    # dropout; the CPU generator alone: torch.manual_seed costs ~200x more per call
    torch.default_generator.manual_seed(plan.dropout_seed)
    # split.enabled: each local step is the client's forward, the server's step, its backward
    split = None
    if ctx.split is not None:
        split = ctx.split.session(client_seed(ctx.seed, round_, client.id, SPLIT_STREAM))
    # client.prefix_cache: the model runs only the layers above the cached prefix;
    # offsite.enabled: the client trains on the emulator (dropped layers pass through)
    with (
        nullcontext() if ctx.prefix is None else ctx.prefix.suffix_only(),
        nullcontext() if ctx.emulator is None else ctx.emulator.view(),
    ):
        result = train_locally(
            ctx.model,
            plan.task,
            plan.make_batches,
            plan.cfg,
            plan.hooks,
            ctx.dpsgd,
            split=split,
            live=live,
            optimizer=ctx.optimizer if ctx.live is not None else None,
        )
    return conclude(ctx, client, global_params, payload, state, round_, plan, result, rank=rank)


def conclude(
    ctx: ClientContext,
    client: ClientData,
    global_params: Params,
    payload: Params,
    state: ClientState,
    round_: int,
    plan: LocalPlan,
    result: LocalResult,
    *,
    rank: int = 0,
) -> tuple[Upload, ClientState]:
    """Everything :func:`fit` does after the last local step: the strategy's finish, the
    delta, the update pipeline's client half and the upload."""
    strategy, start, frozen = ctx.strategy, plan.start, plan.hooks.frozen
    extras, new_state = strategy.client_finish(
        global_params, result.params, payload, state.strategy, steps=result.steps, lr=ctx.client.lr
    )
    delta = subtract(result.params, start)
    personal = {k: result.params[k].clone() for k in ctx.personal}  # outlives the model's
    shared = (
        {k: v for k, v in delta.items() if k not in ctx.personal and k not in frozen}
        if ctx.personal or frozen
        else delta
    )
    if rank:  # only the client's own components travel
        shared = lora_bytes_at_rank(shared, rank)
    wire: Params = shared
    pipeline_state: Params = {}
    signals: dict[str, float] = {}
    if ctx.tamper is not None or ctx.pipeline:  # seeded only where drawn from (hot path)
        generator = torch.Generator().manual_seed(
            client_seed(ctx.seed, round_, client.id, PIPELINE_STREAM)
        )
        if ctx.tamper is not None:
            wire = ctx.tamper(client.id, shared, generator)
        if ctx.pipeline:
            wire, pipeline_state, signals = ctx.pipeline.client(wire, state.pipeline, generator)
    # split.enabled: the server-side tensors' delta stays at the server (not counted as sent)
    kept = ctx.split.server_side if ctx.split is not None else frozenset()
    travels = (
        {k: v for k, v in {**wire, **extras}.items() if k not in kept} if kept or extras else wire
    )
    upload = Upload(
        client_id=client.id,
        wire=wire,
        num_examples=client.num_examples,
        metrics={
            "train_loss": result.train_loss,
            "steps": result.steps,
            **signals,
            **result.metrics,  # split.enabled: the bytes of its activations and gradients
        },
        extras=extras,
        bytes_up=payload_bytes(travels) + 4 * len(signals),
        rank=rank,
    )
    return upload, ClientState(new_state, personal, pipeline_state)
