from __future__ import annotations

import numpy as np
import pytest

from synthkiln.kernels.minhash import minhash_signatures
from synthkiln.kernels.similarity import jaccard_from_signatures, jaccard_one_vs_many, jaccard_pairs

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
    pairs = jaccard_pairs(signatures, np.array([0, 0, 0]), np.array([1, 2, 3]), chunk=2)
    assert np.array_equal(pairs, rowwise)
    many = jaccard_one_vs_many(signatures[0], signatures)
    assert many[0] == 1.0 and np.array_equal(many[1:], rowwise)


def test_shape_mismatch_is_refused() -> None:
    signatures = minhash_signatures(TEXTS)
    with pytest.raises(ValueError, match="differ in shape"):
        jaccard_from_signatures(signatures[:2], signatures[:3])
