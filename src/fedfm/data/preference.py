"""Preference pairs as token ids and loss masks: the ``preference`` task's encoding (DPO).

A :class:`~fedfm.resources.types.PreferencePair` becomes two sequences, the prompt followed
by the chosen response and the prompt followed by the rejected one, each rendered by the
chat template exactly as an instruction example (:func:`fedfm.data.chat.render`: the prompt
conversation, ``data.system_prompt`` in front, then the response as the assistant's
message). The loss mask covers the response's tokens only (its content and the template's
end-of-turn token); an earlier assistant turn of a multi-turn prompt is prompt.

Both sequences keep the same prompt tokens: the chosen rendering's tokens before its
response, with the rejected response's tokens appended (the rejected rendering's own
tokens from its response on; for the usual templates and tokenizers the two renderings'
prompt tokens are equal anyway). Truncation to ``data.max_length`` is shared: the same
number of tokens is dropped from the start of the prompt in both so that the longer
sequence fits; when a response alone does not fit, both keep their last prompt token and
each loses its response's end. A pair counts once in ``truncated_prompts`` when its prompt
was cut, and once in ``truncated_responses`` when either response was.

Example:
    >>> pair = PreferencePair(({"role": "user", "content": "2+2?"},), "4", "5")
    >>> enc = encode_pairs(Split([pair], None), tokenizer, max_length=64)  # doctest: +SKIP
    >>> tokenizer.decode(enc.ids[0][enc.masks[0]])                          # doctest: +SKIP
    '4<|im_end|>'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedfm.data.batching import Encoded, pad_token_id
from fedfm.data.chat import ASSISTANT, render, resolve_template
from fedfm.errors import ConfigError
from fedfm.resources.types import PreferencePair, Split


@dataclass(frozen=True)
class PairWindow:
    """One pair cut to ``max_length`` tokens (see :func:`truncate_pair`)."""

    chosen: np.ndarray  # int64 ids: the shared prompt tokens, then the chosen response's
    chosen_mask: np.ndarray  # bool: the chosen response's tokens
    rejected: np.ndarray
    rejected_mask: np.ndarray
    prompt_cut: bool
    response_cut: bool  # either response lost its end


def render_pair(
    pair: PreferencePair, tokenizer: Any, *, template: str, system_prompt: str = ""
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The pair's shared prompt ids and each response's ``(ids, mask)``, uncut.

    Raises:
        ConfigError: see :func:`~fedfm.data.chat.render`.
    """
    responses = []
    prompt: np.ndarray | None = None
    for text in (pair.chosen, pair.rejected):
        conversation = (*pair.prompt, {"role": ASSISTANT, "content": text})
        out = render(conversation, tokenizer, template=template, system_prompt=system_prompt)
        if prompt is None:
            prompt = out.ids[: out.response_start]
        responses.append((out.ids[out.response_start :], out.mask[out.response_start :]))
    assert prompt is not None
    return prompt, responses[0], responses[1]


def truncate_pair(
    prompt: np.ndarray,
    chosen: tuple[np.ndarray, np.ndarray],
    rejected: tuple[np.ndarray, np.ndarray],
    max_length: int,
) -> PairWindow:
    """Both sequences cut to at most ``max_length`` tokens with one cut of the prompt's
    start (see the module docstring)."""
    longest = max(len(chosen[0]), len(rejected[0]))
    start = max(0, min(len(prompt) + longest - max_length, len(prompt) - 1))
    kept = prompt[start:]
    room = max_length - len(kept)  # tokens each response may keep
    no_mask = np.zeros(len(kept), dtype=bool)
    return PairWindow(
        chosen=np.concatenate([kept, chosen[0][:room]]),
        chosen_mask=np.concatenate([no_mask, chosen[1][:room]]),
        rejected=np.concatenate([kept, rejected[0][:room]]),
        rejected_mask=np.concatenate([no_mask, rejected[1][:room]]),
        prompt_cut=start > 0,
        response_cut=longest > room,
    )


def encode_pairs(
    split: Split,
    tokenizer: Any,
    *,
    max_length: int,
    chat_template: str = "",
    system_prompt: str = "",
) -> Encoded:
    """Every pair of ``split`` as two masked sequences (``ids`` the chosen, ``rejected`` the
    rejected), truncated together, with the truncations counted; ``labels=None`` (the
    split's category labels are not batched).

    Raises:
        ConfigError: see :func:`~fedfm.data.chat.resolve_template` and
            :func:`~fedfm.data.chat.render`; the message names the pair.
    """
    template = resolve_template(tokenizer, chat_template)
    chosen, chosen_masks, rejected, rejected_masks = [], [], [], []
    prompts = responses = 0
    for n, pair in enumerate(split.inputs, start=1):
        if not isinstance(pair, PreferencePair):
            raise ConfigError(
                f"preference example {n} is a {type(pair).__name__}, not a prompt with a "
                "chosen and a rejected response: give data.task = 'preference' a dataset of "
                "preference pairs"
            )
        try:
            parts = render_pair(pair, tokenizer, template=template, system_prompt=system_prompt)
        except ConfigError as err:
            raise ConfigError(f"preference example {n}: {err}") from err
        window = truncate_pair(*parts, max_length)
        chosen.append(window.chosen)
        chosen_masks.append(window.chosen_mask)
        rejected.append(window.rejected)
        rejected_masks.append(window.rejected_mask)
        prompts += window.prompt_cut
        responses += window.response_cut
    pad_id = pad_token_id(tokenizer)
    return Encoded(
        ids=chosen,
        features=None,
        labels=None,
        pad_id=pad_id,
        masks=chosen_masks,
        truncated_prompts=prompts,
        truncated_responses=responses,
        rejected=rejected,
        rejected_masks=rejected_masks,
    )
