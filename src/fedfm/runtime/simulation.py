"""The round driver: the server's half of a round, whichever transport carries the clients.

A round, as one readable template:

1. select a cohort (seeded by round) and plan each member's work (:func:`plan_round`);
2. send the global params and the strategy's payload (bytes down counted);
3. the transport trains the cohort (in process, on Ray actors, or remote clients over gRPC:
   :mod:`fedfm.runtime.transports`) and hands back each client's upload, decoded once by
   :func:`decode_upload`, or the reason it has none; a client that fails or returns a
   malformed update is recorded and excluded (:func:`receive`), and so is one holding NaN
   or Inf, found by the cohort's update statistics (:func:`screen`);
4. aggregate the valid updates into new global params (:func:`finish_round`);
5. evaluate on the global test set (and optionally on every client's held-out split).

The reference strategies bend the template without a second loop: ``centralized`` trains
one pooled client per round, ``local`` keeps every client's own params and is evaluated
client by client; neither counts bytes, since nothing travels.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedfm.client.fit import Upload, with_personal
from fedfm.client.state import ClientState
from fedfm.data.batching import Encoded, batches
from fedfm.data.federation import ClientData
from fedfm.errors import FedFMError
from fedfm.features import each
from fedfm.models.layers import frozen_below
from fedfm.models.lora import lora_bytes_at_rank, pad_rank
from fedfm.models.params import Params, payload_bytes, set_params
from fedfm.runtime.job import Job
from fedfm.strategies.aggregate import mismatches, non_finite, update_statistics
from fedfm.strategies.base import Update

if TYPE_CHECKING:
    from fedfm.runtime.fedbuff import Arrival, FedBuffServer


@dataclass
class RoundState:
    """What the server carries from round to round (every simulated client's states too)."""

    round: int
    global_params: Params
    client_states: dict[int, Params] = field(default_factory=dict)  # the strategy's
    personal: dict[int, Params] = field(default_factory=dict)  # strategy.personal tensors
    pipeline_states: dict[int, Params] = field(default_factory=dict)  # e.g. error feedback
    cum_bytes: int = 0
    full_model_cum_bytes: int = 0

    def client(self, client_id: int) -> ClientState:
        """The states ``client_id`` left after the last round it took part in."""
        return ClientState(
            self.client_states.get(client_id, {}),
            self.personal.get(client_id, {}),
            self.pipeline_states.get(client_id, {}),
        )

    def keep(self, client_id: int, kept: ClientState) -> None:
        """Store the states ``client_id`` keeps until it is next selected (empty ones are not)."""
        for store, value in (
            (self.client_states, kept.strategy),
            (self.personal, kept.personal),
            (self.pipeline_states, kept.pipeline),
        ):
            if value:
                store[client_id] = value


@dataclass
class ClientOutcome:
    """One client's round as the server takes it: its decoded update and the states it keeps
    until it is next selected (empty for a remote client, which keeps its own)."""

    update: Update
    state: ClientState = field(default_factory=ClientState)


def decode_upload(job: Job, upload: Upload, *, layers: int = 0) -> Update:
    """The server's half of the update pipeline: an upload's wire form back to a delta over
    every trainable tensor (the tensors it did not send, personal or frozen by ``layers``,
    get a zero delta, which leaves them as they were).

    Raises:
        IndexError, RuntimeError: a wire form that does not decode (e.g. a top-k position
            out of range); the caller records it as that client's failure.
    """
    like, personal = job.initial_params, job.personal
    frozen = frozen_below(list(like), layers)
    shared = (
        {k: v for k, v in like.items() if k not in personal and k not in frozen}
        if personal or frozen
        else like
    )
    sent = lora_bytes_at_rank(shared, upload.rank) if upload.rank else shared
    delta = job.pipeline.server(upload.wire, sent) if job.pipeline else upload.wire
    if upload.rank:
        delta = pad_rank(delta, shared)
    return Update(
        client_id=upload.client_id,
        delta=(
            delta  # all sent, in the model's order (a simulated client's usual case)
            if list(delta) == list(like)
            else {k: delta[k] if k in delta else torch.zeros_like(v) for k, v in like.items()}
        ),
        num_examples=upload.num_examples,
        metrics=upload.metrics,
        extras=upload.extras,
        bytes_up=upload.bytes_up,
        rank=upload.rank,
    )


def evaluate_global(job: Job, params: Params, data: Encoded | None = None) -> dict[str, float]:
    """``params`` scored on every example of ``data`` (the global test set by default)."""
    data = job.test if data is None else data
    set_params(job.model, params)
    return score(job, data, np.arange(len(data)))


def score(job: Job, data: Encoded, indices: np.ndarray) -> dict[str, Any]:
    """``job.task``'s metrics of the model as it is on ``data[indices]``; through the frozen
    prefix's cache when ``client.prefix_cache`` is on and ``data`` is the job's training or
    test split (the splits its size was checked for; another, such as a backdoor's
    triggered copy, runs the whole model)."""
    prefix = job.feature("prefix_cache")
    cache = prefix.cache if prefix is not None else None
    kwargs: dict[str, Any] = {"batch_size": job.cfg.eval.batch_size, "causal_lm": job.causal_lm}
    if cache is None or not (data is job.train or data is job.test):
        return job.task.evaluate(job.model, batches(data, indices, **kwargs))
    cached = cache.batches(data, indices, **kwargs)  # fills what is missing, whole model
    with cache.suffix_only():
        return job.task.evaluate(job.model, cached)


def evaluate_clients(
    job: Job,
    params: Params,
    client_states: dict[int, Params] | None = None,
    own: dict[int, Params] | None = None,
) -> dict[str, Any]:
    """Mean and worst-10% of every client's metric on its own held-out split (and each
    client's value, as ``per_client_<metric>``).

    Each client is evaluated with ``strategy.personal_params`` (the global ``params``
    unless the strategy is personalised) with its ``own`` tensors (``strategy.personal``)
    in place.
    """
    client_states = client_states or {}
    own = own or {}
    metric = job.task.main_metric
    values, by_client = [], []
    loaded: Params | None = None
    for client in job.federation.clients:
        if len(client.eval) == 0:
            continue
        personal = with_personal(
            job.strategy.personal_params(params, client_states.get(client.id, {})),
            own.get(client.id, {}),
        )
        if personal is not loaded:  # the global params are swapped in once, not per client
            set_params(job.model, personal)
            loaded = personal
        result = score(job, job.train, client.eval)
        values.append(result[metric])
        by_client.append([client.id, result[metric]])
    if not values:
        return {}
    ordered = np.sort(values)
    if not job.task.higher_is_better:
        ordered = ordered[::-1]
    worst = ordered[: max(1, int(np.ceil(0.1 * len(ordered))))]
    return {
        f"client_{metric}_mean": float(np.mean(values)),
        f"client_{metric}_worst10": float(np.mean(worst)),
        f"per_client_{metric}": by_client,  # [client id, value] pairs
    }


def evaluate_round(job: Job, state: RoundState) -> dict[str, Any]:
    """The evaluation part of a round's record: global test set and/or every client's split."""
    record: dict[str, Any] = {}
    if not job.strategy.personalized:  # a personalised run has no single global model
        record.update(
            {f"test_{k}": v for k, v in evaluate_global(job, state.global_params).items()}
        )
    if job.cfg.eval.per_client or job.strategy.personalized:
        record.update(
            evaluate_clients(job, state.global_params, state.client_states, state.personal)
        )
    record.update(each(job.features, lambda f: f.evaluate(job, state)))
    return record


def initial_record(job: Job, state: RoundState) -> dict[str, Any]:
    """Round 0: the model before any training (for an FM: zero-shot), nothing sent yet."""
    start = time.perf_counter()
    record: dict[str, Any] = {
        "round": 0,
        "cohort": [],
        "num_examples": 0,
        "bytes_down": 0,
        "bytes_up": 0,
        "cum_bytes": 0,
        "full_model_cum_bytes": 0,
        "excluded": [],
    }
    record.update(evaluate_round(job, state))
    record["seconds"] = time.perf_counter() - start
    return record


@dataclass(frozen=True)
class Work:
    """What one client does this round, from its resource profile.

    Attributes:
        rank: LoRA components it trains and sends (0: all).
        steps: local steps it gets to do before the deadline (0: it misses it entirely).
        full_steps: the steps of a whole round of local training (its profile's, or the
            ``[client]`` config's).
        speed: its relative compute speed.
        layers: top transformer layers it trains (0: all).
        left_out: why it takes no part at all (``None``: it trains).
        receives: whether the server sends it the round's params (not when left out by rank).
    """

    rank: int
    steps: int
    full_steps: int
    speed: float
    layers: int
    left_out: str | None = None
    receives: bool = True
    override_steps: int = 0  # steps to force instead of the [client] config's (0: none)


def plan_work(job: Job, client: ClientData) -> Work:
    """A client's :class:`Work`: a whole round of local training, or what its resource
    profile allows ([system]); the pooled client (centralised reference) has no profile."""
    cfg = job.cfg.client
    full = cfg.steps or cfg.epochs * math.ceil(client.num_examples / cfg.batch_size)
    system = job.feature("system")
    if system is None or client.id >= len(system.profiles):
        return Work(0, full, full, 1.0, 0)
    return system.work(job, client, full)


@dataclass
class RoundPlan:
    """What the server decides before any client trains (the first half of a round)."""

    round: int
    cohort: list[int]
    clients: list[ClientData]  # the cohort's data, or the one pooled client (centralized)
    payload: Params  # the strategy's tensors sent beside the global params
    work: dict[int, Work]
    bytes_down: int
    started: float


@dataclass
class RoundIntake:
    """What came back from the clients of one round, as the server takes it in."""

    updates: list[Update] = field(default_factory=list)
    excluded: list[dict[str, Any]] = field(default_factory=list)
    stragglers: list[int] = field(default_factory=list)
    sim_time: float = 0.0
    pending: dict[int, ClientState] = field(default_factory=dict)  # kept once screened
    norms: list[float] = field(default_factory=list)  # of ``updates``, once screened
    cosine: float | None = None  # their mean pairwise cosine (two or more)


def plan_round(job: Job, state: RoundState) -> RoundPlan:
    """Select the cohort of round ``state.round + 1``, its payload and each client's work;
    count the bytes sent down."""
    cfg, strategy = job.cfg, job.strategy
    round_ = state.round + 1
    started = time.perf_counter()
    cohort = strategy.select(round_, len(job.federation), seed=cfg.seed)
    payload = strategy.payload(round_)
    clients = (
        [job.federation.pooled()] if strategy.pooled else [job.federation[cid] for cid in cohort]
    )
    work = {c.id: plan_work(job, c) for c in clients}
    bytes_down = 0
    by_rank: dict[int, int] = {}
    if strategy.communicates:
        for cid in cohort:
            if not work[cid].receives:
                continue
            bytes_down += download_bytes(job, state.global_params, payload, work[cid].rank, by_rank)
            bytes_down += strategy.extra_down_bytes(cid, round_)
    return RoundPlan(round_, cohort, clients, payload, work, bytes_down, started)


def download_bytes(
    job: Job, global_params: Params, payload: Params, rank: int, by_rank: dict[int, int]
) -> int:
    """The bytes a client of LoRA ``rank`` (0: all) is sent: the global params less what
    never leaves the server (personal tensors, split's server part), its rank's components,
    and the strategy's payload. The members of one rank are sent the same tensors, so the
    size is kept in ``by_rank``."""
    if rank not in by_rank:
        kept = job.personal | job.server_side
        sent = {k: v for k, v in global_params.items() if k not in kept}
        own = lora_bytes_at_rank(sent, rank) if rank else sent
        by_rank[rank] = payload_bytes({**own, **payload})
    return by_rank[rank]


def receive(
    job: Job,
    state: RoundState,
    intake: RoundIntake,
    client_id: int,
    outcome: ClientOutcome | None,
    error: str | None = None,
) -> None:
    """Take in one client's work: a failure is recorded, a malformed update is rejected with
    its reason, a well-formed one waits in ``intake`` with the states the client leaves
    behind, for :func:`screen`."""
    if outcome is None:
        intake.excluded.append({"client": client_id, "reason": error or "no update"})
        return
    update = outcome.update
    for feature in job.features:  # e.g. DP-SGD's steps: spent whether or not it is kept
        feature.received(job, client_id, update)
    wrong = mismatches(update.delta, state.global_params)
    if wrong:
        intake.excluded.append({"client": client_id, "reason": f"malformed update: {wrong[:3]}"})
        return
    intake.updates.append(update)
    intake.pending[client_id] = outcome.state


def screen(state: RoundState, intake: RoundIntake) -> None:
    """Reject the updates in ``intake`` that hold NaN or Inf, keep the states of the others'
    clients in ``state``, and set ``intake.norms`` and ``intake.cosine`` (the round record's
    update statistics) over what is kept.

    The statistics find the non-finite updates without a pass of their own: a NaN or Inf
    makes its update's norm NaN or Inf. Only an update whose norm is not finite is checked
    element by element (which also names the culprits; finite values whose norm overflows
    pass), and so are the extras some strategies send beside the delta (SCAFFOLD's), which
    the statistics do not cover; the statistics are taken again without the rejected ones.
    """
    updates = intake.updates
    norms, cosine = update_statistics([u.delta for u in updates]) if updates else ([], None)
    bad: dict[int, list[str]] = {}
    for i, (update, norm) in enumerate(zip(updates, norms, strict=True)):
        names = [] if math.isfinite(norm) else non_finite(update.delta)
        names += non_finite(update.extras) if update.extras else []  # SCAFFOLD's
        if names:
            bad[i] = names
    if bad:
        for i, names in bad.items():
            reason = f"non-finite values in {names[:3]}"
            intake.excluded.append({"client": updates[i].client_id, "reason": reason})
        updates = [u for i, u in enumerate(updates) if i not in bad]
        norms, cosine = update_statistics([u.delta for u in updates]) if updates else ([], None)
    for update in updates:
        kept = intake.pending.pop(update.client_id, None)
        if kept is not None:
            state.keep(update.client_id, kept)
    intake.updates, intake.norms, intake.cosine = updates, norms, cosine
    intake.pending.clear()


Fitted = tuple[ClientOutcome | None, str | None]  # an outcome, or why the client has none


class Transport:
    """How a round's clients are reached: the cohort-fitting protocol every backend implements
    (in process, Ray actors, remote gRPC clients; the registry is
    :data:`fedfm.runtime.transports.TRANSPORTS`).

    :meth:`fit` trains ``clients`` for round ``plan.round`` and yields one :data:`Fitted` per
    client, in the order given: its update, decoded once with :func:`decode_upload`, and the
    states it keeps, or the reason it has none (an error, a dead worker, a missed deadline).
    """

    def fit(
        self, job: Job, state: RoundState, plan: RoundPlan, clients: list[ClientData]
    ) -> Iterator[Fitted]:
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """Entries this transport adds to the round's record (remote: who took part)."""
        return {}

    # FedBuff (:mod:`fedfm.runtime.asynchronous`): a transport that can carry asynchronous
    # rounds sets ``asynchronous`` and implements the three methods below.
    asynchronous = False

    def launch(
        self,
        job: Job,
        state: RoundState,
        server: FedBuffServer[Fitted],
        client: ClientData,
        work: Work,
        payload: Params,
        round_: int,
    ) -> None:
        """Send ``client`` off from the current global params and ``server.version`` to train
        toward step ``round_``, and put it in flight on ``server`` (``server.dispatch``)."""
        raise NotImplementedError

    def arrival(self, job: Job, server: FedBuffServer[Fitted]) -> Arrival[Fitted]:
        """The next client to arrive (its update or why it has none), taken off ``server``;
        called only while a client is in flight."""
        raise NotImplementedError

    def settle(self, job: Job, server: FedBuffServer[Fitted]) -> None:
        """Before a server step ends: bring into ``server``'s flights any result still held
        elsewhere (Ray's workers), so a checkpoint can save them; by default nothing."""

    def adopt(self, job: Job, server: FedBuffServer[Fitted]) -> list[Arrival[Fitted]]:
        """The flights of a restored ``server`` (a resumed run) this transport cannot carry
        on, taken off it with the reason; by default none."""
        return []


def run_round(
    job: Job,
    state: RoundState,
    *,
    on_client: Callable[[int], None] | None = None,
    transport: Transport | None = None,
) -> dict[str, Any]:
    """Run round ``state.round + 1`` in place on ``state`` with ``transport`` (in process by
    default); return its metrics record."""
    if transport is None:
        from fedfm.runtime.transports.in_process import InProcess

        transport = InProcess()
    plan = plan_round(job, state)
    job.apply_backbone_delta()  # after a resume, the frozen weights must carry it again
    intake = RoundIntake()
    trained = [c for c in plan.clients if not plan.work[c.id].left_out]
    fitted = transport.fit(job, state, plan, trained)  # lazily, in plan order
    for client in plan.clients:
        cid, work = client.id, plan.work[client.id]
        if work.steps < work.full_steps:
            intake.stragglers.append(cid)
        if work.left_out:
            intake.excluded.append({"client": cid, "reason": work.left_out})
        else:
            intake.sim_time = max(intake.sim_time, work.steps / work.speed)
            receive(job, state, intake, cid, *next(fitted))
        if on_client is not None:
            on_client(cid)
    record = finish_round(job, state, plan, intake)
    record.update(transport.record())
    return record


def finish_round(
    job: Job, state: RoundState, plan: RoundPlan, intake: RoundIntake
) -> dict[str, Any]:
    """Screen what the round took in, aggregate it, advance ``state`` and return the round's
    record."""
    cfg, strategy = job.cfg, job.strategy
    screen(state, intake)
    round_, updates, excluded = plan.round, intake.updates, intake.excluded
    bytes_down = plan.bytes_down
    reduced: dict[str, Any] = {}
    protocol_up = 0  # what the update chain's reduction cost beyond the updates (secagg)
    if updates:
        step = job.pipeline.reduce(round_, updates)
        previous = state.global_params  # what the cohort started from
        state.global_params = strategy.aggregate(round_, state.global_params, step.mean, updates)
        job.apply_backbone_delta()
        for feature in job.features:  # e.g. distillation into the new global params
            feature.after_aggregate(job, state, previous, updates)
        reduced, protocol_up = step.info, step.bytes_up
        bytes_down += step.bytes_down
    elif round_ == 1:
        raise FedFMError(f"every client of round 1 failed: {excluded}")
    state.round = round_
    bytes_up = sum(u.bytes_up for u in updates) if strategy.communicates else 0
    bytes_up += protocol_up
    for feature in job.features:  # a feature's own messages (split's activations, gradients)
        up, down = feature.protocol_bytes(job, plan, intake)
        bytes_up, bytes_down = bytes_up + up, bytes_down + down
    state.cum_bytes += bytes_down + bytes_up
    if strategy.communicates:
        state.full_model_cum_bytes += 2 * job.full_model_bytes * len(plan.cohort)
    record: dict[str, Any] = {
        "round": round_,
        "cohort": [c.id for c in plan.clients],
        "num_examples": sum(u.num_examples for u in updates),
        "train_loss": (  # example-weighted (plain floats: numpy's average costs ~40 µs)
            sum(u.metrics["train_loss"] * u.num_examples for u in updates)
            / sum(u.num_examples for u in updates)
            if updates
            else float("nan")
        ),
        "bytes_down": bytes_down,
        "bytes_up": bytes_up,
        "cum_bytes": state.cum_bytes,
        "full_model_cum_bytes": state.full_model_cum_bytes,
        "excluded": excluded,
    }
    early = tuple(f for f in job.features if f.before_reduction)  # the system clock
    late = tuple(f for f in job.features if not f.before_reduction)
    record.update(each(early, lambda f: f.round_record(job, state, plan, intake)))
    record.update(reduced)  # the update chain's: clip norm, Krum's picks, SecAgg's cost
    record.update(each(late, lambda f: f.round_record(job, state, plan, intake)))
    if updates:  # what clipping and norm bounds act on (after the client's pipeline)
        norms = intake.norms
        record["update_norm_median"] = statistics.median(norms)  # numpy's costs ~100 µs
        record["update_norm_max"] = max(norms)
        if intake.cosine is not None:  # client drift: how aligned the cohort's updates are
            record["update_cosine"] = intake.cosine
    if round_ % cfg.eval.every == 0 or round_ == job.rounds:
        record.update(evaluate_round(job, state))
    record["seconds"] = time.perf_counter() - plan.started
    return record
