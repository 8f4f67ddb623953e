"""In-process simulation: every client of a round runs in turn on the one shared model.

A round, as one readable template:

1. select a cohort (seeded by round);
2. send the global params and the strategy's payload (bytes down counted);
3. each client: swap its params in (plus the tensors it keeps to itself, ``strategy.personal``),
   train locally with the strategy's hooks, pass its delta through the update pipeline
   (compression) and return the update (bytes up counted: the pipeline's wire form); a
   client that fails or returns NaN/Inf is recorded and excluded;
4. aggregate the valid updates into new global params;
5. evaluate on the global test set (and optionally on every client's held-out split).

The reference strategies bend the template without a second loop: ``centralized`` trains
one pooled client per round, ``local`` keeps every client's own params and is evaluated
client by client; neither counts bytes, since nothing travels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import torch

from fedfm.attacks import MODEL_ATTACKS, poison_delta
from fedfm.client.trainer import train_locally
from fedfm.data.batching import Encoded, batches
from fedfm.data.federation import ClientData
from fedfm.errors import FedFMError
from fedfm.models.lora import lora_bytes_at_rank, pad_rank, truncate_rank
from fedfm.models.params import Params, payload_bytes, set_params
from fedfm.privacy.clipping import l2_norm
from fedfm.privacy.dpsgd import client_epsilon
from fedfm.runtime.job import Job
from fedfm.runtime.profiles import frozen_below, steps_within_deadline
from fedfm.strategies.aggregate import mean_pairwise_cosine, mismatches, non_finite, subtract
from fedfm.strategies.base import Update
from fedfm.strategies.reducer import Reducer
from fedfm.tasks import BalancedLoss, Task


def client_seed(seed: int, round_: int, client_id: int, stream: int = 0) -> int:
    """A seed that is a pure function of (run seed, round, client, stream).

    Stream 0 seeds torch (dropout); stream ``1 + epoch`` shuffles that epoch's batches.
    """
    return int(np.random.default_rng([seed, round_, client_id, stream]).integers(2**31 - 1))


@dataclass
class RoundState:
    """What the server carries from round to round."""

    round: int
    global_params: Params
    client_states: dict[int, Params] = field(default_factory=dict)  # the strategy's
    personal: dict[int, Params] = field(default_factory=dict)  # strategy.personal tensors
    pipeline_states: dict[int, Params] = field(default_factory=dict)  # e.g. error feedback
    dpsgd_steps: dict[int, int] = field(default_factory=dict)  # DP-SGD steps taken per client
    cum_bytes: int = 0
    full_model_cum_bytes: int = 0

    def keep(self, client_id: int, outcome: ClientOutcome) -> None:
        """Store the states ``client_id`` keeps until it is next selected (empty ones are not)."""
        for store, value in (
            (self.client_states, outcome.state),
            (self.personal, outcome.personal),
            (self.pipeline_states, outcome.pipeline_state),
        ):
            if value:
                store[client_id] = value


@dataclass
class ClientOutcome:
    """One client's round: its update and the states it keeps until it is next selected."""

    update: Update
    state: Params  # the strategy's client state
    personal: Params  # the tensors named by strategy.personal
    pipeline_state: Params
    wire: Params = field(default_factory=dict)  # what the pipeline sends ({}: no pipeline)


def with_personal(params: Params, personal: Params) -> Params:
    """``params`` with a client's own tensors in place of the global ones."""
    return {**params, **personal} if personal else params


PIPELINE_STREAM = 2**20  # client_seed stream of the pipeline's randomness (stochastic rounding)


def local_task(job: Job, indices: np.ndarray) -> Task:
    """The task a client trains on: the job's, or with ``client.loss = "balanced"`` its loss
    balanced for the labels at ``indices`` (:class:`~fedfm.tasks.BalancedLoss`).

    A personalised run (``local``, ``strategy.personal``) trains with the plain loss: each
    client's model, or its own tensors, serves that client's own labels, prior included.
    """
    plain = job.cfg.client.loss != "balanced" or job.strategy.personalized
    if plain or job.train.labels is None:
        return job.task
    counts = np.bincount(job.train.labels[indices], minlength=job.task.num_labels)
    return BalancedLoss(job.task, counts)


def fit_client(
    job: Job,
    client: ClientData,
    global_params: Params,
    payload: Params,
    state: RoundState,
    round_: int,
    *,
    rank: int = 0,
    steps: int = 0,
    layers: int = 0,
) -> ClientOutcome:
    """Run one client's local training and its half of the update pipeline.

    Args:
        rank: train only the first ``rank`` LoRA components and send only those (0: all).
        steps: local steps instead of the ``[client]`` config's (a resource profile's, or
            what a deadline left); 0: the config's.
        layers: train only the top ``layers`` transformer layers' tensors (0: all); the
            others neither change nor travel up.
    """
    cfg = job.cfg
    client_state = state.client_states.get(client.id, {})
    start = with_personal(
        job.strategy.client_start(global_params, client_state), state.personal.get(client.id, {})
    )
    if rank:
        start = truncate_rank(start, rank)
    set_params(job.model, start)
    hooks = job.strategy.client_hooks(global_params, payload, client_state)
    frozen = frozen_below(list(start), layers)
    if frozen:
        hooks = replace(hooks, frozen=frozen)
    # dropout; the CPU generator alone: torch.manual_seed costs ~200x more per call
    torch.default_generator.manual_seed(client_seed(cfg.seed, round_, client.id, 0))

    indices = job.client_indices(client)

    def make_batches(epoch: int):  # noqa: ANN202
        return batches(
            job.train,
            indices,
            batch_size=cfg.client.batch_size,
            causal_lm=job.causal_lm,
            seed=client_seed(cfg.seed, round_, client.id, 1 + epoch),
        )

    client_cfg = replace(cfg.client, steps=steps) if steps else cfg.client
    result = train_locally(
        job.model, local_task(job, indices), make_batches, client_cfg, hooks, cfg.dpsgd
    )
    extras, new_state = job.strategy.client_finish(
        global_params, result.params, payload, client_state, steps=result.steps, lr=cfg.client.lr
    )
    delta = subtract(result.params, start)
    personal = {k: result.params[k] for k in job.personal}
    shared = {k: v for k, v in delta.items() if k not in job.personal and k not in frozen}
    full_shapes = shared
    if rank:  # only the client's own components travel
        shared = lora_bytes_at_rank(shared, rank)
    generator = torch.Generator().manual_seed(
        client_seed(cfg.seed, round_, client.id, PIPELINE_STREAM)
    )
    if cfg.attack.kind in MODEL_ATTACKS and client.id in job.malicious:
        shared = poison_delta(shared, cfg.attack, generator)
    wire: Params = shared
    pipeline_state: Params = {}
    signals: dict[str, float] = {}
    if job.pipeline:
        wire, pipeline_state, signals = job.pipeline.client(
            shared, state.pipeline_states.get(client.id, {}), generator
        )
        shared = job.pipeline.server(wire, shared)
    if rank:
        shared = pad_rank(shared, full_shapes)
    # personal and frozen tensors do not travel: a zero delta leaves them as they were
    received = {k: shared[k] if k in shared else torch.zeros_like(v) for k, v in delta.items()}
    update = Update(
        client_id=client.id,
        delta=received,
        num_examples=client.num_examples,
        metrics={"train_loss": result.train_loss, "steps": result.steps, **signals},
        extras=extras,
        bytes_up=payload_bytes({**wire, **extras}) + 4 * len(signals),
        rank=rank,
    )
    return ClientOutcome(update, new_state, personal, pipeline_state, wire if job.pipeline else {})


def evaluate_global(job: Job, params: Params, data: Encoded | None = None) -> dict[str, float]:
    """``params`` scored on every example of ``data`` (the global test set by default)."""
    data = job.test if data is None else data
    set_params(job.model, params)
    return job.task.evaluate(
        job.model,
        batches(
            data, np.arange(len(data)), batch_size=job.cfg.eval.batch_size, causal_lm=job.causal_lm
        ),
    )


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
        result = job.task.evaluate(
            job.model,
            batches(
                job.train, client.eval, batch_size=job.cfg.eval.batch_size, causal_lm=job.causal_lm
            ),
        )
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
    if job.backdoor_test is not None and not job.strategy.personalized:
        triggered = evaluate_global(job, state.global_params, job.backdoor_test)
        record["test_attack_success_rate"] = triggered["accuracy"]
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
    """A client's :class:`Work`; the pooled client (centralised reference) has no profile."""
    client_cfg, system = job.cfg.client, job.cfg.system
    full = client_cfg.steps or client_cfg.epochs * math.ceil(
        client.num_examples / client_cfg.batch_size
    )
    if client.id >= len(job.profiles):
        return Work(0, full, full, 1.0, 0)
    profile = job.profiles[client.id]
    default, full = full, profile.steps or full
    rank = profile.rank if 0 < profile.rank < job.lora_rank else 0
    steps = steps_within_deadline(full, profile.speed, system)
    override = steps if steps != default else 0
    work = Work(rank, steps, full, profile.speed, profile.layers, override_steps=override)
    if system.min_rank and (rank or job.lora_rank) < system.min_rank:
        reason = f"rank {rank} < system.min_rank = {system.min_rank}"
        return replace(work, left_out=reason, receives=False)
    if steps == 0:
        reason = f"straggler: {full} steps at speed {profile.speed} miss the deadline"
        return replace(work, left_out=f"{reason} of {system.deadline}")
    return work


def worst_dpsgd_epsilon(job: Job, steps: dict[int, int]) -> float:
    """The largest sample-level epsilon over the clients that have trained so far."""
    cfg = job.cfg
    return max(
        (
            client_epsilon(
                cfg.dpsgd,
                batch_size=cfg.client.batch_size,
                examples=job.federation[cid].num_examples,
                steps=n,
            )
            for cid, n in steps.items()
        ),
        default=0.0,
    )


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
    sent = {k: v for k, v in state.global_params.items() if k not in job.personal}
    bytes_down = 0
    if strategy.communicates:
        for cid in cohort:
            if not work[cid].receives:
                continue
            rank = work[cid].rank
            own = lora_bytes_at_rank(sent, rank) if rank else sent
            bytes_down += payload_bytes({**own, **payload}) + strategy.extra_down_bytes(cid, round_)
    return RoundPlan(round_, cohort, clients, payload, work, bytes_down, started)


def receive(
    job: Job,
    state: RoundState,
    intake: RoundIntake,
    client_id: int,
    outcome: ClientOutcome | None,
    error: str | None = None,
) -> None:
    """Take in one client's work: a failure is recorded, a malformed or non-finite update is
    rejected with its reason, a good one is kept with the states the client leaves behind."""
    if outcome is None:
        intake.excluded.append({"client": client_id, "reason": error or "no update"})
        return
    update = outcome.update
    if job.cfg.dpsgd.enabled:  # spent on training, whether or not the update is kept
        state.dpsgd_steps[client_id] = state.dpsgd_steps.get(client_id, 0) + int(
            update.metrics["steps"]
        )
    wrong = mismatches(update.delta, state.global_params)
    bad = non_finite(update.delta) + non_finite(update.extras) if not wrong else []
    if wrong:
        intake.excluded.append({"client": client_id, "reason": f"malformed update: {wrong[:3]}"})
        return
    if bad:
        intake.excluded.append({"client": client_id, "reason": f"non-finite values in {bad[:3]}"})
        return
    intake.updates.append(update)
    state.keep(client_id, outcome)


class RoundRunner(Protocol):
    """What runs one round: :func:`run_round` in process, or a remote backend's."""

    def __call__(
        self, job: Job, state: RoundState, *, on_client: Callable[[int], None] | None = None
    ) -> dict[str, Any]: ...


Fitted = tuple[ClientOutcome | None, str | None]  # an outcome, or why the client failed


class CohortFitter(Protocol):
    """What trains a round's clients: one after the other in process (:func:`fit_in_process`)
    or spread over workers (the Ray backend). Yields one :data:`Fitted` per client, in order."""

    def __call__(
        self, job: Job, state: RoundState, plan: RoundPlan, clients: list[ClientData]
    ) -> Iterator[Fitted]: ...


def fit_in_process(
    job: Job, state: RoundState, plan: RoundPlan, clients: list[ClientData]
) -> Iterator[Fitted]:
    """Train ``clients`` one after the other on ``job.model``; a client that fails is
    reported, not raised."""
    for client in clients:
        work = plan.work[client.id]
        try:
            outcome = fit_client(
                job,
                client,
                state.global_params,
                plan.payload,
                state,
                plan.round,
                rank=work.rank,
                steps=work.override_steps,
                layers=work.layers,
            )
        except (FedFMError, RuntimeError, ValueError, FloatingPointError) as err:
            yield None, f"{type(err).__name__}: {err}"
        else:
            yield outcome, None


def run_round(
    job: Job,
    state: RoundState,
    *,
    on_client: Callable[[int], None] | None = None,
    fit: CohortFitter = fit_in_process,
) -> dict[str, Any]:
    """Run round ``state.round + 1`` in place on ``state``; return its metrics record."""
    plan = plan_round(job, state)
    job.apply_backbone_delta()  # after a resume, the frozen weights must carry it again
    intake = RoundIntake()
    trained = [c for c in plan.clients if not plan.work[c.id].left_out]
    fitted = fit(job, state, plan, trained)  # lazily, in plan order
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
    return finish_round(job, state, plan, intake)


def finish_round(
    job: Job, state: RoundState, plan: RoundPlan, intake: RoundIntake
) -> dict[str, Any]:
    """Aggregate what the round took in, advance ``state`` and return the round's record."""
    cfg, strategy = job.cfg, job.strategy
    round_, updates, excluded = plan.round, intake.updates, intake.excluded
    bytes_down = plan.bytes_down
    reduced: dict[str, Any] = {}
    if updates:
        state.global_params = strategy.aggregate(round_, state.global_params, updates)
        job.apply_backbone_delta()
        if isinstance(strategy.reducer, Reducer):
            reduced = strategy.reducer.info
            bytes_down += strategy.reducer.extra_bytes[1]
    elif round_ == 1:
        raise FedFMError(f"every client of round 1 failed: {excluded}")
    state.round = round_
    bytes_up = sum(u.bytes_up for u in updates) if strategy.communicates else 0
    if isinstance(strategy.reducer, Reducer) and updates:
        bytes_up += strategy.reducer.extra_bytes[0]
    state.cum_bytes += bytes_down + bytes_up
    if strategy.communicates:
        state.full_model_cum_bytes += 2 * job.full_model_bytes * len(plan.cohort)
    record: dict[str, Any] = {
        "round": round_,
        "cohort": [c.id for c in plan.clients],
        "num_examples": sum(u.num_examples for u in updates),
        "train_loss": (
            float(
                np.average(
                    [u.metrics["train_loss"] for u in updates],
                    weights=[u.num_examples for u in updates],
                )
            )
            if updates
            else float("nan")
        ),
        "bytes_down": bytes_down,
        "bytes_up": bytes_up,
        "cum_bytes": state.cum_bytes,
        "full_model_cum_bytes": state.full_model_cum_bytes,
        "excluded": excluded,
    }
    if cfg.system.speeds or cfg.system.deadline:
        record["stragglers"] = intake.stragglers
        record["sim_time"] = intake.sim_time
    record.update(reduced)
    if job.malicious:
        record["malicious"] = sorted(job.malicious & {c.id for c in plan.clients})
    if job.dp is not None:
        record["epsilon"] = job.dp.epsilon(round_)
    if cfg.dpsgd.enabled:
        record["dpsgd_epsilon_max"] = worst_dpsgd_epsilon(job, state.dpsgd_steps)
    if updates:  # what clipping and norm bounds act on (after the client's pipeline)
        norms = [l2_norm(u.delta) for u in updates]
        record["update_norm_median"] = float(np.median(norms))
        record["update_norm_max"] = max(norms)
    if len(updates) >= 2:  # client drift: how aligned the cohort's updates are
        record["update_cosine"] = mean_pairwise_cosine([u.delta for u in updates])
    if round_ % cfg.eval.every == 0 or round_ == job.rounds:
        record.update(evaluate_round(job, state))
    record["seconds"] = time.perf_counter() - plan.started
    return record
