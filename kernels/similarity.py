"""Similarity from MinHash signatures: the share of agreeing permutations estimates Jaccard."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from synthkiln.kernels.minhash import EMPTY


def jaccard_from_signatures(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Row-wise estimate for two (n, num_perm) arrays; a pair with an empty document scores 0."""
    if left.shape != right.shape:
        raise ValueError(f"signature arrays differ in shape: {left.shape} vs {right.shape}")
    agree = (left == right).mean(axis=1)
    return np.where(_empty(left) | _empty(right), 0.0, agree)


def jaccard_pairs(signatures: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Estimates for index pairs (first[i], second[i]) of one signature array, as
    `jaccard_from_signatures` gives them, counted in place (no gathered copies of the pairs' rows)."""
    if len(first) != len(second):
        raise ValueError(f"{len(first)} first rows but {len(second)} second rows")
    if len(first) and not (
        min(first.min(), second.min()) >= 0 and max(first.max(), second.max()) < len(signatures)
    ):
        raise IndexError(f"pair rows outside the {len(signatures)} signatures")  # Numba would read past them
    out = np.empty(len(first), dtype=np.float64)
    _agreement(signatures, first.astype(np.int64, copy=False), second.astype(np.int64, copy=False), out)
    return out


@njit(parallel=True, cache=True)
def _agreement(signatures: np.ndarray, first: np.ndarray, second: np.ndarray, out: np.ndarray) -> None:
    num_perm = signatures.shape[1]
    for i in prange(first.size):
        a, b = first[i], second[i]
        same, empty_a, empty_b = 0, True, True
        for j in range(num_perm):
            left, right = signatures[a, j], signatures[b, j]
            same += left == right
            empty_a &= left == EMPTY
            empty_b &= right == EMPTY
        out[i] = 0.0 if empty_a or empty_b else same / num_perm


def jaccard_one_vs_many(signature: np.ndarray, many: np.ndarray) -> np.ndarray:
    """Estimates between one signature and each row of `many`."""
    return jaccard_from_signatures(np.broadcast_to(signature, many.shape), many)


def _empty(signatures: np.ndarray) -> np.ndarray:
    return (signatures == EMPTY).all(axis=1)


def exact_jaccard_pairs(
    hashes: np.ndarray, offsets: np.ndarray, first: np.ndarray, second: np.ndarray
) -> np.ndarray:
    """Exact Jaccard of shingle sets for index pairs; `hashes`/`offsets` as `shingle_sets` returns them."""
    out = np.empty(len(first), dtype=np.float64)
    _exact_pairs(hashes, offsets, first.astype(np.int64), second.astype(np.int64), out)
    return out


def shingle_sets(hashes: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each document's shingle hashes sorted and deduplicated (sets, for exact Jaccard)."""
    counts = np.empty(len(offsets) - 1, dtype=np.int64)
    work = hashes.copy()
    _sort_unique(work, offsets, counts)
    new_offsets = np.zeros(len(offsets), dtype=np.int64)
    np.cumsum(counts, out=new_offsets[1:])
    keep = np.zeros(len(work), dtype=bool)
    for_doc = np.repeat(offsets[:-1], counts) + (
        np.arange(new_offsets[-1]) - np.repeat(new_offsets[:-1], counts)
    )
    keep[for_doc] = True
    return work[keep], new_offsets


@njit(parallel=True, cache=True)
def _sort_unique(hashes, offsets, counts):
    for d in prange(offsets.size - 1):
        segment = hashes[offsets[d] : offsets[d + 1]]
        segment.sort()
        unique = 0
        for i in range(segment.size):
            if i == 0 or segment[i] != segment[unique - 1]:
                segment[unique] = segment[i]
                unique += 1
        counts[d] = unique


@njit(parallel=True, cache=True)
def _exact_pairs(hashes, offsets, first, second, out):
    for p in prange(first.size):
        i, i_end = offsets[first[p]], offsets[first[p] + 1]
        j, j_end = offsets[second[p]], offsets[second[p] + 1]
        size = (i_end - i) + (j_end - j)
        shared = 0
        while i < i_end and j < j_end:
            if hashes[i] == hashes[j]:
                shared += 1
                i += 1
                j += 1
            elif hashes[i] < hashes[j]:
                i += 1
            else:
                j += 1
        union = size - shared
        out[p] = shared / union if union > 0 else 0.0
