import pytest

from fedfm.datasets import load_dataset
from fedfm.errors import ConfigError
from fedfm.synthetic.contamination import nearest_similarity, shares_ngram
from fedfm.synthetic.embed import Encoder
from fedfm.synthetic.prompts import DESCRIPTIONS, EXAMPLES, clean_text, label_spec


def test_a_prompt_lists_the_examples_and_asks_for_the_next():
    spec = label_spec("trec6", load_dataset("trec6").label_names)
    prompt = spec.prompt(3, topic="music", examples=["Who wrote Hamlet?", "Who won?"])
    assert prompt.splitlines() == [
        "Trivia questions about music. The answer to each question is a person or a group "
        "of people.",
        "1. Who wrote Hamlet?",
        "2. Who won?",
        "3.",
    ]
    assert spec.seed_examples[3] == EXAMPLES["trec6"]["human"]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("shakespeare", ()), "has no labels"),
        (("trec6", ("a", "b"), ("only one",)), "synthetic.descriptions has 1 entries"),
        (("mine", ("cat", "dog")), r"no built-in description for the labels \['cat', 'dog'\]"),
    ],
)
def test_label_sets_without_what_a_prompt_needs_are_refused(args, match):
    with pytest.raises(ConfigError, match=match):
        label_spec(*args)


def test_given_descriptions_and_seed_examples_win_over_the_built_in_ones():
    spec = label_spec("mine", ("cat", "dog"), ("about cats", "about dogs"), [["meow"], ["woof"]])
    assert spec.descriptions == ("about cats", "about dogs")
    assert spec.seed_examples == (("meow",), ("woof",))
    assert "category 'dog': about dogs" in spec.prompt(1, topic="pets")


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (" Who painted it?\n2. Who else?", "Who painted it?"),
        ('Question: "What is   the time?"', "What is the time?"),
        ("\n\n- 3) not a bullet", "3) not a bullet"),
        ("1. first\nsecond", "first"),
        ("", ""),
    ],
)
def test_clean_text_keeps_the_first_line_without_prefixes_and_quotes(raw, clean):
    assert clean_text(raw) == clean


def test_built_in_examples_share_no_8_gram_with_any_test_example():
    for name, per_label in EXAMPLES.items():
        assert set(per_label) == set(DESCRIPTIONS[name])
        examples = [e for group in per_label.values() for e in group]
        assert not shares_ngram(examples, load_dataset(name).test.inputs, n=8).any(), name


@pytest.mark.slow  # embeds every bundled test set (minutes on 2 cores)
def test_built_in_examples_are_not_near_copies_of_any_test_example():
    encoder = Encoder()
    for name, per_label in EXAMPLES.items():
        examples = [e for group in per_label.values() for e in group]
        test = encoder(list(load_dataset(name).test.inputs))
        assert nearest_similarity(encoder(examples), test).max() < 0.9, name
