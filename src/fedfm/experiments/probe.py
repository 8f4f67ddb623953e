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


def _probe(overrides: list[str], work: dict[str, int]) -> dict[str, Any]:
    from fedfm.analysis.memory import peak_rss_during
    from fedfm.client.state import ClientState
    from fedfm.config import load_config
    from fedfm.models.params import num_params
    from fedfm.runtime.job import build_job
    from fedfm.runtime.transports.in_process import fit_client

    job = build_job(load_config(None, overrides))
    client = job.federation[0]

    def train(round_: int) -> tuple[float, dict[str, float]]:
        start = time.perf_counter()
        outcome = fit_client(job, client, job.initial_params, {}, ClientState(), round_, **work)
        return time.perf_counter() - start, {
            **outcome.update.metrics,
            "bytes_up": outcome.update.bytes_up + outcome.update.metrics.get("split_bytes_up", 0),
        }

    _, peak = peak_rss_during(lambda: train(1))  # the first pass: every buffer is new
    seconds, metrics = train(2)  # the second pass: warm allocator and kernels
    return {
        "client_peak_bytes": peak,
        # split fine-tuning: the client's own halves; the server's run in the same process
        "client_seconds": metrics.get("split_client_seconds", seconds),
        "fit_seconds": seconds,
        "bytes_up": int(metrics["bytes_up"]),  # its upload, and its activations under split
        "client_examples": client.num_examples,
        "trainable_params": num_params(job.initial_params),
    }


def probe_client_cost(overrides: list[str], **work: int) -> dict[str, Any]:
    """``{"client_peak_bytes", "client_seconds", "fit_seconds", "bytes_up",
    "client_examples", "trainable_params"}``.

    ``client_peak_bytes`` is the rise of the process's peak resident memory while one
    client trains (activations, gradients, optimiser state), beyond the loaded model.
    ``client_seconds`` is the client's training time; under split fine-tuning only its own
    halves (``fit_seconds`` is the whole local training, the server's halves included).
    ``bytes_up`` is what the client sends in the round (with its activations under split).
    ``work``: a resource profile's part of :func:`fedfm.client.fit.fit` (``layers=2``: a
    client that trains only its top 2 layers).
    """
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_probe, (overrides, work))
