"""Models from local Hugging Face folders: every architecture loads, wraps and trains; every
bad folder gets one line naming the path and the fix."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny_models import DECODERS, KINDS, make_tiny_model

from fedfm.config import AdapterConfig, ModelConfig, load_config
from fedfm.errors import ConfigError
from fedfm.models.adapters import apply_adapter, default_target_modules
from fedfm.models.params import backbone_hash, get_params, trainable_parameters
from fedfm.models.source import check_model_name
from fedfm.resources.models import load_model, with_pad_token


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))  # folder digests land here


CASES = [(kind, "classification") for kind in KINDS] + [(k, "causal_lm") for k in DECODERS]


def _batch(tokenizer, task: str) -> dict[str, torch.Tensor]:
    enc = tokenizer(
        ["What is the capital of France?", "Free entry, text WIN", "To be or not"],
        padding=True,
        return_tensors="pt",
    )
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if task == "causal_lm":
        labels = enc["input_ids"].clone()
        labels[enc["attention_mask"] == 0] = -100
        return {**batch, "labels": labels}
    return {**batch, "labels": torch.tensor([0, 1, 2])}


@pytest.mark.parametrize(("kind", "task"), CASES)
def test_folder_loads_wraps_and_trains(tiny_model_dirs, kind: str, task: str) -> None:
    torch.manual_seed(0)
    loaded = load_model(str(tiny_model_dirs[kind]), task=task, num_labels=3)
    assert loaded.architecture == kind
    tok = loaded.tokenizer
    assert tok.pad_token is not None and loaded.model.config.pad_token_id == tok.pad_token_id
    model = apply_adapter(loaded.model, AdapterConfig(), architecture=kind, task=task)
    names = list(trainable_parameters(model))
    assert any("lora_A" in n for n in names)
    targets = default_target_modules(kind)  # peft's own map: query/value, q_proj/v_proj, c_attn
    assert all(any(f".{t}." in n for t in targets) for n in names if "lora_" in n)
    head = [n for n in names if "lora_" not in n]
    assert bool(head) == (task == "classification")  # a fresh, trainable head
    before = get_params(model)
    batch = _batch(tok, task)
    out = model(**{k: v for k, v in batch.items() if k != "labels"}, labels=batch["labels"])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    torch.optim.SGD(trainable_parameters(model).values(), lr=0.5).step()
    after = get_params(model)
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_the_hash_comes_from_the_files_and_follows_them(tmp_path: Path) -> None:
    folder = make_tiny_model("llama", tmp_path / "m", seed=1)

    def hashed(path: Path, **kwargs) -> str:
        torch.manual_seed(0)
        loaded = load_model(str(path), task="classification", num_labels=2, **kwargs)
        wrapped = apply_adapter(
            loaded.model, AdapterConfig(), architecture=loaded.architecture, task="classification"
        )
        return backbone_hash(wrapped)

    first = hashed(folder)
    assert hashed(folder) == first
    moved = shutil.copytree(folder, tmp_path / "elsewhere")  # the path does not matter
    assert hashed(moved) == first
    make_tiny_model("llama", folder, seed=2)  # other weights, same file names
    assert hashed(folder) != first
    assert hashed(moved, dtype="bfloat16") != first  # the dtype is part of the backbone
    assert hashed(moved, pretrained=False) != first


def test_random_init_keeps_the_architecture(tiny_model_dirs, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_model_dirs["qwen2"], tmp_path / "q")
    for weights in folder.glob("*.safetensors"):
        weights.unlink()  # a config-only folder is enough for a random init
    torch.manual_seed(123)  # the folder was written from seed 0
    random = load_model(str(folder), task="causal_lm", pretrained=False)
    trained = load_model(str(tiny_model_dirs["qwen2"]), task="causal_lm")
    shapes = {k: v.shape for k, v in random.model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in trained.model.state_dict().items()}
    emb = "model.embed_tokens.weight"
    assert not torch.equal(random.model.state_dict()[emb], trained.model.state_dict()[emb])


def test_bfloat16_backbone_trains_float32_adapter_and_head(tiny_model_dirs) -> None:
    loaded = load_model(
        str(tiny_model_dirs["gpt2"]), task="classification", num_labels=3, dtype="bfloat16"
    )
    model = apply_adapter(loaded.model, AdapterConfig(), architecture="gpt2", task="classification")
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}
    assert {p.dtype for p in trainable_parameters(model).values()} == {torch.float32}
    batch = _batch(loaded.tokenizer, "classification")
    losses = []
    optimizer = torch.optim.AdamW(trainable_parameters(model).values(), lr=0.05)
    for _ in range(5):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert logits.dtype == torch.float32
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_a_tokenizer_without_pad_or_eos_gets_a_new_pad_token(tiny_model_dirs, tmp_path) -> None:
    folder = shutil.copytree(tiny_model_dirs["llama"], tmp_path / "nopad")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    for key in ("eos_token", "pad_token"):
        config.pop(key, None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    a = load_model(str(folder), task="classification", num_labels=2)
    b = load_model(str(folder), task="classification", num_labels=2)
    assert a.tokenizer.pad_token == "<pad>" and a.tokenizer.eos_token is None
    rows = a.model.get_input_embeddings().weight
    assert rows.shape[0] == len(a.tokenizer) and a.model.config.pad_token_id == len(rows) - 1
    assert torch.allclose(rows[-1], rows[:-1].mean(0))  # no randomness: every client agrees
    assert backbone_hash(a.model) == backbone_hash(b.model)


def test_a_checkpoint_without_pooler_warns_and_hashes_the_random_pooler(tmp_path) -> None:
    import transformers

    bert = make_tiny_model("bert", tmp_path / "bert")
    config = transformers.AutoConfig.from_pretrained(bert)
    transformers.BertForMaskedLM(config).save_pretrained(tmp_path / "mlm")  # has no pooler
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(bert / name, tmp_path / "mlm" / name)

    def hashed(seed: int) -> str:
        torch.manual_seed(seed)
        with pytest.warns(UserWarning, match="no pooler"):
            loaded = load_model(str(tmp_path / "mlm"), task="classification", num_labels=2)
        model = apply_adapter(
            loaded.model, AdapterConfig(), architecture="bert", task="classification"
        )
        return backbone_hash(model)

    assert hashed(0) == hashed(0) != hashed(1)  # the random pooler is part of the backbone


def test_pad_token_prefers_eos() -> None:
    class Tok:
        pad_token, eos_token = None, "</s>"

    tok = Tok()
    assert with_pad_token(tok) is False and tok.pad_token == "</s>"  # type: ignore[arg-type]


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder


def _edit_config(src: Path, dst: Path, **changes) -> Path:
    folder = shutil.copytree(src, dst)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


def test_bad_folders_get_one_line_naming_path_and_fix(tiny_model_dirs, tmp_path: Path) -> None:
    llama = tiny_model_dirs["llama"]
    no_weights = shutil.copytree(llama, tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    truncated = shutil.copytree(llama, tmp_path / "truncated")
    (truncated / "model.safetensors").write_bytes((llama / "model.safetensors").read_bytes()[:500])
    cases = [
        (tmp_path / "missing", "classification", "no such folder"),
        (_write(tmp_path / "file_dir", "x.txt", "hi") / "x.txt", "classification", "is a file"),
        (_write(tmp_path / "empty", "README.md", "hi"), "classification", "no config.json"),
        (_write(tmp_path / "broken", "config.json", "{oops"), "classification", "not valid JSON"),
        (no_weights, "classification", "model.pretrained = false"),
        (
            _edit_config(llama, tmp_path / "deeper", num_hidden_layers=3),
            "classification",
            "misses tensors ['model.layers.2.",
        ),
        (
            _edit_config(llama, tmp_path / "shallower", num_hidden_layers=1),
            "classification",
            "has unexpected tensors ['model.layers.1.",
        ),
        (
            _edit_config(llama, tmp_path / "wider", intermediate_size=48),
            "causal_lm",
            "do not load into the model its config.json describes",
        ),
        (truncated, "causal_lm", "SafetensorError"),
        (tiny_model_dirs["bert"], "causal_lm", "'bert' model, an encoder"),
        (
            _write(tmp_path / "codegen", "config.json", '{"model_type": "codegen"}'),
            "classification",
            "no sequence-classification class",
        ),
        (
            _write(tmp_path / "custom", "config.json", '{"model_type": "x", "auto_map": {}}'),
            "classification",
            "model.trust_remote_code = true",
        ),
    ]
    (tmp_path / "codegen" / "model.safetensors").write_bytes(b"")  # checked before loading
    (tmp_path / "custom" / "model.safetensors").write_bytes(b"")
    for path, task, message in cases:
        with pytest.raises(ConfigError) as info:
            load_model(str(path), task=task, num_labels=2)
        text = str(info.value)
        assert message in text, (path, text)
        assert f"model.name = '{path}'" in text and "\n" not in text


def test_names_are_checked_before_any_load(tmp_path: Path) -> None:
    check_model_name(ModelConfig(name="minilm"))
    with pytest.raises(ConfigError, match="Did you mean 'minilm'.*path of a Hugging Face"):
        check_model_name(ModelConfig(name="minilmm"))
    with pytest.raises(ConfigError, match="no such folder"):
        check_model_name(ModelConfig(name=str(tmp_path / "nope")))


def test_model_config_keys() -> None:
    cfg = load_config(None, ["model.name=/data/models/my-llama/", "model.dtype=bfloat16"])
    assert cfg.model.dtype == "bfloat16" and cfg.model.trust_remote_code is False
    assert cfg.run_name.startswith("trec6-my-llama-lora-")  # the folder's name, not its path
    with pytest.raises(ConfigError, match="model.dtype = 'float64' is not one of"):
        load_config(None, ["model.dtype=float64"])
    with pytest.raises(ConfigError, match="Adam turns into inf"):
        load_config(None, ["model.dtype=float16", "adapter.method=full"])


def test_no_default_targets_lists_the_linear_modules(tiny_model_dirs) -> None:
    loaded = load_model(str(tiny_model_dirs["llama"]), task="classification", num_labels=2)
    with pytest.raises(ConfigError) as info:
        apply_adapter(loaded.model, AdapterConfig(), architecture="mystery", task="classification")
    text = str(info.value)
    assert "architecture 'mystery'" in text and "adapter.target_modules = [" in text
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"):
        assert name in text
    assert "score" not in text  # the head is not an adapter target


def test_registry_targets_are_unchanged() -> None:
    assert default_target_modules("bert") == ["query", "value"]
    assert default_target_modules("llama") == ["q_proj", "v_proj"]
