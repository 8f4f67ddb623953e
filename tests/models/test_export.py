"""Every adapter method's Hugging Face export reproduces the run's final metric.

One table of cases through one tester: a federated run (as ``fedfm run`` makes it) on a
tiny BERT folder, then the exported folder loaded with peft / transformers calls only (in process
here; tests/test_cli_export.py does it in a subprocess without fedfm) and scored on the
run's test set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from safetensors.torch import load_file

from fedfm.cli import main
from fedfm.config import load_config
from fedfm.data.federation import subsample
from fedfm.datasets import load_dataset
from fedfm.errors import ParamsMismatchError
from fedfm.models.export import load_adapter_folder
from fedfm.models.params import load_params_file, save_params_file
from fedfm.resources.models import MLPClassifier
from fedfm.runtime.run import execute, prepare_run_dir

SMALL = [
    "data.partition=iid",
    "data.num_clients=2",
    "data.min_client_size=8",
    "data.max_length=16",
    "data.max_train_examples=48",
    "data.max_test_examples=24",
    "strategy.fraction=1.0",
    "rounds=1",
    "client.batch_size=8",
    "client.steps=2",
    "client.lr=0.05",
]


def cli_run(out: Path, name: str, *overrides: str) -> Path:
    """A run as ``fedfm run --set ...`` makes it, without drawing curves.png (~1 s each)."""
    cfg = load_config(None, [*SMALL, *overrides, f"output_dir={out}", f"name={name}"])
    run_dir = prepare_run_dir(cfg, overwrite=False)
    execute(cfg, run_dir=run_dir, console=Console(quiet=True), plot=False)
    return run_dir


def last_record(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


def score(model: torch.nn.Module, tokenizer: Any, run_dir: Path) -> tuple[float, float]:
    """Accuracy and mean loss of a plain HF classifier on the run's own test set."""
    cfg = load_config(run_dir / "config.toml")
    test = subsample(load_dataset(cfg.data.dataset).test, cfg.data.max_test_examples, seed=cfg.seed)
    enc = tokenizer(
        list(test.inputs),
        truncation=True,
        max_length=cfg.data.max_length,
        padding=True,
        return_tensors="pt",
    )
    assert test.labels is not None
    y = torch.from_numpy(test.labels)
    with torch.inference_mode():
        logits = model.eval()(**enc).logits
    return (logits.argmax(-1) == y).double().mean().item(), F.cross_entropy(logits, y).item()


def load_plain(run_dir: Path) -> tuple[torch.nn.Module, Any]:
    """What the run exported, loaded with plain transformers (model/) or peft (adapter/)."""
    import transformers

    labels = json.loads((run_dir / "labels.json").read_text())
    if (run_dir / "model").is_dir():
        folder = str(run_dir / "model")
        model = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
        return model, transformers.AutoTokenizer.from_pretrained(folder)
    return load_adapter_folder(run_dir / "adapter", label_names=labels, merge=False)


CASES = [  # (model kind, overrides, the folder it exports); LoRA: tests/test_cli_export.py
    ("bert", ["adapter.freeze_a=true"], "adapter"),  # FFA-LoRA: A is frozen, not in params
    ("llama", ["adapter.method=ia3"], "adapter"),  # a decoder's head pools the last non-pad
    ("bert", ["adapter.method=head"], "model"),
    pytest.param("bert", ["adapter.method=bitfit"], "model", marks=pytest.mark.slow),
    pytest.param("bert", ["adapter.method=full"], "model", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("kind", "overrides", "folder"), CASES)
def test_export_of_each_method_gives_the_runs_final_metric(
    kind: str, overrides: list[str], folder: str, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    run_dir = cli_run(tmp_path, "run", f"model.name={tiny_model_dirs[kind]}", *overrides)
    assert (run_dir / folder).is_dir()
    assert not (run_dir / ({"adapter", "model"} - {folder}).pop()).exists()
    model, tokenizer = load_plain(run_dir)
    accuracy, loss = score(model, tokenizer, run_dir)
    record = last_record(run_dir)
    assert abs(accuracy - record["test_accuracy"]) <= 1e-6
    assert abs(loss - record["test_loss"]) <= 1e-5
    card = (run_dir / "README.md").read_text()
    assert f"`{folder}/`" in card
    if folder == "model":  # fedfm export copies it; a pipeline prints the label names
        out = tmp_path / "merged"
        assert main(["export", str(run_dir), "--merged", str(out)]) == 0
        import transformers

        pipe = transformers.pipeline("text-classification", model=str(out))
        label = pipe("What is the capital of France?")[0]["label"]
        assert label in json.loads((run_dir / "labels.json").read_text())


def test_flora_merged_rounds_are_folded_into_the_adapter(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    overrides = ["strategy.name=flora", "strategy.reproject=false", "rounds=2"]
    run_dir = cli_run(tmp_path, "flora", f"model.name={tiny_model_dirs['bert']}", *overrides)
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    rank = config["r"]
    assert config["rank_pattern"] and all(r > rank for r in config["rank_pattern"].values())
    assert config["alpha_pattern"] == config["rank_pattern"]  # scale 1: B carries the scale
    # without the fold, the adapter alone (B restarted at 0) would miss the merged rounds
    merged = load_file(str(run_dir / "merged.safetensors"))
    assert merged and all(t.abs().max() > 0 for t in merged.values())
    assert "FLoRA" in (run_dir / "README.md").read_text()
    record = last_record(run_dir)
    accuracy, loss = score(*load_plain(run_dir), run_dir)
    assert abs(accuracy - record["test_accuracy"]) <= 1e-6
    assert abs(loss - record["test_loss"]) <= 1e-5
    # the merged export scores the same as the run
    out = tmp_path / "merged"
    assert main(["export", str(run_dir), "--merged", str(out)]) == 0
    import transformers

    model = transformers.AutoModelForSequenceClassification.from_pretrained(out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    accuracy, loss = score(model, tokenizer, run_dir)
    assert abs(accuracy - record["test_accuracy"]) <= 1e-6
    assert abs(loss - record["test_loss"]) <= 1e-5


def test_feature_model_run_has_labels_but_no_hf_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    overrides = ["data.dataset=digits", "model.name=mlp", "adapter.method=full"]
    run_dir = cli_run(tmp_path, "mlp", *overrides, "data.max_test_examples=50")
    assert json.loads((run_dir / "labels.json").read_text()) == [str(d) for d in range(10)]
    assert not (run_dir / "adapter").exists() and not (run_dir / "model").exists()
    card = (run_dir / "README.md").read_text()
    assert "no Hugging Face export: this model is not a Hugging Face model" in card
    assert main(["export", str(run_dir), "--merged", str(tmp_path / "out")]) == 2
    assert "no adapter/ or model/ folder" in capsys.readouterr().out
    # fedfm eval still scores it, exactly as the run did
    assert main(["eval", str(run_dir)]) == 0
    result = json.loads((run_dir / "eval.json").read_text())["metrics"]
    assert result["accuracy"] == last_record(run_dir)["test_accuracy"]


def test_personalised_run_exports_nothing_and_eval_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    overrides = ["data.dataset=digits", "model.name=mlp", "strategy.name=local"]
    run_dir = cli_run(tmp_path, "local", *overrides, "adapter.method=full")
    assert (run_dir / "clients").is_dir() and not (run_dir / "adapter.safetensors").exists()
    assert "every client keeps its own params" in (run_dir / "README.md").read_text()
    assert main(["eval", str(run_dir)]) == 2
    assert "personalised run" in capsys.readouterr().out


def test_params_of_another_label_count_are_refused_naming_both(tmp_path: Path) -> None:
    path = save_params_file(
        tmp_path / "p.safetensors",
        dict(MLPClassifier(input_dim=8, num_labels=3).named_parameters()),
        backbone="none",
    )
    with pytest.raises(ParamsMismatchError) as err:
        load_params_file(MLPClassifier(input_dim=8, num_labels=5), path, backbone="none")
    message = str(err.value)
    assert "task head for 3 labels" in message and "head has 5 labels" in message
    assert "adapter rank" not in message
