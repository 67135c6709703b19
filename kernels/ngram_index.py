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

from synthkiln.kernels.minhash import ROLL, Backend, pick_backend, rotl
from synthkiln.kernels.text import GOLDEN64, Normalization, TextBuffers, as_text_buffers, tokenize, workspace

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
    _hash_kernel(buffers.data, buffers.offsets, buffers.nulls, normalization.flags, n, scratch, counts, words)
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
    spans: np.ndarray  # int64, the n-gram lengths probed with a rolling pass each
    # Whole texts shorter than the n-gram (of several lengths) are found from one pass over their
    # first `prefix_span` words: a prefix table names the candidate (length, hash) pairs to verify.
    prefix_span: np.ndarray  # int64, shape (1,): 0 when there are none
    prefix_keys: np.ndarray  # uint64 table of prefix hashes
    prefix_slot_entry: np.ndarray  # int64 per prefix slot
    prefix_offsets: np.ndarray  # int64, distinct prefixes + 1, into whole_lengths / whole_hashes
    whole_lengths: np.ndarray  # int64
    whole_hashes: np.ndarray  # uint64

    @classmethod
    def build(
        cls,
        hashes: np.ndarray,
        postings: np.ndarray,
        spans: np.ndarray,
        whole_lengths: np.ndarray | None = None,
        whole_prefixes: np.ndarray | None = None,
        prefix_span: int = 0,
    ) -> NgramIndex:
        """Index `hashes[i]` with posting `postings[i]` (pairs may repeat); `spans`: lengths to probe.

        Rows with `whole_lengths[i] > 0` are whole short texts of that many words whose first
        `prefix_span` words hash to `whole_prefixes[i]`: found without a pass per length.
        """
        keys, slot_entry, unique = _table(hashes)
        order = np.lexsort((postings, hashes))
        sorted_hashes, sorted_postings = hashes[order], postings[order]
        distinct_pair = run_starts(sorted_hashes, sorted_postings)
        sorted_hashes, sorted_postings = sorted_hashes[distinct_pair], sorted_postings[distinct_pair]
        posting_offsets = np.append(np.flatnonzero(run_starts(sorted_hashes)), len(sorted_hashes)).astype(
            np.int64
        )
        bitmap = np.zeros(_BITMAP_BITS // 64, np.uint64)
        _mark(bitmap, unique)
        whole = whole_lengths > 0 if whole_lengths is not None else np.zeros(len(hashes), bool)
        if whole.any() and not 0 < prefix_span <= whole_lengths[whole].min():
            raise ValueError(f"prefix_span must be in 1..{whole_lengths[whole].min()}, got {prefix_span}")
        triples = np.unique(
            np.stack([whole_prefixes[whole], whole_lengths[whole].astype(np.uint64), hashes[whole]], axis=1)
            if whole.any()
            else np.zeros((0, 3), np.uint64),
            axis=0,
        )
        prefix_keys, prefix_slot_entry, _ = _table(triples[:, 0])
        prefix_offsets = np.append(np.flatnonzero(run_starts(triples[:, 0])), len(triples)).astype(np.int64)
        return cls(
            keys, slot_entry, bitmap, posting_offsets, sorted_postings.astype(np.int64),
            np.unique(spans).astype(np.int64), np.array([prefix_span if whole.any() else 0], np.int64),
            prefix_keys, prefix_slot_entry, prefix_offsets, triples[:, 1].astype(np.int64), triples[:, 2].copy(),
        )  # fmt: skip

    def probe(
        self,
        texts: pa.Array | Sequence[str] | TextBuffers,
        normalization: Normalization | None = None,
        backend: Backend = "auto",
    ) -> Hits:
        """Every indexed n-gram occurring in each document, with the postings of its key."""
        normalization = normalization or Normalization()
        buffers = texts if isinstance(texts, TextBuffers) else as_text_buffers(texts, normalization)
        if pick_backend(backend) == "triton":
            from synthkiln.kernels.ngram_index_triton import probe_triton

            counts, touched, position, span, slot = probe_triton(buffers, normalization.byte_table(), self)
        else:
            counts, touched, position, span, slot = self._probe_numba(buffers, normalization.flags)
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

    def _probe_numba(self, buffers: TextBuffers, flags: np.uint8) -> tuple[np.ndarray, ...]:
        documents = np.arange(len(buffers), dtype=np.int64)
        counts = np.zeros(len(buffers), np.int64)
        empty = np.zeros(0, np.int64)
        args = (buffers.data, buffers.offsets, buffers.nulls, flags, self.spans, self.bitmap, self.keys,
                int(self.prefix_span[0]), self.prefix_keys, self.prefix_slot_entry, self.prefix_offsets,
                self.whole_lengths, self.whole_hashes)  # fmt: skip
        _probe_kernel(*args, documents, counts, empty, empty, empty, empty, _chunks(len(documents)))
        touched = np.flatnonzero(counts)
        starts = np.zeros(len(touched) + 1, np.int64)
        np.cumsum(counts[touched], out=starts[1:])
        position, span, slot = (np.empty(starts[-1], np.int64) for _ in range(3))
        if len(touched):
            _probe_kernel(*args, touched, counts, starts, position, span, slot, _chunks(len(touched)))
        return counts, touched, position, span, slot

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


def _table(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Open-addressing table of the distinct `hashes` (load <= 1/2): keys, slot -> entry, the distinct keys."""
    unique = np.unique(hashes)
    size = 1 << max(4, int(2 * max(len(unique), 1) - 1).bit_length())
    keys = np.zeros(size, np.uint64)
    slot_entry = np.full(size, -1, np.int64)
    _insert(keys, slot_entry, unique)
    return keys, slot_entry, unique


def run_starts(*keys: np.ndarray) -> np.ndarray:
    """True where a row starts a new run of equal keys (rows sorted by the keys)."""
    starts = np.ones(len(keys[0]), bool)
    if len(starts) > 1:
        starts[1:] = np.any([key[1:] != key[:-1] for key in keys], axis=0)
    return starts


def _chunks(documents: int) -> int:
    return max(1, min(documents, 64 * numba.get_num_threads()))


# -- Numba kernels ---------------------------------------------------------------------------------


@njit(inline="always", cache=True)
def _finish64(s: np.uint64) -> np.uint64:
    # Token hashes are unmixed polynomials: the table slot (low bits) and the bitmap bit (high bits)
    # need every word's bits in them. A multiply carries low bits up, the xor-shift brings high
    # bits down; both are bijections, so no collision is added (fmix64 here cost 20% of a probe).
    h = s * GOLDEN64
    h ^= h >> np.uint64(32)
    return h | np.uint64(h == np.uint64(0))  # 0 marks an empty slot


@njit(inline="always", cache=True)
def _first_hash(tokens, span) -> np.uint64:
    s = np.uint64(0)
    for k in range(span):
        s = rotl(s, ROLL) ^ tokens[k]
    return s


@njit(parallel=True, cache=True)
def _hash_kernel(data, offsets, nulls, flags, n, out, counts, words):
    for d in prange(offsets.size - 1):
        start, end = offsets[d], offsets[d + 1]
        if nulls[d]:
            continue
        tokens = np.empty(end - start + 2, dtype=np.uint64)
        count = tokenize(data, start, end, flags, False, workspace(end - start), tokens)
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
def _insert(keys, slot_entry, unique):
    mask = np.uint64(keys.size - 1)
    for e in range(unique.size):
        slot = unique[e] & mask
        while keys[slot] != np.uint64(0):
            slot = (slot + np.uint64(1)) & mask
        keys[slot] = unique[e]
        slot_entry[slot] = e


@njit(cache=True)
def _mark(bitmap, unique):
    bit_mask = np.uint64(bitmap.size * 64 - 1)
    for e in range(unique.size):
        bit = (unique[e] >> np.uint64(32)) & bit_mask
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


@njit(inline="always", cache=True)
def _record(write, starts, c, found, position, span_out, slot_out, i, span, slot) -> None:
    if write:
        at = starts[c] + found
        position[at] = i
        span_out[at] = span
        slot_out[at] = slot


@njit(parallel=True, cache=True)
def _probe_kernel(data, offsets, nulls, flags, spans, bitmap, keys, prefix_span, prefix_keys, prefix_slot_entry,
                  prefix_offsets, whole_lengths, whole_hashes, documents, counts, starts, position, span_out,
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
        work = workspace(longest)
        tokens = np.empty(longest + 2, dtype=np.uint64)
        for c in range(first, last):
            d = documents[c]
            if nulls[d]:
                continue
            count = tokenize(data, offsets[d], offsets[d + 1], flags, False, work, tokens)
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
                            _record(write, starts, c, found, position, span_out, slot_out, i, span, slot)
                            found += 1
            if prefix_span > 0 and count >= prefix_span:
                leaving = np.uint64(prefix_span) * ROLL
                s = _first_hash(tokens, prefix_span)
                for i in range(count - prefix_span + 1):
                    if i > 0:
                        s = rotl(s, ROLL) ^ rotl(tokens[i - 1], leaving) ^ tokens[i + prefix_span - 1]
                    prefix_slot = _lookup(prefix_keys, _finish64(s))
                    if prefix_slot < 0:
                        continue
                    entry = prefix_slot_entry[prefix_slot]
                    for w in range(prefix_offsets[entry], prefix_offsets[entry + 1]):
                        length = whole_lengths[w]
                        if (
                            i + length <= count
                            and _finish64(_first_hash(tokens[i:], length)) == whole_hashes[w]
                        ):
                            slot = _lookup(keys, whole_hashes[w])
                            _record(write, starts, c, found, position, span_out, slot_out, i, length, slot)
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
