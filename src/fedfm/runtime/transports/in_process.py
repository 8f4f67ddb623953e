"""``backend = "simulation"``: every client of a round trains in turn on the one shared model.

A simulated client's upload arrives at the server without leaving the process: it is
decoded (:func:`~fedfm.runtime.simulation.decode_upload`) as a remote one would be, and the
states it keeps stay in the server's :class:`~fedfm.runtime.simulation.RoundState`.

In an asynchronous run (FedBuff) a client trains at once when it is dispatched, and its
result waits in the server's event queue until its finish time on the ``[system]`` speeds'
simulated clock (``steps / speed`` after its dispatch).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fedfm.client.fit import fit
from fedfm.data.federation import ClientData
from fedfm.errors import FedFMError
from fedfm.models.params import Params
from fedfm.runtime.fedbuff import Arrival, FedBuffServer
from fedfm.runtime.job import Job
from fedfm.runtime.simulation import (
    ClientOutcome,
    Fitted,
    RoundPlan,
    RoundState,
    Transport,
    Work,
    decode_upload,
)

FAILURES = (FedFMError, RuntimeError, ValueError, FloatingPointError)


def fit_client(job: Job, client: ClientData, *args: Any, **work: Any) -> ClientOutcome:
    """One simulated client's round, as the server takes it in: trained by
    :func:`fedfm.client.fit.fit` (same arguments after the client: global params, payload,
    client state, round; ``rank``, ``steps``, ``layers``), its upload decoded."""
    upload, kept = fit(job.client_context(), client, *args, **work)
    return ClientOutcome(decode_upload(job, upload, layers=work.get("layers", 0)), kept)


def _fitted(
    job: Job, state: RoundState, client: ClientData, work: Work, payload: Params, round_: int
) -> Fitted:
    """:func:`fit_client` from the current global params and the client's kept states, or
    the reason it failed."""
    try:
        outcome = fit_client(
            job,
            client,
            state.global_params,
            payload,
            state.client(client.id),
            round_,
            rank=work.rank,
            steps=work.override_steps,
            layers=work.layers,
        )
    except FAILURES as err:
        return None, f"{type(err).__name__}: {err}"
    return outcome, None


class InProcess(Transport):
    """Train the cohort one client after the other on ``job.model``; a client that fails is
    reported, not raised."""

    def fit(
        self, job: Job, state: RoundState, plan: RoundPlan, clients: list[ClientData]
    ) -> Iterator[Fitted]:
        for client in clients:
            yield _fitted(job, state, client, plan.work[client.id], plan.payload, plan.round)

    asynchronous = True

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
        """Train ``client`` now; it arrives ``steps / speed`` later on the simulated clock."""
        fitted = _fitted(job, state, client, work, payload, round_)
        server.dispatch(client=client.id, duration=work.full_steps / work.speed, payload=fitted)

    def arrival(self, job: Job, server: FedBuffServer[Fitted]) -> Arrival[Fitted]:
        """The earliest finish on the simulated clock."""
        return server.pop()
