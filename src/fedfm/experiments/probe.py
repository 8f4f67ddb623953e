"""Client-side cost of one config, measured in a fresh process: peak memory and seconds.

A fresh (spawned) process per measurement keeps one config's allocations from hiding
another's peak. The probe builds the job, trains client 0 once inside
:func:`fedfm.analysis.memory.peak_rss_during` (its first pass, so every buffer it needs
shows in the peak) and times a second pass.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any


def _probe(overrides: list[str]) -> dict[str, Any]:
    from fedfm.analysis.memory import peak_rss_during
    from fedfm.client.state import ClientState
    from fedfm.config import load_config
    from fedfm.models.params import num_params
    from fedfm.runtime.job import build_job
    from fedfm.runtime.transports.in_process import fit_client

    job = build_job(load_config(None, overrides))
    client = job.federation[0]

    def train(round_: int) -> float:
        start = time.perf_counter()
        fit_client(job, client, job.initial_params, {}, ClientState(), round_)
        return time.perf_counter() - start

    _, peak = peak_rss_during(lambda: train(1))  # the first pass: every buffer is new
    seconds = train(2)  # the second pass: warm allocator and kernels
    return {
        "client_peak_bytes": peak,
        "client_seconds": seconds,
        "client_examples": client.num_examples,
        "trainable_params": num_params(job.initial_params),
    }


def probe_client_cost(overrides: list[str]) -> dict[str, Any]:
    """``{"client_peak_bytes", "client_seconds", "client_examples", "trainable_params"}``.

    ``client_peak_bytes`` is the rise of the process's peak resident memory while one
    client trains (activations, gradients, optimiser state), beyond the loaded model.
    """
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_probe, (overrides,))
