"""``backend = "simulation"`` with ``simulation.parallel_clients = N``: the cohort trains in
stacks of up to ``N`` clients on the one shared model (:mod:`fedfm.client.parallel`).

Each client is prepared and concluded exactly as :func:`fedfm.client.fit.fit` does it
(:func:`~fedfm.client.fit.prepare`, :func:`~fedfm.client.fit.conclude`); only the local steps
in between are shared. Clients are stacked by their number of local steps (most first), so
a stack stays full for as long as possible; outcomes are still yielded in plan order. A
failure while a stack trains is every member's failure (recorded, the round goes on).
"""

from __future__ import annotations

from collections.abc import Iterator

from fedfm.client.context import ClientContext, client_seed
from fedfm.client.fit import LocalPlan, conclude, prepare
from fedfm.client.parallel import stackable, train_together
from fedfm.data.federation import ClientData
from fedfm.runtime.job import Job
from fedfm.runtime.simulation import (
    ClientOutcome,
    Fitted,
    RoundPlan,
    RoundState,
    Transport,
    decode_upload,
)
from fedfm.runtime.transports.in_process import FAILURES

GROUP_STREAM = 2**21  # client_seed stream of a stack's dropout (its first member's id)


def stacks(clients: list[ClientData], plan: RoundPlan, size: int) -> list[list[ClientData]]:
    """``clients`` in stacks of at most ``size``, those with the most local steps first."""
    ordered = sorted(clients, key=lambda c: -plan.work[c.id].steps)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


class Parallel(Transport):
    """Train the cohort in stacks of up to ``size`` clients on ``job.model``.

    Raises:
        ConfigError: the model trains a tensor that cannot be stacked (checked on opening).
    """

    def __init__(self, job: Job, size: int) -> None:
        stackable(job.model)
        self.size = size

    def fit(
        self, job: Job, state: RoundState, plan: RoundPlan, clients: list[ClientData]
    ) -> Iterator[Fitted]:
        ctx = job.client_context()
        done: dict[int, Fitted] = {}
        todo = stacks(clients, plan, self.size)
        for client in clients:
            while client.id not in done:
                done.update(self._fit_stack(job, ctx, state, plan, todo.pop(0)))
            yield done.pop(client.id)

    def _fit_stack(
        self,
        job: Job,
        ctx: ClientContext,
        state: RoundState,
        plan: RoundPlan,
        members: list[ClientData],
    ) -> dict[int, Fitted]:
        out: dict[int, Fitted] = {}
        prepared: dict[int, LocalPlan] = {}
        for c in members:
            work = plan.work[c.id]
            try:
                prepared[c.id] = prepare(
                    ctx,
                    c,
                    state.global_params,
                    plan.payload,
                    state.client(c.id),
                    plan.round,
                    rank=work.rank,
                    steps=work.override_steps,
                    layers=work.layers,
                )
            except FAILURES as err:
                out[c.id] = (None, f"{type(err).__name__}: {err}")
        members = [c for c in members if c.id in prepared]
        if not members:
            return out
        seed = client_seed(ctx.seed, plan.round, members[0].id, GROUP_STREAM)
        try:
            results = train_together(
                ctx.model, [prepared[c.id] for c in members], pad_id=ctx.train.pad_id, seed=seed
            )
        except FAILURES as err:
            return {**out, **{c.id: (None, f"{type(err).__name__}: {err}") for c in members}}
        for c, result in zip(members, results, strict=True):
            work = plan.work[c.id]
            try:
                upload, kept = conclude(
                    ctx,
                    c,
                    state.global_params,
                    plan.payload,
                    state.client(c.id),
                    plan.round,
                    prepared[c.id],
                    result,
                    rank=work.rank,
                )
                update = decode_upload(job, upload, layers=work.layers)
            except FAILURES as err:
                out[c.id] = (None, f"{type(err).__name__}: {err}")
            else:
                out[c.id] = (ClientOutcome(update, kept), None)
        return out
