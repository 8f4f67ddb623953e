"""Evaluation by generation: a causal LM's greedy responses to held-out prompts, scored
against the references, per client, with examples written into the run folder.

Modules:
    generate: batched greedy generation from chat prompts (left padding, the KV cache).
    scorers: exact match, ROUGE-L and label accuracy; the ``SCORERS`` registry.
    report: mean and worst-10% over clients; the ``generations.md`` table.

Names load on first use: ``SCORERS`` and the report helpers import neither torch nor
transformers (a config check can name the scorers cheaply); ``generate`` imports both.

Example:
    >>> prompts, references = split_references(conversations)  # doctest: +SKIP
    >>> outputs = generate(model, tok, prompts, max_new_tokens=32, batch_size=8)  # doctest: +SKIP
    >>> SCORERS.get("text")(outputs, references).means()  # doctest: +SKIP
    {'exact_match': 0.12, 'rouge_l': 0.41}
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedfm.generation.generate import generate, split_references
    from fedfm.generation.report import (
        GENERATIONS_FILE,
        SampleRow,
        client_means,
        per_client_scores,
        prompt_text,
        samples_table,
        write_samples,
    )
    from fedfm.generation.scorers import (
        SCORERS,
        Scorer,
        Scores,
        exact_match,
        label_match,
        normalize,
        rouge_l,
    )

_MODULES = {
    "fedfm.generation.generate": ("generate", "split_references"),
    "fedfm.generation.report": (
        "GENERATIONS_FILE",
        "SampleRow",
        "client_means",
        "per_client_scores",
        "prompt_text",
        "samples_table",
        "write_samples",
    ),
    "fedfm.generation.scorers": (
        "SCORERS",
        "Scorer",
        "Scores",
        "exact_match",
        "label_match",
        "normalize",
        "rouge_l",
    ),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "GENERATIONS_FILE",
    "SCORERS",
    "SampleRow",
    "Scorer",
    "Scores",
    "client_means",
    "exact_match",
    "generate",
    "label_match",
    "normalize",
    "per_client_scores",
    "prompt_text",
    "rouge_l",
    "samples_table",
    "split_references",
    "write_samples",
]  # the names of _MODULES (a test checks they agree)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fedfm.generation' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    # every name of that module at once: importing fedfm.generation.generate binds the
    # package's ``generate`` to the submodule, which the function must replace
    globals().update({n: getattr(module, n) for n in _MODULES[_EXPORTS[name]]})
    return globals()[name]


def __dir__() -> list[str]:
    return sorted(__all__)
