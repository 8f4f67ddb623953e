"""The model card's load section: runnable code with the run's real paths, per export kind."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from fedfm.models.export import Export
from fedfm.report.card import HF_LOAD_HEADING, model_card_markdown

SUMMARY = {"name": "demo", "model": "tiny", "backbone_hash": "abc", "final": {}}


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)\n```", text, re.S)


def string_arguments(code: str) -> list[str]:
    """Every string literal the code passes (paths, dtype)."""
    return [n.value for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Constant)]


def card(run_dir: Path, export: Export | None) -> str:
    return model_card_markdown(run_dir, summary=SUMMARY, config_toml="", export=export)


def test_peft_snippet_loads_base_then_adapter_with_label_names(tmp_path: Path) -> None:
    run = tmp_path / 'odd "name" \\ here'  # quotes and a backslash must stay valid Python
    export = Export(
        "peft",
        "classification",
        folder=run / "adapter",
        base=tmp_path / "base",
        label_names=("neg", "pos"),
    )
    text = card(run, export)
    snippet = python_blocks(text.split(HF_LOAD_HEADING, 1)[1])[0]
    strings = string_arguments(snippet)
    assert str(run / "adapter") in strings and str(tmp_path / "base") in strings
    assert "AutoModelForSequenceClassification.from_pretrained(" in snippet
    assert "id2label={0: 'neg', 1: 'pos'}" in snippet and "fedfm" not in snippet
    assert f"fedfm export {run.resolve()} --merged DIR" in text


def test_causal_lm_snippet_has_no_labels(tmp_path: Path) -> None:
    export = Export("peft", "causal_lm", folder=tmp_path / "a", base=tmp_path / "b")
    snippet = python_blocks(card(tmp_path, export).split(HF_LOAD_HEADING, 1)[1])[0]
    assert "AutoModelForCausalLM.from_pretrained(" in snippet and "id2label" not in snippet
    assert '"text-generation"' in card(tmp_path, export)


def test_model_folder_snippet_needs_transformers_only(tmp_path: Path) -> None:
    export = Export("model", "classification", folder=tmp_path / "model", dtype="bfloat16")
    snippet = python_blocks(card(tmp_path, export).split(HF_LOAD_HEADING, 1)[1])[0]
    assert "peft" not in snippet and "bfloat16" in string_arguments(snippet)
    assert str(tmp_path / "model") in string_arguments(snippet)


def test_no_export_says_why_and_keeps_a_runnable_fedfm_snippet(tmp_path: Path) -> None:
    text = card(tmp_path, Export("none", "classification", note="it is an MLP"))
    assert HF_LOAD_HEADING not in text
    assert "no Hugging Face export: it is an MLP." in text
    (snippet,) = python_blocks(text)
    assert str(tmp_path.resolve() / "adapter.safetensors") in string_arguments(snippet)
    ast.parse(snippet)
