"""``backend = "simulation"``: every client of a round trains in turn on the one shared model.

A simulated client's upload arrives at the server without leaving the process: it is
decoded (:func:`~fedfm.runtime.simulation.decode_upload`) as a remote one would be, and the
states it keeps stay in the server's :class:`~fedfm.runtime.simulation.RoundState`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fedfm.client.fit import fit
from fedfm.data.federation import ClientData
from fedfm.errors import FedFMError
from fedfm.runtime.job import Job
from fedfm.runtime.simulation import (
    ClientOutcome,
    Fitted,
    RoundPlan,
    RoundState,
    Transport,
    decode_upload,
)

FAILURES = (FedFMError, RuntimeError, ValueError, FloatingPointError)


def fit_client(job: Job, client: ClientData, *args: Any, **work: Any) -> ClientOutcome:
    """One simulated client's round, as the server takes it in: trained by
    :func:`fedfm.client.fit.fit` (same arguments after the client: global params, payload,
    client state, round; ``rank``, ``steps``, ``layers``), its upload decoded."""
    upload, kept = fit(job.client_context(), client, *args, **work)
    return ClientOutcome(decode_upload(job, upload, layers=work.get("layers", 0)), kept)


class InProcess(Transport):
    """Train the cohort one client after the other on ``job.model``; a client that fails is
    reported, not raised."""

    def fit(
        self, job: Job, state: RoundState, plan: RoundPlan, clients: list[ClientData]
    ) -> Iterator[Fitted]:
        for client in clients:
            work = plan.work[client.id]
            try:
                outcome = fit_client(
                    job,
                    client,
                    state.global_params,
                    plan.payload,
                    state.client(client.id),
                    plan.round,
                    rank=work.rank,
                    steps=work.override_steps,
                    layers=work.layers,
                )
            except FAILURES as err:
                yield None, f"{type(err).__name__}: {err}"
            else:
                yield outcome, None
