import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfm.synthetic.contamination import nearest_similarity, shares_ngram, word_ngrams
from fedfm.synthetic.filters import (
    exact_duplicates,
    label_filter,
    lengths_ok,
    near_duplicates,
    normalize,
    probe_probabilities,
)


def test_exact_duplicates_keep_the_first_and_drop_empty_texts():
    texts = ["Who is he?", "who is he", "", "  ", "Who is she?", "WHO IS HE ?!"]
    assert exact_duplicates(texts).tolist() == [True, False, False, False, True, False]


def test_length_filter_counts_words():
    assert lengths_ok(["a b", "a b c", "a b c d e"], min_words=3, max_words=4).tolist() == [
        False,
        True,
        False,
    ]


def test_near_duplicates_compare_against_kept_rows_only():
    a = torch.tensor([1.0, 0.0])
    b = torch.nn.functional.normalize(torch.tensor([1.0, 0.2]), dim=0)  # cos(a, b) = 0.98
    c = torch.nn.functional.normalize(torch.tensor([1.0, 0.45]), dim=0)  # cos(b, c) > 0.95
    d = torch.tensor([0.0, 1.0])
    keep = near_duplicates(torch.stack([a, b, c, d]), 0.95)
    # c is within 0.95 of the dropped b but not of the kept a: it stays
    assert float(a @ c) < 0.95 < float(b @ c)
    assert keep.tolist() == [True, False, True, True]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=12))
def test_exact_duplicates_keep_one_of_each_normalised_text(texts):
    keep = exact_duplicates(texts)
    kept = [normalize(t) for t, k in zip(texts, keep, strict=True) if k]
    assert len(kept) == len(set(kept)) == len({normalize(t) for t in texts} - {""})


def _clusters(n_per: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(3, 16) * 4
    x = torch.cat([centres[c] + torch.randn(n_per, 16, generator=g) * 0.5 for c in range(3)])
    return torch.nn.functional.normalize(x, dim=1), np.repeat(np.arange(3), n_per)


def test_the_probe_agrees_with_clean_labels_and_flags_a_wrong_one():
    x, y = _clusters(20)
    y[0] = 2  # a class-0 point labelled 2
    probs = probe_probabilities(x, y, 3, seed=0)
    assert probs.shape == (60, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert (probs.argmax(1)[1:] == y[1:]).mean() > 0.95
    assert probs[0].argmax() == 0 and probs[0, 2] < 0.3
    keep, labels = label_filter(probs, y, min_confidence=0.3, relabel=False)
    assert not keep[0] and keep[1:].mean() > 0.95 and (labels == y).all()
    keep, labels = label_filter(probs, y, min_confidence=0.3, relabel=True)
    assert keep[0] and labels[0] == 0


def test_the_probe_is_seeded_and_leaves_torch_rng_alone():
    x, y = _clusters(10)
    state = torch.random.get_rng_state()
    a = probe_probabilities(x, y, 3, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    np.testing.assert_array_equal(a, probe_probabilities(x, y, 3, seed=1))


def test_word_ngrams_and_overlap():
    assert word_ngrams("Who is it?", 8) == {("who", "is", "it")}
    assert len(word_ngrams("one two three four five", 2)) == 4
    test = ["Which river is the longest river in the whole of Africa?"]
    hits = shares_ngram(
        ["the longest river in the whole of africa is which", "Who is it?", "Africa rivers"],
        test,
        n=8,
    )
    assert hits.tolist() == [True, False, False]


def test_nearest_similarity_is_the_best_cosine():
    ref = torch.eye(3)
    x = torch.nn.functional.normalize(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), dim=1)
    np.testing.assert_allclose(nearest_similarity(x, ref, chunk=1), [2**-0.5, 1.0], rtol=1e-6)
