"""BitFit and IA3: which tensors train, and that a federated run with them completes."""

import math

import pytest
import torch
from rich.console import Console

from fedfm.config import AdapterConfig, load_config
from fedfm.errors import ConfigError
from fedfm.models.adapters import apply_adapter
from fedfm.models.params import get_params
from fedfm.resources.models import load_model
from fedfm.runtime.run import execute, prepare_run_dir

HEAD = "classifier."


def _minilm(method, **kwargs):
    torch.manual_seed(0)
    loaded = load_model("minilm", task="classification", num_labels=6, pretrained=True)
    model = apply_adapter(
        loaded.model,
        AdapterConfig(method=method, **kwargs),
        architecture=loaded.architecture,
        task="classification",
    )
    return loaded, model


def _trainable(model):
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _count(model):
    return sum(p.numel() for p in _trainable(model).values())


def test_bitfit_trains_exactly_the_biases_and_the_head():
    loaded, model = _minilm("bitfit")
    assert model is loaded.model  # no wrapper: the same module, with some tensors frozen
    all_names = [name for name, _ in model.named_parameters()]
    expected = {n for n in all_names if n.endswith("bias") or n.startswith(HEAD)}
    assert set(_trainable(model)) == expected
    assert {"classifier.weight", "classifier.bias"} <= expected
    assert any(n.startswith("bert.encoder.") and n.endswith("bias") for n in expected)
    # every weight outside the head (embeddings, attention, LayerNorm scales) is frozen
    for name, p in model.named_parameters():
        if not name.endswith("bias") and not name.startswith(HEAD):
            assert not p.requires_grad, name
    assert set(get_params(model)) == expected  # the federated params are those tensors
    total = sum(p.numel() for p in model.parameters())
    assert _count(model) < 0.01 * total


def test_ia3_trains_only_ia3_vectors_and_the_head():
    _, model = _minilm("ia3")
    trainable = _trainable(model)
    ia3 = [n for n in trainable if "ia3_l" in n]
    head = [n for n in trainable if "classifier." in n]
    assert ia3 and head
    assert set(trainable) == set(ia3) | set(head)
    assert all(trainable[n].dim() <= 2 and 1 in trainable[n].shape for n in ia3)  # vectors
    # every non-adapter backbone tensor is frozen
    for name, p in model.named_parameters():
        if "ia3_l" not in name and "classifier." not in name:
            assert not p.requires_grad, name


def test_ia3_trains_far_fewer_params_than_lora():
    _, ia3 = _minilm("ia3")
    _, lora = _minilm("lora", rank=8)
    head = 384 * 6 + 6  # MiniLM hidden size x 6 labels, plus biases

    assert _count(ia3) < _count(lora)
    assert _count(ia3) - head < 0.25 * (_count(lora) - head)


def test_ia3_model_starts_as_the_identity_of_the_backbone():
    # IA3 vectors start at 1: the wrapped model computes what the backbone does
    loaded, _ = _minilm("head")
    _, ia3 = _minilm("ia3")
    batch = loaded.tokenizer(["What is the capital of France ?"], return_tensors="pt")
    loaded.model.eval()
    ia3.eval()
    with torch.no_grad():
        torch.testing.assert_close(ia3(**batch).logits, loaded.model(**batch).logits)


class _NoBias(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(4, 8, bias=False)
        self.norm = torch.nn.LayerNorm(8, bias=False)
        self.classifier = torch.nn.Linear(8, 2, bias=False)


def test_bitfit_on_a_model_without_biases_is_a_config_error():
    with pytest.raises(ConfigError, match="bitfit") as info:
        apply_adapter(
            _NoBias(), AdapterConfig(method="bitfit"), architecture="mlp", task="classification"
        )
    assert "_NoBias" in str(info.value)


def test_bitfit_on_a_tiny_module_with_biases():
    model = torch.nn.Module()
    model.body = torch.nn.Linear(4, 8)
    model.classifier = torch.nn.Linear(8, 2, bias=False)
    apply_adapter(model, AdapterConfig(method="bitfit"), architecture="mlp", task="classification")
    assert set(_trainable(model)) == {"body.bias", "classifier.weight"}


@pytest.mark.parametrize("method", ["ia3", "bitfit"])
def test_run_on_a_trec_slice_completes(tmp_path, method):
    cfg = load_config(
        None,
        [
            f"adapter.method={method}",
            "data.max_train_examples=120",
            "data.max_test_examples=60",
            "data.num_clients=2",
            "data.min_client_size=10",
            "strategy.fraction=1.0",
            "client.batch_size=16",
            "rounds=1",
            f"name={method}",
            f"output_dir={tmp_path}",
        ],
    )
    run_dir = prepare_run_dir(cfg, overwrite=False)
    summary = execute(cfg, run_dir=run_dir, console=Console(quiet=True))
    assert summary["adapter"] == method
    assert summary["rounds_completed"] == 1
    acc = summary["final"]["test_accuracy"]
    assert math.isfinite(acc) and 0 <= acc <= 1
    assert summary["trainable_params"] < 0.01 * summary["total_params"]
    assert summary["total_bytes"] < 0.01 * summary["full_model_total_bytes"]
    assert (run_dir / "adapter.safetensors").stat().st_size > 0
