from __future__ import annotations

import torch

from fedfm.analysis.memory import peak_rss_during, rss_bytes

MB = 1_000_000


def _allocate_and_free() -> float:
    x = torch.ones(50_000_000)  # 200 MB of float32
    total = float(x[:10].sum())
    del x
    return total


def test_rss_bytes_positive() -> None:
    assert rss_bytes() > 1 * MB


def test_big_allocation_is_seen() -> None:
    result, peak = peak_rss_during(_allocate_and_free)
    assert result == 10.0
    assert peak >= 180 * MB


def test_no_allocation_is_small() -> None:
    _, peak = peak_rss_during(lambda: None)
    assert peak < 50 * MB


def test_return_value_passed_through() -> None:
    sentinel = object()
    result, _ = peak_rss_during(lambda: sentinel)
    assert result is sentinel


def test_reset_between_calls() -> None:
    _, big = peak_rss_during(_allocate_and_free)
    _, small = peak_rss_during(lambda: sum(range(1000)))
    assert big >= 180 * MB
    assert small < 50 * MB
