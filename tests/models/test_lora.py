"""LoRA factor algebra: stacking is exact, FedIT averaging is not, SVD re-projection is the
best fixed-rank fit, truncation keeps a lower-rank client at its rank."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfm.models.lora import (
    factorize,
    lora_bytes_at_rank,
    lora_pairs,
    mean_product,
    rank_of,
    stack,
    truncate_rank,
)


def _clients(seed, ranks, out=7, inp=5):
    g = torch.Generator().manual_seed(seed)
    a = [torch.randn(r, inp, generator=g) for r in ranks]
    b = [torch.randn(out, r, generator=g) for r in ranks]
    w = [float(x) for x in torch.randint(1, 50, (len(ranks),), generator=g)]
    return a, b, w


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    ranks=st.lists(st.integers(1, 6), min_size=1, max_size=5),
)
def test_stacking_equals_the_weighted_mean_of_client_products(seed, ranks):
    a, b, w = _clients(seed, ranks)
    a_stack, b_stack = stack(a, b, w)
    assert a_stack.shape == (sum(ranks), 5) and b_stack.shape == (7, sum(ranks))
    expected = sum(
        wi * (bi.double() @ ai.double()) for ai, bi, wi in zip(a, b, w, strict=True)
    ) / sum(w)
    torch.testing.assert_close(b_stack @ a_stack, expected)


def test_fedit_averaging_is_not_the_mean_of_products():
    a, b, w = _clients(0, [4, 4, 4])
    exact = mean_product(a, b, w)
    total = sum(w)
    fedit = (
        sum(wi * bi.double() for bi, wi in zip(b, w, strict=True))
        @ sum(wi * ai.double() for ai, wi in zip(a, w, strict=True))
        / total**2
    )
    error = (fedit - exact).norm() / exact.norm()
    assert error > 0.1  # far from float noise: the inexactness stacking removes


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), rank=st.integers(1, 5))
def test_factorize_is_the_best_rank_r_fit(seed, rank):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(6, 5, generator=g, dtype=torch.float64)
    a, b = factorize(p, rank)
    assert a.shape == (rank, 5) and b.shape == (6, rank)
    s = torch.linalg.svdvals(p)
    # Eckart-Young: the Frobenius error is the norm of the dropped singular values
    torch.testing.assert_close((b @ a - p).norm(), s[rank:].norm())
    # components are ordered: keeping the first r' is again the best rank-r' fit
    for r2 in range(1, rank + 1):
        torch.testing.assert_close((b[:, :r2] @ a[:r2] - p).norm(), s[r2:].norm())


def test_factorize_is_exact_below_rank_and_pads_above_min_dim():
    a, b, w = _clients(1, [2, 1])
    p = mean_product(a, b, w)  # rank <= 3
    fa, fb = factorize(p, 3)
    torch.testing.assert_close(fb @ fa, p)
    fa, fb = factorize(p, 9)  # more than min(7, 5) components: zero-padded
    assert fa.shape == (9, 5) and fb.shape == (7, 9)
    assert fa[5:].abs().sum() == 0 and fb[:, 5:].abs().sum() == 0
    torch.testing.assert_close(fb @ fa, p)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        factorize(p, 0)


def test_stack_rejects_bad_input():
    a, b, w = _clients(0, [2, 2])
    with pytest.raises(ValueError, match="k A's, k B's and k weights"):
        stack(a, b[:1], w)
    with pytest.raises(ValueError, match="sum to > 0"):
        stack(a, b, [0.0, 0.0])


def _params(rank=4):
    g = torch.Generator().manual_seed(0)
    return {
        "m.q.lora_A.default.weight": torch.randn(rank, 5, generator=g),
        "m.q.lora_B.default.weight": torch.randn(7, rank, generator=g),
        "m.v.lora_A.default.weight": torch.randn(rank, 5, generator=g),
        "m.v.lora_B.default.weight": torch.randn(7, rank, generator=g),
        "classifier.weight": torch.randn(3, 7, generator=g),
    }


def test_pairs_ranks_and_what_a_lower_rank_client_sends():
    params = _params()
    pairs = lora_pairs(params)
    assert [p.module for p in pairs] == ["m.q", "m.v"]
    assert pairs[0].base_weight == "m.q.base_layer.weight"
    assert rank_of(params) == 4 and rank_of({"w": torch.zeros(1)}) == 0
    b_only = {k: v for k, v in params.items() if "lora_A" not in k}  # FFA-LoRA
    assert rank_of(b_only) == 4
    sent = lora_bytes_at_rank(params, 2)
    assert sent["m.q.lora_A.default.weight"].shape == (2, 5)
    assert sent["m.q.lora_B.default.weight"].shape == (7, 2)
    assert sent["classifier.weight"].shape == (3, 7)
    with pytest.raises(ValueError, match="only one of A and B"):
        lora_pairs({"m.q.lora_A.default.weight": torch.zeros(1)})


def test_truncated_components_stay_zero_under_adam_training():
    """A rank-2 client inside a rank-4 adapter trains exactly a rank-2 adapter."""
    torch.manual_seed(0)
    params = truncate_rank(_params(), 2)
    a = params["m.q.lora_A.default.weight"].clone().requires_grad_(True)
    b = params["m.q.lora_B.default.weight"].clone().requires_grad_(True)
    opt = torch.optim.AdamW([a, b], lr=1e-2, weight_decay=0.0)
    for _ in range(20):
        x = torch.randn(16, 5)
        loss = ((x @ a.T @ b.T - torch.randn(16, 7)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert a[2:].abs().sum() == 0 and b[:, 2:].abs().sum() == 0
    assert a[:2].abs().sum() > 0 and b[:, :2].abs().sum() > 0
