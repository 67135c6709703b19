"""Exact word n-gram lookups (decontamination): 64-bit n-gram hashes and a table probed over Arrow text.

An n-gram hash is the rolling shingle hash of :mod:`minhash` (same tokens, same rotations) finished
to 64 bits, so that collisions stay negligible against millions of indexed n-grams. The index is an
open-addressing table of those keys (linear probing, load <= 1/2) plus a bitmap of the keys small
enough to stay in L2: most probes of clean text end at the bitmap and never touch the table. Each
key owns postings, ids chosen by the caller (which benchmark item, which method).

Probing runs twice where it matters: a counting pass over every document, then a writing pass only
over documents that hit something (rare in clean text), so output is sized exactly without locks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
import pyarrow as pa
from numba import njit, prange

from synthkiln.kernels.minhash import GOLDEN64, ROLL, fmix64, rotl, tokenize
from synthkiln.kernels.text import Normalization, TextBuffers, as_text_buffers

_BITMAP_BITS = 1 << 24  # 2 MiB: fits this machine's 4 MiB L2 beside the text being read


@dataclass(frozen=True)
class NgramHashes:
    """Per document: its n-gram hashes (flat, `offsets` delimit documents) and its word count."""

    hashes: np.ndarray  # uint64
    offsets: np.ndarray  # int64, documents + 1
    words: np.ndarray  # int64 per document

    def of(self, document: int) -> np.ndarray:
        return self.hashes[self.offsets[document] : self.offsets[document + 1]]


def ngram_hashes(
    texts: pa.Array | Sequence[str], n: int, normalization: Normalization | None = None
) -> NgramHashes:
    """Hashes of every word n-gram of each document; a document of fewer than `n` words is one n-gram
    of all its words (so short texts can be matched whole)."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    normalization = normalization or Normalization()
    buffers = as_text_buffers(texts, normalization)
    documents = len(buffers)
    scratch = np.empty(len(buffers.data) + 2 * documents, np.uint64)
    counts = np.zeros(documents, np.int64)
    words = np.zeros(documents, np.int64)
    _hash_kernel(
        buffers.data, buffers.offsets, buffers.nulls, normalization.byte_table(), n, scratch, counts, words
    )
    offsets = np.zeros(documents + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    starts = buffers.offsets[:-1] + 2 * np.arange(documents)
    # Gather each document's run out of the scratch buffer in one vectorised step.
    within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], counts)
    flat = scratch[np.repeat(starts, counts) + within]
    return NgramHashes(flat, offsets, words)


@dataclass(frozen=True)
class Hits:
    """One row per (document, n-gram position, posting) found: `span` is the n-gram's length in words."""

    document: np.ndarray  # int64
    position: np.ndarray  # int64, word index of the n-gram's first word
    span: np.ndarray  # int64
    posting: np.ndarray  # int64, the caller's id attached to the matched key

    def __len__(self) -> int:
        return len(self.document)


@dataclass(frozen=True)
class NgramIndex:
    keys: np.ndarray  # uint64 table, 0 = empty slot
    slot_entry: np.ndarray  # int64 per slot: the distinct key stored there (-1 empty)
    bitmap: np.ndarray  # uint64 words, bit (key >> 32) & (bits - 1)
    posting_offsets: np.ndarray  # int64, distinct keys + 1
    postings: np.ndarray  # int64 caller ids, grouped by key
    spans: np.ndarray  # int64, the distinct n-gram lengths held (probing computes each)

    @classmethod
    def build(cls, hashes: np.ndarray, postings: np.ndarray, spans: np.ndarray) -> NgramIndex:
        """Index `hashes[i]` with posting `postings[i]` (pairs may repeat); `spans`: lengths to probe."""
        order = np.lexsort((postings, hashes))
        hashes, postings = hashes[order], postings[order]
        distinct_pair = np.ones(len(hashes), bool)
        distinct_pair[1:] = (hashes[1:] != hashes[:-1]) | (postings[1:] != postings[:-1])
        hashes, postings = hashes[distinct_pair], postings[distinct_pair]
        first = np.ones(len(hashes), bool)
        first[1:] = hashes[1:] != hashes[:-1]
        unique = hashes[first]
        posting_offsets = np.append(np.flatnonzero(first), len(hashes)).astype(np.int64)
        size = 1 << max(4, int(2 * max(len(unique), 1) - 1).bit_length())
        keys = np.zeros(size, np.uint64)
        slot_entry = np.full(size, -1, np.int64)
        bitmap = np.zeros(_BITMAP_BITS // 64, np.uint64)
        _insert(keys, slot_entry, bitmap, unique)
        return cls(
            keys,
            slot_entry,
            bitmap,
            posting_offsets,
            postings.astype(np.int64),
            np.unique(spans).astype(np.int64),
        )

    def probe(
        self, texts: pa.Array | Sequence[str] | TextBuffers, normalization: Normalization | None = None
    ) -> Hits:
        """Every indexed n-gram occurring in each document, with the postings of its key."""
        normalization = normalization or Normalization()
        buffers = texts if isinstance(texts, TextBuffers) else as_text_buffers(texts, normalization)
        table = normalization.byte_table()
        documents = np.arange(len(buffers), dtype=np.int64)
        counts = np.zeros(len(buffers), np.int64)
        empty = np.zeros(0, np.int64)
        args = (buffers.data, buffers.offsets, buffers.nulls, table, self.spans, self.bitmap, self.keys)
        _probe_kernel(*args, documents, counts, empty, empty, empty, empty, _chunks(len(documents)))
        touched = np.flatnonzero(counts)
        starts = np.zeros(len(touched) + 1, np.int64)
        np.cumsum(counts[touched], out=starts[1:])
        position, span, slot = (np.empty(starts[-1], np.int64) for _ in range(3))
        if len(touched):
            _probe_kernel(*args, touched, counts, starts, position, span, slot, _chunks(len(touched)))
        document = np.repeat(touched, counts[touched])
        entry = self.slot_entry[slot]
        per_entry = self.posting_offsets[entry + 1] - self.posting_offsets[entry]
        expanded = np.repeat(np.arange(len(entry)), per_entry)
        within = np.arange(len(expanded)) - np.repeat(np.cumsum(per_entry) - per_entry, per_entry)
        return Hits(
            document[expanded],
            position[expanded],
            span[expanded],
            self.postings[self.posting_offsets[entry[expanded]] + within],
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays to save (``np.savez``); `from_arrays` loads them back."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> NgramIndex:
        return cls(**{name: arrays[name] for name in cls.__dataclass_fields__})


def densest_windows(
    group_starts: np.ndarray, positions: np.ndarray, labels: np.ndarray, widths: np.ndarray, labels_count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each group of hits (sorted by position within the group), the window of at most `widths[g]`
    positions holding the most distinct labels: (distinct labels, first position, last position)."""
    groups = len(group_starts) - 1
    best, first, last = np.zeros(groups, np.int64), np.zeros(groups, np.int64), np.zeros(groups, np.int64)
    _densest_windows(group_starts, positions, labels, widths, labels_count, best, first, last)
    return best, first, last


def _chunks(documents: int) -> int:
    return max(1, min(documents, 64 * numba.get_num_threads()))


# -- Numba kernels ---------------------------------------------------------------------------------


@njit(inline="always", cache=True)
def _finish64(s: np.uint64) -> np.uint64:
    h = fmix64(s * GOLDEN64)
    return h if h != np.uint64(0) else np.uint64(1)  # 0 marks an empty slot


@njit(inline="always", cache=True)
def _first_hash(tokens, span) -> np.uint64:
    s = np.uint64(0)
    for k in range(span):
        s = rotl(s, ROLL) ^ tokens[k]
    return s


@njit(parallel=True, cache=True)
def _hash_kernel(data, offsets, nulls, table, n, out, counts, words):
    for d in prange(offsets.size - 1):
        start, end = offsets[d], offsets[d + 1]
        if nulls[d]:
            continue
        tokens = np.empty(end - start + 2, dtype=np.uint64)
        count = tokenize(data, start, end, table, False, tokens)
        words[d] = count
        if count == 0:
            continue
        span = min(n, count)
        base = start + 2 * d
        s = _first_hash(tokens, span)
        out[base] = _finish64(s)
        leaving = np.uint64(span) * ROLL
        for i in range(1, count - span + 1):
            s = rotl(s, ROLL) ^ rotl(tokens[i - 1], leaving) ^ tokens[i + span - 1]
            out[base + i] = _finish64(s)
        counts[d] = count - span + 1


@njit(cache=True)
def _insert(keys, slot_entry, bitmap, unique):
    mask = np.uint64(keys.size - 1)
    bit_mask = np.uint64(bitmap.size * 64 - 1)
    for e in range(unique.size):
        key = unique[e]
        slot = key & mask
        while keys[slot] != np.uint64(0):
            slot = (slot + np.uint64(1)) & mask
        keys[slot] = key
        slot_entry[slot] = e
        bit = (key >> np.uint64(32)) & bit_mask
        bitmap[bit >> np.uint64(6)] |= np.uint64(1) << (bit & np.uint64(63))


@njit(inline="always", cache=True)
def _lookup(keys, h) -> np.int64:
    mask = np.uint64(keys.size - 1)
    slot = h & mask
    while True:
        stored = keys[slot]
        if stored == h:
            return np.int64(slot)
        if stored == np.uint64(0):
            return np.int64(-1)
        slot = (slot + np.uint64(1)) & mask


@njit(parallel=True, cache=True)
def _probe_kernel(data, offsets, nulls, table, spans, bitmap, keys, documents, counts, starts, position, span_out,
                  slot_out, chunks):  # fmt: skip
    """Count hits per document into `counts`, or, when `starts` is given, write them out as well."""
    write = starts.size > 0
    bit_mask = np.uint64(bitmap.size * 64 - 1)
    total = documents.size
    for chunk in prange(chunks):
        first, last = chunk * total // chunks, (chunk + 1) * total // chunks
        longest = 0
        for c in range(first, last):
            d = documents[c]
            longest = max(longest, offsets[d + 1] - offsets[d])
        tokens = np.empty(longest + 2, dtype=np.uint64)
        for c in range(first, last):
            d = documents[c]
            if nulls[d]:
                continue
            count = tokenize(data, offsets[d], offsets[d + 1], table, False, tokens)
            found = 0
            for si in range(spans.size):
                span = spans[si]
                if count < span:
                    continue
                leaving = np.uint64(span) * ROLL
                s = _first_hash(tokens, span)
                for i in range(count - span + 1):
                    if i > 0:
                        s = rotl(s, ROLL) ^ rotl(tokens[i - 1], leaving) ^ tokens[i + span - 1]
                    h = _finish64(s)
                    bit = (h >> np.uint64(32)) & bit_mask
                    if (bitmap[bit >> np.uint64(6)] >> (bit & np.uint64(63))) & np.uint64(1):
                        slot = _lookup(keys, h)
                        if slot >= 0:
                            if write:
                                at = starts[c] + found
                                position[at] = i
                                span_out[at] = span
                                slot_out[at] = slot
                            found += 1
            if not write:
                counts[d] = found


@njit(cache=True)
def _densest_windows(group_starts, positions, labels, widths, labels_count, best, first, last):
    counts = np.zeros(labels_count, np.int64)
    for g in range(group_starts.size - 1):
        start, end = group_starts[g], group_starts[g + 1]
        counts[:] = 0
        distinct = 0
        low = start
        for high in range(start, end):  # two pointers: the window ends at `high`
            if counts[labels[high]] == 0:
                distinct += 1
            counts[labels[high]] += 1
            while positions[high] - positions[low] > widths[g]:
                counts[labels[low]] -= 1
                if counts[labels[low]] == 0:
                    distinct -= 1
                low += 1
            if distinct > best[g]:
                best[g], first[g], last[g] = distinct, positions[low], positions[high]
