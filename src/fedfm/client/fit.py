"""The client half of a round: local training, then the client's half of the update pipeline.

``fit`` starts from the global params (with the client's own tensors in place), trains with
the strategy's hooks, and returns the :class:`Upload`, the update's *wire form* exactly as
it travels (compressed, clipped, a low-rank client's first components only), beside the
:class:`~fedfm.client.state.ClientState` it keeps until it is next selected. Turning an
upload back into a delta is the server's job (:func:`fedfm.runtime.round.decode_upload`),
done once per upload whichever transport carried it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from fedfm.client.context import PIPELINE_STREAM, ClientContext, client_seed
from fedfm.client.state import ClientState
from fedfm.client.trainer import train_locally
from fedfm.data.batching import batches
from fedfm.data.federation import ClientData
from fedfm.models.layers import frozen_below
from fedfm.models.lora import lora_bytes_at_rank, truncate_rank
from fedfm.models.params import Params, payload_bytes, set_params
from fedfm.strategies.aggregate import subtract


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
    strategy = ctx.strategy
    start = with_personal(strategy.client_start(global_params, state.strategy), state.personal)
    if rank:
        start = truncate_rank(start, rank)
    set_params(ctx.model, start)
    hooks = strategy.client_hooks(global_params, payload, state.strategy)
    frozen = frozen_below(list(start), layers)
    if frozen:
        hooks = replace(hooks, frozen=frozen)
    # dropout; the CPU generator alone: torch.manual_seed costs ~200x more per call
    torch.default_generator.manual_seed(client_seed(ctx.seed, round_, client.id, 0))

    indices = ctx.indices(client)

    def make_batches(epoch: int):  # noqa: ANN202
        return batches(
            ctx.train,
            indices,
            batch_size=ctx.client.batch_size,
            causal_lm=ctx.causal_lm,
            seed=client_seed(ctx.seed, round_, client.id, 1 + epoch),
            bucket_by_length=ctx.client.bucket_by_length,
        )

    client_cfg = replace(ctx.client, steps=steps) if steps else ctx.client
    result = train_locally(
        ctx.model, ctx.local_task(indices), make_batches, client_cfg, hooks, ctx.dpsgd
    )
    extras, new_state = strategy.client_finish(
        global_params, result.params, payload, state.strategy, steps=result.steps, lr=ctx.client.lr
    )
    delta = subtract(result.params, start)
    personal = {k: result.params[k] for k in ctx.personal}
    shared = {k: v for k, v in delta.items() if k not in ctx.personal and k not in frozen}
    if rank:  # only the client's own components travel
        shared = lora_bytes_at_rank(shared, rank)
    generator = torch.Generator().manual_seed(
        client_seed(ctx.seed, round_, client.id, PIPELINE_STREAM)
    )
    if ctx.tamper is not None:
        shared = ctx.tamper(client.id, shared, generator)
    wire: Params = shared
    pipeline_state: Params = {}
    signals: dict[str, float] = {}
    if ctx.pipeline:
        wire, pipeline_state, signals = ctx.pipeline.client(shared, state.pipeline, generator)
    upload = Upload(
        client_id=client.id,
        wire=wire,
        num_examples=client.num_examples,
        metrics={"train_loss": result.train_loss, "steps": result.steps, **signals},
        extras=extras,
        bytes_up=payload_bytes({**wire, **extras}) + 4 * len(signals),
        rank=rank,
    )
    return upload, ClientState(new_state, personal, pipeline_state)
