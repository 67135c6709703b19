"""Similarity from MinHash signatures: the share of agreeing permutations estimates Jaccard."""

from __future__ import annotations

import numpy as np

from synthkiln.kernels.minhash import EMPTY


def jaccard_from_signatures(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Row-wise estimate for two (n, num_perm) arrays; a pair with an empty document scores 0."""
    if left.shape != right.shape:
        raise ValueError(f"signature arrays differ in shape: {left.shape} vs {right.shape}")
    agree = (left == right).mean(axis=1)
    return np.where(_empty(left) | _empty(right), 0.0, agree)


def jaccard_pairs(
    signatures: np.ndarray, first: np.ndarray, second: np.ndarray, chunk: int = 65536
) -> np.ndarray:
    """Estimates for index pairs (first[i], second[i]) of one signature array, in bounded memory."""
    out = np.empty(len(first), dtype=np.float64)
    for start in range(0, len(first), chunk):
        stop = start + chunk
        out[start:stop] = jaccard_from_signatures(
            signatures[first[start:stop]], signatures[second[start:stop]]
        )
    return out


def jaccard_one_vs_many(signature: np.ndarray, many: np.ndarray) -> np.ndarray:
    """Estimates between one signature and each row of `many`."""
    return jaccard_from_signatures(np.broadcast_to(signature, many.shape), many)


def _empty(signatures: np.ndarray) -> np.ndarray:
    return (signatures == EMPTY).all(axis=1)
