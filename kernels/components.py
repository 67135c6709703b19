"""Connected components by alternating large-star and small-star steps (Kiveris et al., "Connected
Components in MapReduce and Beyond", 2014), on edge arrays.

Each step looks only at one node's neighbourhood, so a step can run on any partition of the edges by
node: no process needs the whole graph, only the neighbourhoods of its nodes. Alternating the two
steps turns every component into a star around its smallest node in O(log^2 n) rounds; a chain of
a million nodes takes about twenty. The caller shuffles the edges between steps: large-star reads every
edge in both directions (grouped by either endpoint), small-star reads each edge once, grouped by its
larger endpoint, and each step returns edges `(larger, smaller)`.
"""

from __future__ import annotations

import numpy as np

from synthkiln.kernels.arrays import distinct

_LOW_BITS = np.uint64(0xFFFFFFFF)


def sorted_edges(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct `(src, dst)` pairs, sorted by `src` then `dst`."""
    src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
    if not len(src):
        return src, dst
    if max(src.max(), dst.max()) <= 0xFFFFFFFF:  # one sort of packed pairs; else a two-key sort
        packed = distinct((src.astype(np.uint64) << np.uint64(32)) | dst.astype(np.uint64))
        return (packed >> np.uint64(32)).astype(np.int64), (packed & _LOW_BITS).astype(np.int64)
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    fresh = np.ones(len(src), bool)
    fresh[1:] = (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])
    return src[fresh], dst[fresh]


def _groups(src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each node's run starts in sorted `src`, and its length."""
    starts = np.flatnonzero(np.concatenate([[True], src[1:] != src[:-1]]))
    return starts, np.diff(np.concatenate([starts, [len(src)]]))


def large_star(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Every node's larger neighbours linked to the smallest node of its neighbourhood (itself
    included). `(src, dst)` holds each edge of the nodes it covers in both directions. Returns the new
    edges as `(larger, smaller)`, and whether the input was already a forest of stars around their
    smallest nodes: every node either has only larger neighbours (a centre) or exactly one, smaller
    (a leaf). Then the output is the input and the components are found."""
    src, dst = sorted_edges(src, dst)
    if not len(src):
        return src, dst, True
    starts, counts = _groups(src)
    nodes, smallest = src[starts], dst[starts]
    star = bool(((smallest > nodes) | ((counts == 1) & (smallest < nodes))).all())
    centre = np.repeat(np.minimum(nodes, smallest), counts)
    larger = dst > src
    return dst[larger], centre[larger], star


def small_star(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every node and its smaller neighbours linked to the smallest of them. `(src, dst)` holds each
    edge of the nodes it covers once, as `(larger, smaller)`. Returns the new edges the same way."""
    src, dst = sorted_edges(src, dst)
    if not len(src):
        return src, dst
    starts, counts = _groups(src)
    centre = np.repeat(dst[starts], counts)
    moved = dst != centre
    return np.concatenate([dst[moved], src[starts]]), np.concatenate([centre[moved], dst[starts]])


def star_members(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """In a forest of stars (`large_star` said so) given in both directions, the stars whose centres
    `src` covers: `(member, centre)` for every member, the centre included, sorted by member."""
    src, dst = sorted_edges(src, dst)
    leaves = dst > src  # a leaf has a single, smaller neighbour: a larger one is a centre's leaf
    centres = distinct(src[leaves])
    members = np.concatenate([centres, dst[leaves]])
    order = np.argsort(members, kind="stable")
    return members[order], np.concatenate([centres, src[leaves]])[order]
