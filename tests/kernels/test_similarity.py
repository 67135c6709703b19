from __future__ import annotations

import numpy as np
import pytest

from synthkiln.kernels.lsh import cluster_duplicates
from synthkiln.kernels.minhash import minhash_signatures, shingle_hashes
from synthkiln.kernels.similarity import (
    exact_jaccard_pairs,
    jaccard_from_signatures,
    jaccard_one_vs_many,
    jaccard_pairs,
    shingle_sets,
)

TEXTS = [
    "the quick brown fox jumps over the lazy dog near the river bank today",
    "the quick brown fox jumps over the lazy dog near the river bank tonight",
    "a completely different sentence about baking bread in a hot oven at home",
    "",
]


def test_pairs_and_one_vs_many_agree_with_rowwise() -> None:
    signatures = minhash_signatures(TEXTS)
    rowwise = jaccard_from_signatures(signatures[[0, 0, 0]], signatures[[1, 2, 3]])
    assert rowwise[0] > 0.6 and rowwise[1] < 0.1 and rowwise[2] == 0.0
    pairs = jaccard_pairs(signatures, np.array([0, 0, 0]), np.array([1, 2, 3]))
    assert np.array_equal(pairs, rowwise)
    rng = np.random.default_rng(0)  # many pairs, rows with any share of agreeing permutations
    many_rows = np.where(rng.random((300, 128)) < 0.5, signatures[0], signatures[2])
    many_rows[7] = signatures[3]  # an empty document among them
    first, second = rng.integers(0, 300, 5000), rng.integers(0, 300, 5000)
    expected = jaccard_from_signatures(many_rows[first], many_rows[second])
    assert len(np.unique(expected)) > 20 and (expected == 0).any()
    assert np.array_equal(jaccard_pairs(many_rows, first, second), expected)
    many = jaccard_one_vs_many(signatures[0], signatures)
    assert many[0] == 1.0 and np.array_equal(many[1:], rowwise)


def test_shape_mismatch_is_refused() -> None:
    signatures = minhash_signatures(TEXTS)
    with pytest.raises(ValueError, match="differ in shape"):
        jaccard_from_signatures(signatures[:2], signatures[:3])
    with pytest.raises(ValueError, match="2 first rows but 1 second rows"):
        jaccard_pairs(signatures, np.array([0, 1]), np.array([2]))
    with pytest.raises(IndexError, match="outside the 4 signatures"):  # the kernel does not check
        jaccard_pairs(signatures, np.array([0, 1]), np.array([2, 4]))


def test_exact_jaccard_from_shingle_sets() -> None:
    texts = ["a b c d e f g", "a b c d e f g h", "x y z", "a b a b a b a b"]
    hashes, offsets = shingle_sets(*shingle_hashes(texts, ngram=2))
    sets = [set(hashes[offsets[i] : offsets[i + 1]].tolist()) for i in range(4)]
    assert [len(s) for s in sets] == [6, 7, 2, 2]  # "a b a b..." has two distinct 2-grams
    assert all(list(hashes[offsets[i] : offsets[i + 1]]) == sorted(sets[i]) for i in range(4))
    exact = exact_jaccard_pairs(hashes, offsets, np.array([0, 0, 3]), np.array([1, 2, 3]))
    assert exact.tolist() == [6 / 7, 0.0, 1.0]


def test_clusters_confirmed_exactly_report_exact_similarity() -> None:
    texts = [
        " ".join(f"w{i}" for i in range(40)),
        " ".join(f"w{i}" for i in range(41)),
        "other words entirely here",
    ]
    signatures = minhash_signatures(texts)
    sets = shingle_sets(*shingle_hashes(texts))
    clusters = cluster_duplicates(signatures, 0.8, shingles=sets)
    assert clusters.keep.tolist() == [True, False, True]
    assert clusters.similarity[1] == 36 / 37
