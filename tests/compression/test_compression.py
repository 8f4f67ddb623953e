"""Quantisation and top-k: exact wire sizes, stated error bounds, unbiasedness, error feedback."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfm.compression.quantize import (
    BITS,
    dequantize,
    dequantize_params,
    quantize,
    quantize_params,
)
from fedfm.compression.sparsify import densify_params, kept, sparsify_params, topk
from fedfm.config import CompressionConfig
from fedfm.models.params import payload_bytes, serialize
from fedfm.update.compress import Compress


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    bits=st.sampled_from(BITS),
    n=st.integers(1, 300),
    scale=st.floats(1e-4, 1e3),
)
def test_quantize_round_trips_within_one_step(seed, bits, n, scale):
    x = torch.randn(n, generator=_gen(seed)) * scale
    packed, value_range = quantize(x, bits, _gen(seed + 1))
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n * bits / 8)
    y = dequantize(packed, value_range, bits, x)
    step = float(x.max() - x.min()) / (2**bits - 1)
    assert float((y - x).abs().max()) <= step * (1 + 1e-5) + 1e-6 * scale


def test_quantize_is_unbiased():
    x = torch.randn(50, generator=_gen(3))
    draws = torch.stack([dequantize(*quantize(x, 2, _gen(s)), 2, x) for s in range(4000)])
    step = float(x.max() - x.min()) / 3
    # the mean of 4000 draws is within a few standard errors (<= step / 2 / sqrt(4000))
    assert float((draws.mean(0) - x).abs().max()) < 5 * step / 2 / math.sqrt(4000)


def test_constant_and_empty_tensors_are_exact():
    x = torch.full((5,), 2.5)
    assert torch.equal(dequantize(*quantize(x, 4, _gen()), 4, x), x)
    e = torch.zeros(0)
    assert dequantize(*quantize(e, 8, _gen()), 8, e).numel() == 0


def test_quantize_rejects_unsupported_bits():
    with pytest.raises(ValueError, match="bits = 3 is not supported"):
        quantize(torch.ones(3), 3, _gen())


def test_quantized_wire_is_about_32_over_b_times_smaller():
    params = {"a": torch.randn(64, 384), "b": torch.randn(384, 64), "c": torch.randn(6)}
    plain = payload_bytes(params)
    for bits in (8, 4):
        wire = quantize_params(params, bits, _gen())
        assert len(serialize(wire)) == payload_bytes(wire)  # what travels, exactly
        ratio = plain / payload_bytes(wire)
        assert 0.9 * 32 / bits < ratio <= 32 / bits
        back = dequantize_params(wire, bits, params)
        assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in params.items()}


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 200), fraction=st.floats(0.01, 1.0))
def test_topk_keeps_the_largest_magnitudes(seed, n, fraction):
    x = torch.randn(n, generator=_gen(seed))
    values, index = topk(x, fraction)
    k = kept(n, fraction)
    assert values.numel() == k == max(1, math.ceil(fraction * n)) or k == n
    dense = densify_params(sparsify_params({"x": x}, fraction), {"x": x})["x"]
    dropped = x[dense == 0].abs()
    if dropped.numel() and k:
        assert float(dropped.max()) <= float(values.abs().min())
    torch.testing.assert_close(dense[index.long()], x[index.long()])


def test_topk_wire_size_is_exact_and_small():
    params = {"a": torch.randn(100, 100)}
    wire = sparsify_params(params, 0.1)
    assert len(serialize(wire)) == payload_bytes(wire)
    assert payload_bytes(wire) < 0.25 * payload_bytes(params)  # 10% of values + int32 indices
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        kept(10, 0.0)


@pytest.mark.parametrize(
    "cfg",
    [CompressionConfig(method="topk", fraction=0.2), CompressionConfig(method="quantize", bits=2)],
)
def test_error_feedback_carries_the_residual(cfg):
    """Sum of everything sent plus the final residual = sum of the true deltas."""
    stage = Compress(cfg)
    g = _gen(1)
    deltas = [{"w": torch.randn(40, generator=g)} for _ in range(6)]
    state: dict = {}
    sent_total = torch.zeros(40)
    for round_, delta in enumerate(deltas):
        wire, state = stage.encode(delta, state, _gen(round_))
        sent_total += stage.decode(wire, delta)["w"]
    truth = sum(d["w"] for d in deltas)
    torch.testing.assert_close(sent_total + state["residual.w"], truth)
    # without feedback the residual is dropped: no state is kept
    plain = Compress(
        CompressionConfig(method=cfg.method, bits=2, fraction=0.2, error_feedback=False)
    )
    assert plain.encode(deltas[0], {}, _gen())[1] == {}
