"""Batched greedy generation from chat prompts: left padding, the KV cache, input order kept.

Example:
    >>> prompts, references = split_references(conversations)  # doctest: +SKIP
    >>> outputs = generate(model, tok, prompts, max_new_tokens=32, batch_size=8)  # doctest: +SKIP

Greedy decoding is deterministic for a given batch size: the same model, prompts and
``batch_size`` give the same texts, bit for bit. Across batch sizes it is the same up to
float rounding: left padding changes the length of the sums inside attention, so where two
tokens' logits tie within rounding the argmax may differ (not seen on the models tested).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import transformers
from torch import nn

from fedfm.resources.types import Conversation


def split_references(conversations: Sequence[Conversation]) -> tuple[list[Conversation], list[str]]:
    """Each instruction example's prompt (every message but the last) and its reference (the
    last message, the assistant's response).

    Raises:
        ValueError: a conversation that does not end with an assistant message after at
            least one other message.
    """
    prompts, references = [], []
    for i, conversation in enumerate(conversations):
        if len(conversation) < 2 or conversation[-1].get("role") != "assistant":
            roles = [m.get("role") for m in conversation]
            raise ValueError(
                f"conversation {i} has roles {roles}: an instruction example ends with the "
                "assistant's response after at least one prompt message (e.g. user, assistant)"
            )
        prompts.append(conversation[:-1])
        references.append(conversation[-1]["content"])
    return prompts, references


def generate(
    model: nn.Module,
    tokenizer: transformers.PreTrainedTokenizerBase,
    prompts: Sequence[Conversation],
    *,
    max_new_tokens: int,
    batch_size: int,
    system_prompt: str = "",
    chat_template: str | None = None,
) -> list[str]:
    """The model's greedy response to each prompt, in the order of ``prompts``.

    Args:
        model: a causal LM (a peft-wrapped one too); put in eval mode while generating and
            returned to its previous mode.
        tokenizer: its tokenizer; not changed (padding is done here, on the left, with the
            pad token, else the eos token).
        prompts: conversations without the response (see :func:`split_references`).
        max_new_tokens: the most tokens generated per prompt (at least 1).
        batch_size: prompts per ``model.generate`` call (at least 1); prompts are batched in
            order of length, so a batch wastes little on padding.
        system_prompt: a system message put first in every prompt that has none.
        chat_template: a Jinja chat template used instead of the tokenizer's own.

    Returns:
        The generated texts, without the prompt and special tokens, stripped.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens = {max_new_tokens}: generate at least 1 token")
    if batch_size < 1:
        raise ValueError(f"batch_size = {batch_size}: use a batch of at least 1 prompt")
    ids = [
        render(tokenizer, with_system(p, system_prompt), chat_template=chat_template)
        for p in prompts
    ]
    pad_id, stop_ids = special_ids(model, tokenizer)
    config = transformers.GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,  # greedy, one beam: the model's sampling settings do not apply; its
        num_beams=1,  # other settings (e.g. a repetition_penalty) fill what is unset here
        use_cache=True,  # the KV cache: each new token attends to cached keys and values
        pad_token_id=pad_id,
        eos_token_id=sorted(stop_ids) or None,
    )
    device = next(model.parameters()).device
    outputs: list[str] = [""] * len(ids)
    lm: Any = model  # a transformers or peft causal LM: it has .generate
    was_training = model.training
    model.eval()  # no dropout: greedy is then a function of the inputs
    try:
        with torch.inference_mode():
            for batch in length_batches(ids, batch_size):
                input_ids, mask = left_pad([ids[i] for i in batch], pad_id)
                out = lm.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=mask.to(device),
                    generation_config=config,
                )
                new = out[:, input_ids.shape[1] :].tolist()  # (B, <= max_new_tokens)
                for i, tokens in zip(batch, new, strict=True):
                    outputs[i] = decode(tokenizer, tokens, stop_ids)
    finally:
        model.train(was_training)
    return outputs


def with_system(prompt: Conversation, system_prompt: str) -> Conversation:
    """``prompt`` with a system message first, unless it has one or ``system_prompt`` is ''."""
    if not system_prompt or (prompt and prompt[0].get("role") == "system"):
        return prompt
    return ({"role": "system", "content": system_prompt}, *prompt)


def render(
    tokenizer: transformers.PreTrainedTokenizerBase,
    prompt: Conversation,
    *,
    chat_template: str | None = None,
) -> list[int]:
    """The token ids of ``prompt`` in the chat template, ending with the assistant's turn."""
    if chat_template is None and not tokenizer.chat_template:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no chat template: pass chat_template "
            "(a Jinja string, e.g. \"{% for m in messages %}{{ m['role'] }}: "
            "{{ m['content'] }}\\n{% endfor %}assistant: \")"
        )
    text = tokenizer.apply_chat_template(
        list(prompt), chat_template=chat_template, tokenize=False, add_generation_prompt=True
    )
    # The template writes every special token it wants (bos included): add none twice.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def special_ids(
    model: nn.Module, tokenizer: transformers.PreTrainedTokenizerBase
) -> tuple[int, set[int]]:
    """``(pad id, stop ids)``: the pad token (the eos token when there is none) and every
    token that ends a response (the model's generation config's eos ids and the tokenizer's)."""
    stop: set[int] = set()
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    stop.update([eos] if isinstance(eos, int) else eos or [])
    if tokenizer.eos_token_id is not None:
        stop.add(tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = (
            tokenizer.eos_token_id
            if tokenizer.eos_token_id is not None
            else min(stop, default=None)
        )
    if pad is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has neither a pad nor an eos token, and the "
            "model's generation config names no eos token: give the tokenizer a pad token"
        )
    return pad, stop


def length_batches(ids: Sequence[Sequence[int]], batch_size: int) -> Iterator[list[int]]:
    """Indices of ``ids`` in batches of ``batch_size``, longest prompts first (ties in input
    order), so each batch pads little and the first batch shows the peak memory."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def left_pad(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, both ``(B, T)`` int64, padded on the left: every
    prompt ends in the last column, where generation continues."""
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, tokens in enumerate(ids):
        if tokens:
            input_ids[row, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
            mask[row, width - len(tokens) :] = 1
    return input_ids, mask


def decode(
    tokenizer: transformers.PreTrainedTokenizerBase, tokens: list[int], stop_ids: set[int]
) -> str:
    """The text of generated ``tokens`` up to the first stop token, without special tokens."""
    end = next((i for i, t in enumerate(tokens) if t in stop_ids), len(tokens))
    return str(tokenizer.decode(tokens[:end], skip_special_tokens=True)).strip()
