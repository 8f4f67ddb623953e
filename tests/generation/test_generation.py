"""Evaluation by generation: greedy batched generation, the scorers, per-client scores and the
samples table."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers

import fedfm.generation as generation
from fedfm.errors import ConfigError
from fedfm.generation import (
    GENERATIONS_FILE,
    SCORERS,
    SampleRow,
    exact_match,
    generate,
    label_match,
    normalize,
    per_client_scores,
    prompt_text,
    rouge_l,
    samples_table,
    split_references,
    write_samples,
)
from fedfm.generation.generate import left_pad, render, with_system
from fedfm.resources.types import Conversation

# The tiny tokenizers have no chat template; one line per message, then the assistant's turn.
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
QUESTIONS = (
    "What is the capital of France?",
    "Hi",
    "Who wrote the play Hamlet? To be, or not to be, that is the question",
    "Why is the sky blue?",
    "ok",
    "The quick brown fox jumps over the lazy dog",
)
PROMPTS: list[Conversation] = [({"role": "user", "content": q},) for q in QUESTIONS]


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dirs: dict[str, Path]) -> tuple[Any, Any]:
    """The tiny Llama (no pad token, rotary positions: left padding matters) with weights
    redrawn at std 0.3: at its init std (0.02) every prompt gets the same blank token, which
    would let a test of order or padding pass without looking."""
    folder = tiny_model_dirs["llama"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return model, tokenizer


def run(lm: tuple[Any, Any], prompts: list[Conversation], **kwargs: Any) -> list[str]:
    model, tokenizer = lm
    kwargs = {"max_new_tokens": 8, "batch_size": 4, "chat_template": TEMPLATE, **kwargs}
    return generate(model, tokenizer, prompts, **kwargs)


def spy_generate(model: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    """Record each ``model.generate`` call's ``(inputs, output ids)``."""
    calls: list[tuple[Any, Any]] = []
    original = model.generate

    def spy(**kwargs: Any) -> Any:
        out = original(**kwargs)
        calls.append((kwargs, out))
        return out

    monkeypatch.setattr(model, "generate", spy)
    return calls


# ----------------------------------------------------------------------------- generate


def test_batched_equals_one_by_one_and_pads_on_the_left(
    tiny_lm: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    one = run(tiny_lm, PROMPTS, batch_size=1)
    assert len(set(one)) == len(PROMPTS)  # the model tells the prompts apart
    calls = spy_generate(tiny_lm[0], monkeypatch)
    assert run(tiny_lm, PROMPTS, batch_size=4) == one
    assert run(tiny_lm, PROMPTS, batch_size=len(PROMPTS)) == one
    masks = [inputs["attention_mask"] for inputs, _ in calls]
    assert all(bool(m[:, -1].all()) for m in masks)  # every prompt ends in the last column
    assert any(not bool(m[:, 0].all()) for m in masks)  # and shorter ones start later
    assert tiny_lm[1].pad_token is None  # the tokenizer was not changed (eos pads)


def test_left_pad() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_deterministic_and_in_input_order(tiny_lm: tuple[Any, Any]) -> None:
    first = run(tiny_lm, PROMPTS)
    assert run(tiny_lm, PROMPTS) == first
    assert run(tiny_lm, PROMPTS[::-1]) == first[::-1]
    assert run(tiny_lm, []) == []


def test_max_new_tokens_and_no_prompt_echo(
    tiny_lm: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokenizer = tiny_lm
    calls = spy_generate(model, monkeypatch)
    outputs = run(tiny_lm, PROMPTS, max_new_tokens=5, batch_size=len(PROMPTS))
    ((inputs, out),) = calls
    width = inputs["input_ids"].shape[1]
    assert out.shape[1] - width == 5  # the random model never stops early: exactly 5
    order = sorted(range(len(PROMPTS)), key=lambda i: -len(QUESTIONS[i]))
    for row, i in enumerate(order):  # batched longest first; each output is its new tokens
        new = tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
        assert outputs[i] == new
        assert not outputs[i].startswith("user")


def test_eval_mode_while_generating_and_restored(tiny_lm: tuple[Any, Any]) -> None:
    model = tiny_lm[0]
    model.train()
    try:
        run(tiny_lm, PROMPTS[:2])
        assert model.training
    finally:
        model.eval()


def test_peft_wrapped_model(
    tiny_model_dirs: dict[str, Path], tiny_lm: tuple[Any, Any], tmp_path: Path
) -> None:
    import peft

    model, tokenizer = tiny_lm
    folder = tmp_path / "llama"
    shutil.copytree(tiny_model_dirs["llama"], folder)
    base = transformers.AutoModelForCausalLM.from_pretrained(folder)
    base.load_state_dict(model.state_dict())
    wrapped = peft.get_peft_model(
        base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.5)
    )
    # LoRA's B starts at zero: the wrapped model answers as the base (dropout is off in eval)
    assert run((wrapped, tokenizer), PROMPTS) == run(tiny_lm, PROMPTS)


def test_system_prompt_and_template() -> None:
    prompt: Conversation = ({"role": "user", "content": "Hi"},)
    with_sys = with_system(prompt, "Be brief.")
    assert with_sys[0] == {"role": "system", "content": "Be brief."} and with_sys[1:] == prompt
    assert with_system(with_sys, "Other.") == with_sys  # one system message at most
    assert with_system(prompt, "") == prompt


def test_render_uses_template_and_asks_for_one(tiny_lm: tuple[Any, Any]) -> None:
    tokenizer = tiny_lm[1]
    prompt: Conversation = ({"role": "user", "content": "Hi"},)
    ids = render(tokenizer, prompt, chat_template=TEMPLATE)
    assert tokenizer.decode(ids) == "user: Hi\nassistant: "  # no bos added to the template's
    with pytest.raises(ValueError, match="no chat template: pass chat_template"):
        render(tokenizer, prompt)


def test_bad_arguments(tiny_lm: tuple[Any, Any]) -> None:
    with pytest.raises(ValueError, match="max_new_tokens = 0"):
        run(tiny_lm, PROMPTS, max_new_tokens=0)
    with pytest.raises(ValueError, match="batch_size = 0"):
        run(tiny_lm, PROMPTS, batch_size=0)


def test_split_references() -> None:
    user = {"role": "user", "content": "2+2?"}
    convs: list[Conversation] = [(user, {"role": "assistant", "content": "4"})]
    assert split_references(convs) == ([(user,)], ["4"])
    with pytest.raises(ValueError, match=r"conversation 0 has roles \['user'\]"):
        split_references([(user,)])


# ----------------------------------------------------------------------------- scorers


@pytest.mark.parametrize(
    ("prediction", "reference", "match"),
    [
        ("Paris", "paris", 1.0),
        ("  The   Eiffel Tower. ", "eiffel tower", 1.0),  # articles, punctuation, spaces
        ("an apple!", "Apple", 1.0),
        ("Theory", "ory", 0.0),  # "the" is dropped as a word, not inside one
        ("Paris, France", "Paris", 0.0),
        ("", "", 1.0),
    ],
)
def test_exact_match(prediction: str, reference: str, match: float) -> None:
    assert exact_match(prediction, reference) == match


def test_normalize() -> None:
    assert normalize("  The Eiffel-Tower, in PARIS! ") == "eiffeltower in paris"
    assert normalize("A\tb\n\nc") == "b c"


@pytest.mark.parametrize(
    ("prediction", "reference", "f"),
    [
        # LCS "the cat on the mat": 5 of 6 tokens each way
        ("the cat sat on the mat", "the cat is on the mat", 5 / 6),
        # LCS "a c": P = 2/4, R = 2/3, F = 2PR/(P+R) = 4/7
        ("a b c d", "a c e", 4 / 7),
        ("Hello, World!", "hello world", 1.0),  # rouge-score's tokens: [a-z0-9] runs
        ("hello", "world", 0.0),
        ("日本語", "日本語", 0.0),  # no ASCII letters or digits: no tokens (documented)
    ],
)
def test_rouge_l_against_hand_computed(prediction: str, reference: str, f: float) -> None:
    assert rouge_l(prediction, reference) == pytest.approx(f)


@pytest.mark.parametrize(
    ("prediction", "label", "match"),
    [
        ("positive", "Positive", 1.0),
        ("Positive. What a film", "positive", 1.0),  # begins with the label, then a word
        ("The answer is positive", "positive", 0.0),  # must begin with it
        ("nothing", "no", 0.0),  # a prefix of a word is not the label
        ("not spam", "spam", 0.0),
        ("spam", "not spam", 0.0),
        ("loc:city!", "LOC:city", 1.0),  # case and punctuation do not count
        ("LOC:city", "loc city", 0.0),  # punctuation is dropped, not read as a space (SQuAD)
    ],
)
def test_label_rule(prediction: str, label: str, match: float) -> None:
    assert label_match(prediction, label) == match


def test_scorers_registry() -> None:
    assert SCORERS.names() == ["label", "text"]
    text = SCORERS.get("text")(["the cat sat", "dog"], ["The cat sat.", "a cat"])
    assert text.main == "rouge_l"
    assert text.per_example["exact_match"] == [1.0, 0.0]
    assert text.means() == {"exact_match": 0.5, "rouge_l": pytest.approx(0.5)}
    label = SCORERS.get("label")(["Yes", "no way", "maybe"], ["yes", "no", "no"])
    assert label.per_example == {"accuracy": [1.0, 1.0, 0.0]}
    assert label.means() == {"accuracy": pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        SCORERS.get("text")(["a", "b"], ["a"])
    with pytest.raises(ConfigError, match="Did you mean 'label'"):
        SCORERS.get("labels")


# ----------------------------------------------------------------------------- report


def test_per_client_scores_as_evaluate_clients() -> None:
    rng = np.random.default_rng(0)
    values = {c: list(rng.random(int(rng.integers(1, 6)))) for c in range(23)}
    means = [float(np.mean(v)) for v in values.values()]
    ordered = np.sort(means)  # evaluate_clients' formula, higher is better
    worst = ordered[: max(1, int(np.ceil(0.1 * len(ordered))))]
    assert len(worst) == 3
    scores = per_client_scores({**values, 99: []})  # a client with no examples is left out
    assert scores == pytest.approx(
        {"mean": float(np.mean(means)), "worst10": float(np.mean(worst))}
    )


def test_per_client_scores_small() -> None:
    assert per_client_scores({0: [1.0, 0.0], 1: [1.0, 1.0]}) == {"mean": 0.75, "worst10": 0.5}
    assert per_client_scores({3: [0.25]}) == {"mean": 0.25, "worst10": 0.25}
    assert per_client_scores({}) == {} and per_client_scores({0: []}) == {}


def split_row(line: str) -> list[str]:
    """A markdown table row's cells, split at unescaped pipes (as GitHub's renderer does)."""
    cells, current, i = [], "", 0
    while i < len(line):
        if line[i] == "\\" and i + 1 < len(line):
            current += line[i : i + 2]
            i += 2
            continue
        if line[i] == "|":
            cells.append(current)
            current = ""
        else:
            current += line[i]
        i += 1
    return [c.strip() for c in cells[1:]]  # before the first pipe: nothing


def test_samples_table_escapes_and_cuts() -> None:
    rows = [
        SampleRow("a | b", "line one\nline two", "x <b>y</b> & z\\", None),
        SampleRow("long", "r", "w" * 500, "local"),
    ]
    table = samples_table(rows, max_chars=50)
    lines = table.splitlines()
    assert len(lines) == 4  # header, rule, one line per row: newlines did not split a row
    assert lines[0] == "| prompt | reference | global model | local-only model |"
    cells = [split_row(line) for line in lines[2:]]
    assert all(len(c) == 4 for c in cells)  # the | in a cell did not make a fifth
    assert cells[0] == [
        "a \\| b",
        "line one<br>line two",
        "x &lt;b&gt;y&lt;/b&gt; &amp; z\\\\",
        "–",  # no local-only model
    ]
    assert cells[1][2] == "w" * 49 + "…" and cells[1][3] == "local"


def test_prompt_text() -> None:
    assert prompt_text(({"role": "user", "content": "Hi"},)) == "Hi"
    two = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"})
    assert prompt_text(two) == "system: Be brief.\nuser: Hi"


def test_write_samples(tmp_path: Path) -> None:
    path = write_samples(tmp_path, [SampleRow("p", "r", "g", "l")])
    assert path == tmp_path / GENERATIONS_FILE == tmp_path / "generations.md"
    text = path.read_text()
    assert text.startswith("# Generated examples\n\n| prompt |") and "| p | r | g | l |" in text
    assert [p.name for p in tmp_path.iterdir()] == ["generations.md"]  # no temporary left


# ----------------------------------------------------------------------------- SmolLM2


def test_smollm2_generates_deterministically() -> None:
    from fedfm.resources.models import load_model

    lm = load_model("smollm2-135m", task="causal_lm")
    prompts: list[Conversation] = [
        ({"role": "user", "content": "What is the capital of France?"},),
        ({"role": "user", "content": "Name a colour of the sky."},),
    ]
    start = time.perf_counter()
    out = generate(lm.model, lm.tokenizer, prompts, max_new_tokens=8, batch_size=2)
    seconds = time.perf_counter() - start
    assert len(out) == 2 and all(o for o in out)
    assert not any("<|im" in o or "assistant" in o for o in out)  # no template, no prompt
    again = generate(lm.model, lm.tokenizer, prompts, max_new_tokens=8, batch_size=2)
    assert again == out
    assert generate(lm.model, lm.tokenizer, prompts, max_new_tokens=8, batch_size=1) == out
    print(f"smollm2: {out} in {seconds:.2f} s")


def test_public_names_load_lazily() -> None:
    assert sorted(generation.__all__) == sorted(generation._EXPORTS)
    code = (
        "import sys; from fedfm.generation import SCORERS, per_client_scores, write_samples; "
        "print(sorted(m for m in ('torch', 'transformers', 'nltk') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # a config check can name the scorers cheaply
