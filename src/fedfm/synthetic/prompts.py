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

from fedfm.errors import ConfigError

# dataset -> the prompt's first line; {description}, {topic} and {label} are filled per row
TEMPLATES = {
    "trec6": "Trivia questions about {topic}. The answer to each question is {description}.",
    "sentiment4": "Short texts about {topic} from tweets, movie and product reviews and news, "
    "each {description}.",
    "sms_spam": "SMS text messages about {topic}, each {description}.",
}
GENERIC_TEMPLATE = "Short texts about {topic} in the category '{label}': {description}."

# dataset -> label name -> what a text of that label is (built in for the bundled sets)
DESCRIPTIONS = {
    "trec6": {
        "abbreviation": "an abbreviation or what an abbreviation stands for",
        "description": "a description, a definition, a manner or a reason",
        "entity": "a thing such as an animal, a colour, a food, a product or an event",
        "human": "a person or a group of people",
        "location": "a place such as a city, a country, a river or a mountain",
        "numeric": "a number such as a date, a count, a distance, a speed or a price",
    },
    "sentiment4": {
        "negative": "negative, unhappy or critical in tone",
        "positive": "positive, happy or praising in tone",
    },
    "sms_spam": {
        "ham": "an ordinary personal message between friends, family or colleagues",
        "spam": "spam: an unsolicited advertisement, prize offer or scam",
    },
}

# dataset -> label name -> public examples written for fedfm (not from any dataset); shown
# in prompts when no synthetic.seed_file is given. A test checks none is near a test example.
EXAMPLES = {
    "trec6": {
        "abbreviation": (
            "What does CPU stand for?",
            "What is the abbreviation for the World Health Organization?",
            "What does the acronym RSVP mean?",
        ),
        "description": (
            "Why do leaves change colour in autumn?",
            "How does a vaccine train the immune system?",
            "What is the meaning of the word nostalgia?",
        ),
        "entity": (
            "What instrument did Louis Armstrong play?",
            "Which breed of dog is used to herd sheep in Wales?",
            "What dish is made from fermented cabbage in Korea?",
        ),
        "human": (
            "Who wrote the novel War and Peace?",
            "Which scientist discovered penicillin?",
            "Who coached the winning team of the first football World Cup?",
        ),
        "location": (
            "Where is the tallest waterfall in the world?",
            "Which country has the most islands?",
            "In what city did the Beatles first perform?",
        ),
        "numeric": (
            "How many strings does a standard violin have?",
            "When did the first person walk on the Moon?",
            "How far is Lisbon from Madrid in kilometres?",
        ),
    },
    "sentiment4": {
        "negative": (
            "The plot dragged on and the ending made no sense at all.",
            "Worst customer service I have had in years, never again.",
            "The battery died after two days. Very disappointed.",
        ),
        "positive": (
            "What a lovely surprise, the concert was amazing!",
            "This blender works perfectly and is so easy to clean.",
            "A warm, funny film with a wonderful cast.",
        ),
    },
    "sms_spam": {
        "ham": (
            "Running late, see you at the station in 10 mins",
            "Can you pick up some milk on your way home?",
            "Happy birthday! Hope you have a great day x",
        ),
        "spam": (
            "WINNER! You have been selected for a 1000 pound prize. Call now to claim",
            "URGENT: your account needs verification, click the link to claim your reward",
            "Free entry to win a new phone! Text WIN to our number today",
        ),
    },
}

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
        known = DESCRIPTIONS.get(dataset, {})
        missing = [n for n in names if n not in known]
        if missing:
            raise ConfigError(
                f"no built-in description for the labels {missing} of data.dataset = "
                f"{dataset!r}: set synthetic.descriptions to one description per label "
                f"{list(names)}"
            )
        described = tuple(known[n] for n in names)
    if not any(seed_examples):  # the built-in public examples, where fedfm has them
        builtin = EXAMPLES.get(dataset, {})
        seed_examples = [builtin.get(n, ()) for n in names]
    return LabelSpec(
        dataset,
        names,
        described,
        TEMPLATES.get(dataset, GENERIC_TEMPLATE),
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
