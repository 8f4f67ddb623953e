import pytest
import torch

from fedfm.strategies.aggregate import add, non_finite, subtract, weighted_average


def test_weighted_average_uses_example_weights():
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor(0.0)}
    b = {"w": torch.tensor([3.0, 6.0]), "b": torch.tensor(4.0)}
    out = weighted_average([a, b], [1, 3])
    torch.testing.assert_close(out["w"], torch.tensor([2.5, 5.0]))
    torch.testing.assert_close(out["b"], torch.tensor(3.0))


def test_weighted_average_keeps_dtype_and_does_not_mutate_inputs():
    a = {"w": torch.tensor([1.0], dtype=torch.float16)}
    out = weighted_average([a, a], [1, 1])
    assert out["w"].dtype == torch.float16
    assert a["w"].item() == 1.0


@pytest.mark.parametrize("weights", [[0, 0], [1]])
def test_weighted_average_rejects_bad_weights(weights):
    a = {"w": torch.zeros(1)}
    with pytest.raises(ValueError):
        weighted_average([a, a], weights)


def test_average_of_lora_products_is_not_product_of_averages():
    # FedAvg averages A and B separately; the effective update B@A then differs from the
    # average of the clients' B@A. This is the known LoRA aggregation bias; we document it.
    a1, a2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    b1, b2 = torch.tensor([[1.0], [0.0]]), torch.tensor([[0.0], [1.0]])
    avg = weighted_average([{"A": a1, "B": b1}, {"A": a2, "B": b2}], [1, 1])
    product_of_avgs = avg["B"] @ avg["A"]
    avg_of_products = (b1 @ a1 + b2 @ a2) / 2
    assert not torch.allclose(product_of_avgs, avg_of_products)


def test_add_subtract_and_non_finite():
    a, b = {"w": torch.tensor([3.0])}, {"w": torch.tensor([1.0])}
    torch.testing.assert_close(subtract(a, b)["w"], torch.tensor([2.0]))
    torch.testing.assert_close(add(a, b, 0.5)["w"], torch.tensor([3.5]))
    assert non_finite(a) == []
    assert non_finite({"w": torch.tensor([float("nan")]), "v": torch.tensor([float("inf")])}) == [
        "w",
        "v",
    ]


def test_non_finite_names_every_culprit_and_handles_mixed_dtypes():
    params = {
        "a": torch.ones(3),
        "b": torch.tensor([1.0, float("-inf")], dtype=torch.float16),
        "c": torch.zeros(2, 2),
        "d": torch.tensor([[float("nan")]]),
    }
    assert non_finite(params) == ["b", "d"]
    assert non_finite({k: params[k] for k in ("a", "c")}) == []
    assert non_finite({}) == []


def test_weighted_average_stacked_and_streamed_paths_agree(monkeypatch):
    """Small tensors are stacked and weighted by one product, a tensor above GRAM_BLOCK is
    accumulated update by update: both give the float64 mean, cast back."""
    import fedfm.strategies.aggregate as aggregate

    gen = torch.Generator().manual_seed(0)
    params = [
        {"w": torch.randn(3, 5, generator=gen), "b": torch.randn(5, generator=gen)}
        for _ in range(7)
    ]
    weights = [3, 1, 4, 1, 5, 9, 2]
    stacked = weighted_average(params, weights)
    monkeypatch.setattr(aggregate, "GRAM_BLOCK", 1)  # every tensor takes the streamed path
    streamed = weighted_average(params, weights)
    exact = {
        k: (
            sum(p[k].double() * w for p, w in zip(params, weights, strict=True)) / sum(weights)
        ).float()
        for k in ("w", "b")
    }
    for k in ("w", "b"):
        assert stacked[k].shape == params[0][k].shape and stacked[k].dtype == torch.float32
        torch.testing.assert_close(stacked[k], streamed[k], rtol=0, atol=1e-7)
        torch.testing.assert_close(stacked[k], exact[k], rtol=0, atol=1e-7)
