"""Locality-sensitive hashing over MinHash signatures: bands, candidate pairs, clusters.

Buckets are found by sorting band keys (argsort), never with Python dicts, so memory stays at a few
arrays of N integers per band. Candidates are confirmed by signature agreement; clusters come from
union-find over confirmed pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from synthkiln.kernels.arrays import distinct
from synthkiln.kernels.minhash import EMPTY
from synthkiln.kernels.similarity import exact_jaccard_pairs, jaccard_pairs

_MIX = np.uint64(0x9E3779B97F4A7C15)


def optimal_bands(
    threshold: float, num_perm: int, false_positive_weight: float = 0.05, false_negative_weight: float = 0.95
) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising the weighted FP + FN probability areas.

    A pair of similarity s becomes a candidate with probability 1 - (1 - s**rows)**bands; the false
    positive area integrates that below the threshold, the false negative area its complement above.
    The default weights favour recall: a false positive costs one signature comparison (candidates are
    confirmed), a false negative loses a duplicate. Equal weights (datasketch's default) would find
    only a third of the pairs at exactly 0.8 with 128 permutations; these weights find ~95%.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    best, best_cost = (1, num_perm), float("inf")
    below = np.linspace(0.0, threshold, 200)
    above = np.linspace(threshold, 1.0, 200)
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        candidate_below = 1 - (1 - below**rows) ** bands
        missed_above = (1 - above**rows) ** bands
        cost = false_positive_weight * np.trapezoid(
            candidate_below, below
        ) + false_negative_weight * np.trapezoid(missed_above, above)
        if cost < best_cost:
            best, best_cost = (bands, rows), cost
    return best


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(bands, n) uint64 keys: each band's `rows` signature values mixed into one 64-bit hash."""
    keys = np.empty((bands, len(signatures)), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for band in range(bands):
            key = np.full(len(signatures), np.uint64(band), dtype=np.uint64)
            for column in range(band * rows, (band + 1) * rows):
                key = (key ^ signatures[:, column].astype(np.uint64)) * _MIX
                key ^= key >> np.uint64(29)
            keys[band] = key
    return keys


def candidate_pairs(keys: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) sharing a bucket in some band: neighbours in each bucket's sorted run."""
    ids = np.flatnonzero(valid).astype(np.uint64)
    tagged = np.concatenate([(np.uint64(band) << _BAND_SHIFT) | ids for band in range(len(keys))])
    first, second = bucket_pairs(np.stack([keys[:, valid].ravel(), tagged], axis=1))
    unique = distinct(first * (len(valid) + 1) + second)
    return unique // (len(valid) + 1), unique % (len(valid) + 1)


_SPREAD_BLOCKS = 16  # blocks of records counted and spread side by side (more than the cores we expect)
_BAND_SHIFT = np.uint64(56)  # a band key's record: the band in the top 8 bits of its row number
_ROW_MASK = np.uint64((1 << 56) - 1)


@njit(cache=True)
def _block_slots(place: np.ndarray) -> np.ndarray:
    """Counts of records per (block, group) -> each block's first slot in each group, in place (groups
    in order, a group's blocks in order); returns each group's first slot, and the total after them."""
    blocks, groups = place.shape
    starts = np.zeros(groups + 1, np.int64)
    at = 0
    for group in range(groups):
        starts[group] = at
        for block in range(blocks):
            held = place[block, group]
            place[block, group] = at
            at += held
    starts[groups] = at
    return starts


@njit(cache=True, parallel=True)
def bucket_pairs(records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) of rows that follow each other in a bucket (same band and key), rows ascending.

    `records` holds a band key and its row with the band in the top 8 bits (`band << 56 | row`) per
    line, as `band_records` makes them. A bucket's pairs depend only on its own members, so buckets
    split into any partitions by key give the same pairs as all of them at once: the disk-partitioned
    dedup relies on it.

    Keys are spread by their top 16 bits (counted and placed a block of records per core, each block
    into its own slots of every group), then the small groups are sorted on all cores: equal keys meet
    without sorting the whole array, which is the slow part at tens of millions of keys. A group of n
    records has at most n - 1 pairs, so each group writes its pairs where its records were spread,
    and no core waits for another's count.
    """
    count = records.shape[0]
    per_block = -(-count // _SPREAD_BLOCKS)
    place = np.zeros((_SPREAD_BLOCKS, 1 << 16), np.int64)
    for block in prange(_SPREAD_BLOCKS):
        for i in range(block * per_block, min(count, (block + 1) * per_block)):
            place[block, records[i, 0] >> np.uint64(48)] += 1
    starts = _block_slots(place)
    spread_keys = np.empty(count, np.uint64)
    spread_tagged = np.empty(count, np.uint64)
    for block in prange(_SPREAD_BLOCKS):
        for i in range(block * per_block, min(count, (block + 1) * per_block)):
            group = records[i, 0] >> np.uint64(48)
            spread_keys[place[block, group]] = records[i, 0]
            spread_tagged[place[block, group]] = records[i, 1]
            place[block, group] += 1
    found = np.zeros(1 << 16, np.int64)
    for group in prange(1 << 16):
        low, high = starts[group], starts[group + 1]
        if high - low < 2:
            continue
        order = np.argsort(spread_keys[low:high])
        group_keys = spread_keys[low:high][order]
        group_tagged = spread_tagged[low:high][order]
        run = 0
        written = 0
        for i in range(1, high - low + 1):
            if i < high - low and group_keys[i] == group_keys[run]:
                continue
            if i - run > 1:
                members = np.sort(group_tagged[run:i])
                for j in range(members.size - 1):
                    if members[j] >> _BAND_SHIFT == members[j + 1] >> _BAND_SHIFT:
                        # the group's slots of the spread arrays, read into `group_*` already
                        spread_keys[low + written] = members[j] & _ROW_MASK
                        spread_tagged[low + written] = members[j + 1] & _ROW_MASK
                        written += 1
            run = i
        found[group] = written
    total = 0
    for group in range(1 << 16):
        total += found[group]
    first = np.empty(total, np.int64)
    second = np.empty(total, np.int64)
    at = 0
    for group in range(1 << 16):
        for k in range(found[group]):
            first[at] = np.int64(spread_keys[starts[group] + k])
            second[at] = np.int64(spread_tagged[starts[group] + k])
            at += 1
    return first, second


@njit(cache=True, parallel=True)
def band_records(
    signatures: np.ndarray, base: int, bands: int, rows: int, partitions: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every band key of every non-empty document as a record (key, band << 56 | base + row), the
    records sorted by partition (a key's high bits modulo `partitions`), in row then band order within
    a partition, and the count per partition. Keys are computed as `band_keys` does.

    Keys are computed on all cores, then placed as `bucket_pairs` spreads its records: each block of
    records counted and written into its own slots of every partition, so the order is the same on
    any number of cores."""
    count, num_perm = signatures.shape
    valid = np.zeros(count, np.bool_)
    for i in prange(count):
        for j in range(num_perm):
            if signatures[i, j] != EMPTY:
                valid[i] = True
                break
    first = np.zeros(count + 1, np.int64)  # each document's first record
    for i in range(count):
        first[i + 1] = first[i] + (bands if valid[i] else 0)
    total = first[count]
    keys = np.empty(total, np.uint64)
    tagged = np.empty(total, np.uint64)
    owner = np.empty(total, np.int64)
    for i in prange(count):
        if not valid[i]:
            continue
        for band in range(bands):
            key = np.uint64(band)
            for column in range(band * rows, (band + 1) * rows):
                key = (key ^ np.uint64(signatures[i, column])) * _MIX
                key ^= key >> np.uint64(29)
            k = first[i] + band
            keys[k] = key
            tagged[k] = (np.uint64(band) << _BAND_SHIFT) | np.uint64(base + i)
            owner[k] = np.int64((key >> np.uint64(32)) % np.uint64(partitions))
    per_block = -(-total // _SPREAD_BLOCKS)
    place = np.zeros((_SPREAD_BLOCKS, partitions), np.int64)
    for block in prange(_SPREAD_BLOCKS):
        for k in range(block * per_block, min(total, (block + 1) * per_block)):
            place[block, owner[k]] += 1
    starts = _block_slots(place)
    counts = starts[1:] - starts[:-1]
    records = np.empty((total, 2), np.uint64)
    for block in prange(_SPREAD_BLOCKS):
        for k in range(block * per_block, min(total, (block + 1) * per_block)):
            slot = place[block, owner[k]]
            records[slot, 0] = keys[k]
            records[slot, 1] = tagged[k]
            place[block, owner[k]] = slot + 1
    return records, counts


@njit(cache=True)
def _find(parent: np.ndarray, node: np.int64) -> np.int64:
    root = node
    while parent[root] != root:
        root = parent[root]
    while parent[node] != root:  # path compression
        parent[node], node = root, parent[node]
    return root


@njit(cache=True)
def union_find(count: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Cluster id (the smallest member index) of every node, given undirected edges."""
    parent = np.arange(count)
    for i in range(first.size):
        a, b = _find(parent, first[i]), _find(parent, second[i])
        if a != b:
            parent[max(a, b)] = min(a, b)
    for node in range(count):
        parent[node] = _find(parent, node)
    return parent


@dataclass(frozen=True)
class Clusters:
    cluster: np.ndarray  # int64 cluster id per document (its smallest member index)
    keep: np.ndarray  # bool: the document kept for its cluster
    duplicate_of: np.ndarray  # int64 index of the kept document, -1 where kept
    similarity: np.ndarray  # estimated Jaccard to the kept document, 1.0 where kept


def cluster_duplicates(
    signatures: np.ndarray,
    threshold: float = 0.8,
    priority: np.ndarray | None = None,
    bands: int | None = None,
    rows: int | None = None,
    shingles: tuple[np.ndarray, np.ndarray] | None = None,
) -> Clusters:
    """Near-duplicate clusters; in each, the document with the highest `priority` (ties: first) is kept.

    Candidates are confirmed by signature agreement, or by exact Jaccard when `shingles` (each
    document's shingle set, from `similarity.shingle_sets`) is given; `similarity` is then exact too.
    """
    count, num_perm = signatures.shape
    if bands is None or rows is None:
        bands, rows = optimal_bands(threshold, num_perm)
    valid = ~(signatures == EMPTY).all(axis=1)
    first, second = candidate_pairs(band_keys(signatures, bands, rows), valid)

    def similar(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (
            exact_jaccard_pairs(*shingles, a, b) if shingles is not None else jaccard_pairs(signatures, a, b)
        )

    confirmed = similar(first, second) >= threshold
    cluster = union_find(count, first[confirmed], second[confirmed])
    keeper = keepers(cluster, priority if priority is not None else np.zeros(count))
    keep = keeper == np.arange(count)
    duplicate_of = np.where(keep, -1, keeper)
    similarity = np.ones(count)
    dropped = np.flatnonzero(~keep)
    similarity[dropped] = similar(dropped, keeper[dropped])
    return Clusters(cluster, keep, duplicate_of, similarity)


def keepers(cluster: np.ndarray, priority: np.ndarray) -> np.ndarray:
    """The kept document of each document's cluster: highest `priority`, then lowest index."""
    count = len(cluster)
    order = np.lexsort((np.arange(count), -np.asarray(priority, dtype=np.float64), cluster))
    sorted_cluster = cluster[order]
    leaders = np.ones(count, dtype=bool)
    leaders[1:] = sorted_cluster[1:] != sorted_cluster[:-1]
    keeper_of_cluster = np.empty(count, dtype=np.int64)
    keeper_of_cluster[sorted_cluster[leaders]] = order[leaders]
    return keeper_of_cluster[cluster]


class StreamingIndex:
    """The documents accepted so far, queried batch by batch: is a new one a near-duplicate of any?

    Every band key of every accepted document sits in one open-addressing hash table (linear probing,
    load <= 1/2, doubled and rehashed when full), so adding a batch costs O(batch) amortised however
    long the run, where re-sorting the whole index per batch made a long run quadratic. A lookup
    compares the new document with every owner of every bucket it hits: several accepted documents
    can share a band key while only one of them is similar. One table holds all bands: each band's
    hash is seeded with its number, so keys of two bands meet only by a 64-bit collision, which costs
    a signature comparison, never a false match.

    Rows are decided one after another, each against everything accepted before it, earlier rows of
    its own batch included: a batch gives the same result as adding its rows one at a time.
    """

    def __init__(
        self, num_perm: int, threshold: float, bands: int | None = None, rows: int | None = None
    ) -> None:
        self.threshold = threshold
        self.bands, self.rows = (bands, rows) if bands and rows else optimal_bands(threshold, num_perm)
        self._stored = np.empty((_INITIAL_ROWS, num_perm), dtype=np.uint32)
        self._count = 0
        # A slot is (band key, owner + 1): owner 0 marks an empty slot; both in one cache line.
        self._table = np.zeros((_INITIAL_SLOTS, 2), dtype=np.uint64)

    @classmethod
    def of(cls, signatures: np.ndarray, threshold: float) -> StreamingIndex:
        """An index holding `signatures` as they are (no duplicate check); empty ones are left out."""
        index = cls(signatures.shape[1], threshold)
        index._run(signatures, check=False)
        return index

    @property
    def signatures(self) -> np.ndarray:
        """The accepted documents' signatures, in the order they were accepted."""
        return self._stored[: self._count]

    def __len__(self) -> int:
        return self._count

    def add(self, signatures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Check a batch against the index and itself; add the new documents, not the duplicates.

        Returns, per row, the index (in `self.signatures`) of the document it duplicates or -1, and
        the estimated similarity to it (the most similar one; ties: the earliest accepted), 0.0 where
        -1. Empty documents are neither matched nor added.
        """
        return self._run(signatures, check=True)

    def _run(self, signatures: np.ndarray, check: bool) -> tuple[np.ndarray, np.ndarray]:
        signatures = np.ascontiguousarray(signatures, dtype=np.uint32)
        self._reserve(len(signatures))
        duplicate_of = np.full(len(signatures), -1, dtype=np.int64)
        similarity = np.zeros(len(signatures))
        self._count = _add_rows(
            signatures,
            self.bands,
            self.rows,
            self.threshold,
            check,
            self._stored,
            self._count,
            self._table,
            duplicate_of,
            similarity,
        )
        return duplicate_of, similarity

    def _reserve(self, extra: int) -> None:
        """Room for `extra` more documents: capacities double, so growing costs O(1) per document."""
        needed = self._count + extra
        if needed > len(self._stored):
            stored = np.empty((max(needed, 2 * len(self._stored)), self._stored.shape[1]), np.uint32)
            stored[: self._count] = self.signatures
            self._stored = stored
        slots = len(self._table)
        while needed * self.bands * 2 > slots:
            slots *= 2
        if slots > len(self._table):
            table = np.zeros((slots, 2), dtype=np.uint64)
            _rehash(self._table, table)
            self._table = table


_INITIAL_ROWS = 1024
_INITIAL_SLOTS = 1 << 14
_SLOT_MIX = np.uint64(0xFF51AFD7ED558CCD)


@njit(cache=True)
def _shift(table: np.ndarray) -> np.uint64:
    """64 - log2(slots): a key's home slot is the top bits of a multiplicative hash of it (band keys'
    own low bits mix weakly)."""
    return np.uint64(64 - int(np.log2(len(table))))


@njit(cache=True)
def _slot(key: np.uint64, shift: np.uint64) -> int:
    return np.int64((key * _SLOT_MIX) >> shift)


@njit(cache=True)
def _agreement(a: np.ndarray, b: np.ndarray) -> int:
    same = 0
    for i in range(len(a)):
        same += a[i] == b[i]
    return same


@njit(cache=True)
def _insert(table: np.ndarray, shift: np.uint64, key: np.uint64, tagged_owner: np.uint64) -> None:
    mask = len(table) - 1
    slot = _slot(key, shift)
    while table[slot, 1] != 0:
        slot = (slot + 1) & mask
    table[slot, 0] = key
    table[slot, 1] = tagged_owner


@njit(cache=True)
def _rehash(old: np.ndarray, new: np.ndarray) -> None:
    shift = _shift(new)
    for slot in range(len(old)):
        if old[slot, 1] != 0:
            _insert(new, shift, old[slot, 0], old[slot, 1])


@njit(cache=True)
def _add_rows(
    signatures: np.ndarray,
    bands: int,
    rows: int,
    threshold: float,
    check: bool,
    stored: np.ndarray,
    count: int,
    table: np.ndarray,
    duplicate_of: np.ndarray,
    similarity: np.ndarray,
) -> int:
    """Decide and insert rows in order; returns the new number of accepted documents.

    Band keys are computed as `band_keys` does, so streaming buckets exactly as `cluster_duplicates`.
    """
    num_perm = signatures.shape[1]
    mask, shift = len(table) - 1, _shift(table)
    keys = np.empty(bands, dtype=np.uint64)
    empty = np.full(num_perm, EMPTY, dtype=np.uint32)
    for row in range(len(signatures)):
        signature = signatures[row]
        if _agreement(signature, empty) == num_perm:
            continue
        for band in range(bands):
            key = np.uint64(band)
            for column in range(band * rows, (band + 1) * rows):
                key = (key ^ np.uint64(signature[column])) * _MIX
                key ^= key >> np.uint64(29)
            keys[band] = key
        best, target = -1.0, -1
        if check:
            for band in range(bands):
                slot = _slot(keys[band], shift)
                while table[slot, 1] != 0:
                    owner = np.int64(table[slot, 1]) - 1
                    if table[slot, 0] == keys[band] and owner != target:
                        score = _agreement(signature, stored[owner]) / num_perm
                        if score > best or (score == best and owner < target):
                            best, target = score, owner
                    slot = (slot + 1) & mask
        if target >= 0 and best >= threshold:
            duplicate_of[row], similarity[row] = target, best
            continue
        stored[count] = signature
        for band in range(bands):
            _insert(table, shift, keys[band], np.uint64(count + 1))
        count += 1
    return count
