"""Chat conversations as token ids and a loss mask: the ``instruction`` task's encoding.

A conversation (:data:`~fedfm.resources.types.Conversation`) is rendered by the chat
template (the tokenizer's own, or ``model.chat_template``) with ``data.system_prompt``
put in front as a system message when the conversation has none, and the rendered text is
tokenised without added special tokens (the template writes any it wants, as
``apply_chat_template(..., tokenize=True)`` does).

The mask rule (the loss covers the assistant's tokens only, as TRL's
``assistant_only_loss``): each assistant message ``i`` spans the characters of the rendered
text from the end of ``render(messages[:i], add_generation_prompt=True)`` (so after the
template's assistant header, e.g. ``<|im_start|>assistant\\n``) to the end of
``render(messages[:i + 1])`` without its trailing whitespace: the message's content and the
template's end-of-turn token (``<|im_end|>``), not the newline after it (a template that
ignores ``add_generation_prompt`` puts its assistant header in the span). A token is in the
mask when it holds any character of such a span (by the fast tokenizer's offsets), so a
token that joins a header's last space to the content's first word (``" Paris"`` after
``"Assistant:"``) counts. Every assistant message of a multi-turn conversation is covered;
system and user messages and the template's headers are not. A template that renders a
conversation's start differently from the whole conversation is refused (its spans cannot
be found this way), and so is a slow tokenizer (no offsets). Templates' ``{% generation %}``
marks are not read: the rule above needs none.

Truncation to ``data.max_length`` keeps the final response whole and drops tokens from the
start (the prompt side). When the response alone does not fit, the window keeps the last
prompt token (the end of the assistant header, which predicts the response's first token)
and the response's start: the response's end is cut and counted
(:attr:`~fedfm.data.batching.Encoded.truncated_responses`).

Example:
    >>> conv = ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"})
    >>> out = render(conv, tokenizer, template=resolve_template(tokenizer))  # doctest: +SKIP
    >>> tokenizer.decode(out.ids[out.mask])                                 # doctest: +SKIP
    'Hello<|im_end|>'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedfm.data.batching import Encoded, pad_token_id
from fedfm.errors import ConfigError
from fedfm.resources.types import Conversation, Message, Split

SYSTEM, USER, ASSISTANT = "system", "user", "assistant"
ROLES = (SYSTEM, USER, ASSISTANT)


@dataclass(frozen=True)
class Rendered:
    """One conversation, rendered and tokenised.

    Attributes:
        text: the rendered conversation.
        ids: int64 ``(T,)`` token ids of ``text``.
        mask: bool ``(T,)``: the tokens the loss covers (see the module docstring).
        response_start: the index of the final response's first token.
    """

    text: str
    ids: np.ndarray
    mask: np.ndarray
    response_start: int


@dataclass(frozen=True)
class Window:
    """A rendered conversation cut to ``max_length`` tokens (see :func:`truncate`)."""

    ids: np.ndarray
    mask: np.ndarray
    prompt_cut: bool  # tokens were dropped from the start
    response_cut: bool  # the final response's end was dropped


def resolve_template(tokenizer: Any, chat_template: str = "") -> str:
    """The Jinja chat template to render with: ``chat_template`` (the template itself, or
    the path of a file holding one), else the tokenizer's own.

    Raises:
        ConfigError: ``chat_template`` is neither a template nor a readable file, or it is
            empty and the tokenizer has no chat template.
    """
    if chat_template:
        if "{{" in chat_template or "{%" in chat_template:
            return chat_template
        path = Path(chat_template).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"model.chat_template = {chat_template!r} is neither a Jinja template (it has "
                "no '{{' or '{%') nor a file: give the template itself or the path of a file "
                "holding one"
            )
        return path.read_text(encoding="utf-8")
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # several named templates: the default one
        own = own.get("default")
    if not own:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ConfigError(
            f"the tokenizer of {name!r} has no chat template, which data.task = 'instruction' "
            "(and 'preference') renders conversations with: set model.chat_template to a "
            "Jinja template (or the path of a file holding one), e.g. ChatML's"
        )
    return str(own)


def with_system(conversation: Conversation, system_prompt: str) -> list[Message]:
    """The messages to render: ``system_prompt`` first, unless it is empty or the
    conversation has a system message of its own."""
    messages = [dict(m) for m in conversation]
    if system_prompt and not any(m["role"] == SYSTEM for m in messages):
        messages.insert(0, {"role": SYSTEM, "content": system_prompt})
    return messages


def _render_text(
    tokenizer: Any, messages: list[Message], template: str, *, generation: bool
) -> str:
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(
            messages,
            chat_template=template,
            tokenize=False,
            add_generation_prompt=generation,
        )
    except (TemplateError, ValueError, TypeError, KeyError) as err:
        raise ConfigError(
            f"the chat template failed on a conversation ({type(err).__name__}: {err}); fix "
            "the data or set model.chat_template to a template that renders it"
        ) from err
    return str(text)


def assistant_spans(
    tokenizer: Any, messages: list[Message], template: str
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and each assistant message's character span ``[start,
    end)`` in it (see the module docstring for what a span holds)."""
    full = _render_text(tokenizer, messages, template, generation=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != ASSISTANT:
            continue
        head = _render_text(tokenizer, messages[:i], template, generation=True)
        upto = _render_text(tokenizer, messages[: i + 1], template, generation=False)
        if not (upto.startswith(head) and full.startswith(upto)):
            raise ConfigError(
                "the chat template renders the start of a conversation differently from the "
                "whole conversation, so the assistant's tokens cannot be found: set "
                "model.chat_template to a template whose rendering of a conversation begins "
                "with its rendering of every earlier part"
            )
        spans.append((len(head), max(len(head), len(upto.rstrip()))))
    return full, spans


def render(
    conversation: Conversation, tokenizer: Any, *, template: str, system_prompt: str = ""
) -> Rendered:
    """Token ids and the loss mask of one conversation (its last message the response).

    Raises:
        ConfigError: the template fails on the conversation or is not prefix-stable, or the
            tokenizer is not a fast one (the mask needs its character offsets).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            "data.task = 'instruction' (and 'preference') needs a fast tokenizer (character "
            f"offsets), but {type(tokenizer).__name__} is not one: save the model with a "
            "tokenizer.json"
        )
    messages = with_system(conversation, system_prompt)
    text, spans = assistant_spans(tokenizer, messages, template)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    starts, ends = offsets[:, 0], offsets[:, 1]
    mask = np.zeros(len(ids), dtype=bool)
    for lo, hi in spans:
        mask |= (ends > lo) & (starts < hi)  # the token holds a character of [lo, hi)
    last = spans[-1][0] if spans else len(text)
    response_start = int(np.searchsorted(ends, last, side="right"))  # first token past last
    return Rendered(text, ids, mask, response_start)


def truncate(rendered: Rendered, max_length: int) -> Window:
    """``rendered`` cut to at most ``max_length`` tokens: from the start, keeping the final
    response whole; a response longer than that keeps one prompt token before it and loses
    its end."""
    total = len(rendered.ids)
    start = max(0, min(total - max_length, rendered.response_start - 1))
    stop = min(total, start + max_length)
    return Window(
        ids=rendered.ids[start:stop],
        mask=rendered.mask[start:stop],
        prompt_cut=start > 0,
        response_cut=stop < total,
    )


def encode_chat(
    split: Split,
    tokenizer: Any,
    *,
    max_length: int,
    chat_template: str = "",
    system_prompt: str = "",
) -> Encoded:
    """Every conversation of ``split`` as ids and a loss mask, truncated (see the module
    docstring), with the truncations counted.

    The conversations are in memory (a list), and so are their ids: no on-disk token cache
    as for a file's texts. The split's category labels are not batched (``labels=None``).

    Raises:
        ConfigError: see :func:`resolve_template` and :func:`render`; the message names
            the example.
    """
    template = resolve_template(tokenizer, chat_template)
    ids, masks, prompts, responses = [], [], 0, 0
    for n, conversation in enumerate(split.inputs, start=1):
        try:
            window = truncate(
                render(conversation, tokenizer, template=template, system_prompt=system_prompt),
                max_length,
            )
        except ConfigError as err:
            raise ConfigError(f"instruction example {n}: {err}") from err
        ids.append(window.ids)
        masks.append(window.mask)
        prompts += window.prompt_cut
        responses += window.response_cut
    pad_id = pad_token_id(tokenizer)
    return Encoded(
        ids=ids,
        features=None,
        labels=None,
        pad_id=pad_id,
        masks=masks,
        truncated_prompts=prompts,
        truncated_responses=responses,
    )
