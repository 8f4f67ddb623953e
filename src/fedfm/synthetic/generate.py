"""Batched, seeded sampling of label-conditioned examples from a generative FM.

Each batch is sampled under its own seed (a pure function of the run seed and the batch
index), so the same requests, sampling settings and seed give the same texts on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedfm.resources.models import LoadedModel
from fedfm.synthetic.prompts import TOPICS, LabelSpec


@dataclass(frozen=True)
class Sampling:
    """How the generator samples (recorded with every row)."""

    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 40
    batch_size: int = 32


@dataclass(frozen=True)
class Request:
    """One example to write: its label, topic and the seed examples shown."""

    label: int
    topic: str
    examples: tuple[str, ...] = ()


def plan_requests(
    spec: LabelSpec, size: int, *, seed: int, examples_per_prompt: int = 3
) -> list[Request]:
    """``size`` requests, labels balanced round-robin, topics and seed examples drawn
    with ``np.random.default_rng([seed, 0])``."""
    rng = np.random.default_rng([seed, 0])
    requests = []
    for i in range(size):
        label = i % len(spec.label_names)
        pool = spec.seed_examples[label] if spec.seed_examples else ()
        k = min(examples_per_prompt, len(pool))
        shown = tuple(pool[j] for j in rng.choice(len(pool), size=k, replace=False)) if k else ()
        requests.append(Request(label, TOPICS[int(rng.integers(len(TOPICS)))], shown))
    return requests


def batch_seed(seed: int, batch: int) -> int:
    """The torch seed of batch ``batch`` of a generation run seeded ``seed``."""
    return int(np.random.default_rng([seed, 1, batch]).integers(2**31 - 1))


def newline_tokens(tokenizer) -> list[int]:  # noqa: ANN001
    """The end-of-text token and every token whose text holds a newline: one example per
    line, so a row stops at its first line break (HF ``stop_strings`` costs ~1 s a call)."""
    ids = [i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i])]
    return [tokenizer.eos_token_id, *ids] if tokenizer.eos_token_id is not None else ids


@torch.inference_mode()
def generate(
    lm: LoadedModel,
    spec: LabelSpec,
    requests: Sequence[Request],
    sampling: Sampling,
    *,
    seed: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """The raw completion of every request, in order.

    Args:
        lm: a causal FM (``load_model("smollm2-135m", task="causal_lm")``).
        on_batch: called with the number of requests done after each batch (progress).
    """
    tokenizer = lm.tokenizer
    assert tokenizer is not None
    model: Any = lm.model.eval()  # a transformers causal LM: it has .generate
    device = next(model.parameters()).device
    texts = [spec.prompt(r.label, topic=r.topic, examples=r.examples) for r in requests]
    stops = newline_tokens(tokenizer)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues right
    out: list[str] = []
    try:
        for b, start in enumerate(range(0, len(texts), sampling.batch_size)):
            chunk = texts[start : start + sampling.batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            torch.manual_seed(batch_seed(seed, b))
            ids = model.generate(
                **enc.to(device),
                do_sample=True,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_new_tokens=sampling.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=stops,
            )
            new = ids[:, enc["input_ids"].shape[1] :]
            out += tokenizer.batch_decode(new, skip_special_tokens=True)
            if on_batch is not None:
                on_batch(len(out))
    finally:
        tokenizer.padding_side = side
    return out
