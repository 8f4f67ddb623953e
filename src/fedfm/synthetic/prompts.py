"""Label-conditioned prompts for a generative FM, and cleaning of what it writes back.

A prompt asks for one example of one label: a numbered list to continue, headed by the
dataset's template filled with the label's description and a topic (drawn per row, for
diversity), listing a few public seed examples of that label.

Example:
    >>> spec = label_spec("trec6", ("abbreviation", "description"))
    >>> spec.prompt(0, topic="music", examples=["What does CPU stand for?"]).splitlines()[1:]
    ['1. What does CPU stand for?', '2.']
    >>> clean_text('Question: "What does NASA stand for?"\\nIt is ...')
    'What does NASA stand for?'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from fedfm.datasets import DATASETS, SyntheticDescription
from fedfm.errors import ConfigError

GENERIC_TEMPLATE = "Short texts about {topic} in the category '{label}': {description}."


def builtin_description(dataset: str) -> SyntheticDescription | None:
    """A built-in dataset's prompt template, label descriptions and public examples, read
    from its module in :mod:`fedfm.datasets`; ``None`` for any other name."""
    return DATASETS.get(dataset).synthetic if dataset in DATASETS else None


# dataset -> label name -> description / public examples, gathered from the dataset modules
# (edit those, not these)
DESCRIPTIONS = {n: d.descriptions for n in DATASETS if (d := builtin_description(n))}
EXAMPLES = {n: d.examples for n in DATASETS if (d := builtin_description(n))}

TOPICS = (
    "animals", "art", "astronomy", "business", "cars", "chemistry", "cinema", "cities",
    "clothing", "computers", "cooking", "countries", "dance", "economics", "education",
    "elections", "energy", "family", "farming", "fashion", "festivals", "films", "games",
    "geography", "health", "history", "holidays", "inventions", "languages", "law",
    "literature", "medicine", "money", "mountains", "music", "mythology", "nature", "oceans",
    "painting", "phones", "physics", "plants", "religion", "restaurants", "rivers",
    "science", "shopping", "space", "sports", "television", "travel", "weather", "work",
)  # fmt: skip


@dataclass(frozen=True)
class LabelSpec:
    """What the generator is asked for: a dataset's labels, their descriptions and prompt.

    Attributes:
        dataset: registry name (picks the template).
        label_names: class names in id order.
        descriptions: one per label.
        template: the prompt's header with ``{description}``, ``{topic}`` and ``{label}``
            fields.
        seed_examples: per label, public example texts shown in the prompt.
    """

    dataset: str
    label_names: tuple[str, ...]
    descriptions: tuple[str, ...]
    template: str
    seed_examples: tuple[tuple[str, ...], ...] = ()

    def prompt(self, label: int, *, topic: str, examples: Sequence[str] = ()) -> str:
        """A numbered list to continue: the header, the examples, then the next number.

        A 135M model follows a list far better than an instruction, so the prompt is a
        completion prompt, not a chat turn.
        """
        header = self.template.format(
            label=self.label_names[label], description=self.descriptions[label], topic=topic
        )
        listed = "".join(f"{i}. {e}\n" for i, e in enumerate(examples, start=1))
        return f"{header}\n{listed}{len(examples) + 1}."


def label_spec(
    dataset: str,
    label_names: Sequence[str],
    descriptions: Sequence[str] = (),
    seed_examples: Sequence[Sequence[str]] = (),
) -> LabelSpec:
    """The :class:`LabelSpec` of a dataset: built-in descriptions and public examples
    unless given.

    Raises:
        ConfigError: no labels, a description count that does not match the labels, or
            a dataset without built-in descriptions and none given.
    """
    names = tuple(label_names)
    builtin = builtin_description(dataset)
    if not names:
        raise ConfigError(
            f"data.dataset = {dataset!r} has no labels: synthetic data is written per label, "
            "so it needs a text classification dataset (trec6, sentiment4, sms_spam)"
        )
    if descriptions:
        if len(descriptions) != len(names):
            raise ConfigError(
                f"synthetic.descriptions has {len(descriptions)} entries but "
                f"data.dataset = {dataset!r} has {len(names)} labels {list(names)}: give one "
                "description per label, in label order"
            )
        described = tuple(descriptions)
    else:
        known = builtin.descriptions if builtin else {}
        missing = [n for n in names if n not in known]
        if missing:
            raise ConfigError(
                f"no built-in description for the labels {missing} of data.dataset = "
                f"{dataset!r}: set synthetic.descriptions to one description per label "
                f"{list(names)}"
            )
        described = tuple(known[n] for n in names)
    if not any(seed_examples):  # the built-in public examples, where fedfm has them
        shown = builtin.examples if builtin else {}
        seed_examples = [shown.get(n, ()) for n in names]
    return LabelSpec(
        dataset,
        names,
        described,
        builtin.template if builtin else GENERIC_TEMPLATE,
        tuple(tuple(e) for e in seed_examples),
    )


_PREFIX = re.compile(r"^(?:question|text|message|answer|sentence|review|tweet)\s*:\s*", re.I)
_BULLET = re.compile(r"^(?:[-*•]\s+|\d+[.)]\s+)")
_QUOTES = "\"'“”‘’`"


def clean_text(raw: str) -> str:
    """The example in a generation: its first non-empty line, without a label prefix
    (``Question:``), a list bullet or surrounding quotes, with whitespace collapsed."""
    line = next((x for x in raw.splitlines() if x.strip()), "")
    line = _BULLET.sub("", _PREFIX.sub("", line.strip()))
    line = line.strip().strip(_QUOTES).strip()
    return " ".join(line.split())
