"""Lexical diversity of generated text, streamed shard by shard; a structure classifier; n-gram novelty.

Texts are Arrow string arrays read through :func:`text.as_text_buffers` and cut into words by
:func:`text.tokenize` under a `Normalization` (lowercase, ASCII punctuation as separators by default):
the tokens MinHash and the n-gram index see. Numba kernels do the per-row work; no Python runs per row.

`LexicalStats` accumulates over `update(texts)` calls (one per shard) and `merge`s with another
accumulator, so per-shard and cumulative figures come from the same object: a fresh one per shard,
merged into the cumulative one. `summary()` keys (tools read them; keep the names):

- ``distinct_1``, ``distinct_2``, ``distinct_3``: distinct word n-grams / all word n-gram occurrences.
  N-grams never cross rows; a row of fewer than n words has no n-gram of size n. 0.0 without n-grams.
- ``ngram_entropy_2``: Shannon entropy in bits of the bigram distribution, log2 N - (1/N) sum c log2 c
  over the bigram counts c (N of them). The sum is kept as counts grow, so a summary costs nothing.
- ``compression_ratio``: zlib (level 6) compressed bytes over raw UTF-8 bytes of the non-null rows
  joined by "\\n", computed per update; cumulative = sum of compressed / sum of raw over updates. One
  codec, one window: zlib only sees repeats within its 32 KiB window and within one update, so the
  cumulative value is an upper bound that depends on shard size (bigger shards compress better).
  None when the accumulator was made with ``compression=False``.
- ``opening_concentration``: share of rows (with at least one word) whose opening, their first 5
  words after normalisation (all of them for shorter rows), is the most common one. ``top_openings``
  lists the most common openings (normalised words joined by spaces) with their row counts.
- ``rows``, ``words``: rows seen (nulls included) and word occurrences.

Exact counts. N-grams are counted by 64-bit keys in open-addressing tables; the key is the n-gram
index's (:mod:`ngram_index`: token hashes rotated and xor-ed, then a bijective finaliser), so a
novelty set and the decontamination index agree on what an n-gram is. Distinct words of up to 8 bytes
have distinct keys; beyond that, taking keys as uniform, D distinct n-grams lose D (D - 1) / 2**65 of
them to collisions in expectation: 3e-4 n-grams at D = 10**8, 0.03 at D = 10**9. Tested: distinct
counts of GSM8K train's answers equal those of a Python set of word tuples.

Memory grows with distinct n-grams, not rows: a table doubles before it passes half full, so it holds
2-4 slots per distinct key: 16-32 bytes per distinct unigram and trigram (8-byte keys), 32-64 per
distinct bigram (a key and a count), 48-96 per distinct opening plus its normalised text (~30 bytes).
A doubling briefly holds the old and the new table.

Structure (`structure_labels`, `structure_counts`): a line-based classifier of raw text, its rules in
`structure_labels`. Novelty (`novelty`, `filter_novel`, `add_ngrams`): the share
of a row's n-grams missing from a `KeyTable` of accepted rows' n-gram keys.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from synthkiln.kernels.minhash import ROLL, rotl
from synthkiln.kernels.ngram_index import _finish64, _first_hash, ngram_hashes
from synthkiln.kernels.text import Normalization, TextBuffers, as_text_buffers, fold_byte, tokenize, workspace

Texts = pa.Array | pa.ChunkedArray | Sequence[str] | np.ndarray

OPENING_WORDS = 5
TOP_OPENINGS = 10
ZLIB_LEVEL = 6
_MIN_CAPACITY = 1024
# c log2 c for small counts: one entropy update per bigram occurrence, a table lookup instead of a log2.
_XLOGX_TABLE = np.arange(1 << 16) * np.log2(np.maximum(np.arange(1 << 16), 1))


# -- Counts of 64-bit keys --------------------------------------------------------------------------


class KeyTable:
    """64-bit keys (0 is never a key: the n-gram finaliser maps it to 1) in an open-addressing table
    with linear probing, optionally with a count and an entry number per key. Capacity is a power of
    two and doubles before the table passes half full.

    Slot i is row i of `slots`, [key, count, entry] as far as the table has them: a probe reads one
    cache line (a first version with separate key and count arrays, and counts in every table, took
    2.7x as long on GSM8K's answers). A set (the `seen` keys of the novelty functions, `LexicalStats`' unigrams and trigrams) takes 8
    bytes per slot, a counted table 16, one with entries (openings) 24.
    """

    def __init__(self, capacity: int = _MIN_CAPACITY, counts: bool = False, entries: bool = False) -> None:
        if entries and not counts:
            raise ValueError("a table with entries needs counts too (an entry is set on a key's first count)")
        capacity = 1 << max(int(capacity) - 1, _MIN_CAPACITY - 1).bit_length()
        self.slots = np.zeros((capacity, 1 + counts + entries), np.uint64)
        self.size = np.zeros(1, np.int64)  # an array: the kernels update it in place

    def __len__(self) -> int:
        return int(self.size[0])

    @property
    def capacity(self) -> int:
        return len(self.slots)

    @property
    def counted(self) -> bool:
        return self.slots.shape[1] > 1

    def reserve(self, extra: int) -> None:
        """Grow so that `extra` more keys fit at load <= 1/2."""
        needed = 2 * (len(self) + extra)
        if needed <= self.capacity:
            return
        slots = np.zeros((1 << (needed - 1).bit_length(), self.slots.shape[1]), np.uint64)
        _rehash(self.slots, slots)
        self.slots = slots

    def add(self, keys: np.ndarray) -> None:
        """Insert the keys (and count each occurrence, when counted)."""
        keys = np.asarray(keys, np.uint64)
        if not keys.all():
            raise ValueError("0 marks an empty slot and cannot be a key: pass finished n-gram keys")
        # Grown as the keys turn out new, not for all of them up front: a resumed run's shards repeat
        # most of their n-grams.
        done = _add_keys(self.slots, self.size, keys, 0)
        while done < len(keys):
            self.reserve(1)
            done = _add_keys(self.slots, self.size, keys, done)

    def counts_of(self, keys: np.ndarray) -> np.ndarray:
        """Per key, its count (counted tables) or 1 where present (sets); 0 where absent."""
        out = np.zeros(len(keys), np.int64)
        _counts_of(self.slots, np.asarray(keys, np.uint64), out)
        return out

    def stored(self) -> tuple[np.ndarray, np.ndarray]:
        """The keys held and their counts (1 in a set), in table order."""
        present = self.slots[:, 0] != 0
        counts = self.slots[present, 1] if self.counted else np.ones(int(present.sum()), np.uint64)
        return self.slots[present, 0], counts.astype(np.int64)


# -- Lexical statistics -----------------------------------------------------------------------------


class LexicalStats:
    """Running lexical diversity of every row passed to `update`, mergeable with another accumulator.

    All figures except ``compression_ratio`` depend only on the multiset of rows, not on how they were
    cut into updates or merged (top openings tie on count by key), so replaying the committed shards
    restores the state a run had, and a shard-parallel executor can merge per-worker accumulators.
    """

    def __init__(
        self,
        normalization: Normalization | None = None,
        opening_words: int = OPENING_WORDS,
        top_openings: int = TOP_OPENINGS,
        compression: bool = True,
    ) -> None:
        """`compression=False` skips zlib, which costs more than every other figure together
        (benchmarks/README.md), and reports ``compression_ratio`` as None."""
        if opening_words < 1 or top_openings < 1:
            raise ValueError(
                f"opening_words and top_openings must be positive, got {opening_words}, {top_openings}"
            )
        self.normalization = normalization or Normalization()
        self.opening_words = opening_words
        self.top_count = top_openings
        self.compression = compression
        # Word 1-, 2- and 3-grams: distinct counts need sets, the entropy needs the bigrams' counts.
        self.ngrams = [KeyTable(), KeyTable(counts=True), KeyTable()]
        self.openings = KeyTable(counts=True, entries=True)
        # Normalised text of each distinct opening, in order of first sight: pool[ends[e - 1]:ends[e]].
        self.pool = np.zeros(1 << 16, np.uint8)
        self.pool_ends = np.zeros(1024, np.int64)
        self.pool_state = np.zeros(2, np.int64)  # entries used, bytes used
        self.totals = np.zeros(4, np.int64)  # 1-, 2-, 3-gram occurrences, rows with words
        self.bigram_xlogx = np.zeros(1, np.float64)  # sum of c log2 c over bigram counts
        self.top_keys = np.zeros(0, np.uint64)  # the `top_count` most common openings, best first
        self.rows = 0
        self.raw_bytes = 0
        self.compressed_bytes = 0

    def update(self, texts: Texts) -> None:
        """Add one shard of rows."""
        buffers = as_text_buffers(texts, self.normalization)
        row_openings = np.zeros(len(buffers), np.uint64)
        need = np.zeros(6, np.int64)
        row = 0
        while row < len(buffers):
            need[:] = 0
            row = _update_kernel(
                buffers.data, buffers.offsets, buffers.nulls, self.normalization.flags, row, self.opening_words,
                tuple(table.slots for table in self.ngrams), tuple(table.size for table in self.ngrams),
                self.openings.slots, self.openings.size, self.pool, self.pool_ends, self.pool_state,
                self.totals, self.bigram_xlogx, _XLOGX_TABLE, row_openings, need,
            )  # fmt: skip
            self._grow(need)
        self.rows += len(buffers)
        if self.compression:
            # The rows as written: Unicode and deletion steps of the normalisation only shape words.
            unicode_or_delete = self.normalization.unicode or self.normalization.delete
            joined = join_rows(as_text_buffers(texts) if unicode_or_delete else buffers)
            if len(joined):
                self.raw_bytes += len(joined)
                self.compressed_bytes += len(zlib.compress(joined, ZLIB_LEVEL))
        self._refresh_top(row_openings[row_openings != 0])

    def merge(self, other: LexicalStats) -> None:
        """Add every row `other` has seen (other is left as it was)."""
        if other is self:
            raise ValueError("cannot merge lexical statistics into themselves")
        settings, other_settings = self._settings(), other._settings()
        if other_settings != settings:
            raise ValueError(
                f"cannot merge lexical statistics of different settings: {other_settings} vs {settings}"
            )
        for mine, theirs in zip(self.ngrams, other.ngrams, strict=True):
            mine.reserve(len(theirs))
        self.openings.reserve(len(other.openings))
        other_entries, other_bytes = other.pool_state
        self.pool = _with_room(self.pool, self.pool_state[1] + other_bytes)
        self.pool_ends = _with_room(self.pool_ends, self.pool_state[0] + other_entries)
        for n, (mine, theirs) in enumerate(zip(self.ngrams, other.ngrams, strict=True)):
            gain = _merge_tables(mine.slots, mine.size, theirs.slots, n == 1, _XLOGX_TABLE)
            if n == 1:
                self.bigram_xlogx[0] += gain
        _merge_openings(
            self.openings.slots, self.openings.size, self.pool, self.pool_ends, self.pool_state,
            other.openings.slots, other.pool, other.pool_ends,
        )  # fmt: skip
        self.totals += other.totals
        self.rows += other.rows
        self.raw_bytes += other.raw_bytes
        self.compressed_bytes += other.compressed_bytes
        # An opening absent from `other` kept its count, so it can only be in the new top if it was
        # in ours: the candidates are our top and every opening of `other`.
        self._refresh_top(other.openings.stored()[0])

    def summary(self) -> dict[str, object]:
        """The figures over every row seen so far (module docstring); 0.0 where nothing was measured."""
        unigrams, bigrams, trigrams, rows_with_words = (int(total) for total in self.totals)
        entropy = 0.0
        if bigrams:
            entropy = max(0.0, math.log2(bigrams) - float(self.bigram_xlogx[0]) / bigrams)
        top = self.top_openings()
        return {
            "rows": self.rows,
            "words": unigrams,
            "distinct_1": _share(len(self.ngrams[0]), unigrams),
            "distinct_2": _share(len(self.ngrams[1]), bigrams),
            "distinct_3": _share(len(self.ngrams[2]), trigrams),
            "ngram_entropy_2": entropy,
            "compression_ratio": _share(self.compressed_bytes, self.raw_bytes) if self.compression else None,
            "opening_concentration": _share(top[0]["rows"], rows_with_words) if top else 0.0,
            "top_openings": top,
        }

    def top_openings(self) -> list[dict[str, object]]:
        """The most common openings, best first: {"opening": normalised words, "rows": count, "share"}."""
        slots = self.openings.slots[_slots_of(self.openings.slots, self.top_keys)]
        rows_with_words = int(self.totals[3])
        top = []
        for count, entry in slots[:, 1:].tolist():
            start = int(self.pool_ends[entry - 1]) if entry else 0
            text = self.pool[start : self.pool_ends[entry]].tobytes().decode("utf-8", "replace")
            top.append({"opening": text, "rows": count, "share": count / rows_with_words})
        return top

    def _settings(self) -> dict[str, object]:
        return {
            "normalization": self.normalization,
            "opening_words": self.opening_words,
            "compression": self.compression,
        }

    def _refresh_top(self, candidates: np.ndarray) -> None:
        # Counts only grow, so an opening not touched since the last refresh cannot overtake the ones
        # ranked above it: the new top is among the old top and the touched openings.
        keys = np.unique(np.concatenate([self.top_keys, candidates]))
        counts = self.openings.counts_of(keys)
        order = np.lexsort((keys, -counts))[: self.top_count]
        self.top_keys = keys[order]

    def _grow(self, need: np.ndarray) -> None:
        """Make room the update kernel asked for: keys per table (4), pool bytes, pool entries."""
        for table, keys in zip([*self.ngrams, self.openings], need[:4].tolist(), strict=True):
            table.reserve(keys)
        self.pool = _with_room(self.pool, int(need[4]))
        self.pool_ends = _with_room(self.pool_ends, int(need[5]))


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _with_room(array: np.ndarray, size: int) -> np.ndarray:
    """`array`, or a copy at least twice as long when `size` items would not fit (amortised growth)."""
    if size <= len(array):
        return array
    grown = np.zeros(max(size, 2 * len(array)), array.dtype)
    grown[: len(array)] = array
    return grown


def join_rows(buffers: TextBuffers) -> np.ndarray:
    """The non-null rows' bytes joined by b"\\n" (what ``compression_ratio`` compresses)."""
    kept = np.flatnonzero(~buffers.nulls)
    starts, ends = buffers.offsets[:-1][kept], buffers.offsets[1:][kept]
    out = np.empty(int((ends - starts).sum()) + max(len(kept) - 1, 0), np.uint8)
    _join_kernel(buffers.data, starts, ends, out)
    return out


# -- Structure --------------------------------------------------------------------------------------

STRUCTURES = ("prose", "list", "numbered", "table", "code", "mixed")
PROSE, LIST, NUMBERED, TABLE, CODE, MIXED = range(len(STRUCTURES))


def structure_labels(texts: Texts) -> np.ndarray:
    """Per row, an int8 index into `STRUCTURES`, by these rules on the raw UTF-8 bytes.

    Lines are split on "\\n" and read after their leading spaces and tabs; blank lines are skipped.

    - fence: a line starting with ``` or ~~~. Lines between an opening and a closing fence are code
      lines and count for nothing else (a "- x" inside code is not a bullet).
    - bullet: "-", "*", "+" or "\u2022" followed by a space or tab ("**bold**" and "---" are not).
    - numbered: one to three digits, then "." or ")", then a space or tab ("1. ", "12) ").
    - table row: starts with "|" and holds a second "|".
    - code-like line: ends with ";", "{" or "}" (trailing spaces ignored); or starts with a keyword of
      `_CODE_STARTS` (def, class, import, return, #include, function, ...) followed by the line's
      end, a space, a tab, "(" or ":"; or starts with one of `_BLOCK_STARTS` (if, for, while, else,
      try, ...) so followed and ends with ":".

    Features: list (>= 2 bullets), numbered (>= 2 numbered lines), table (>= 2 table rows), code (a
    fence, or >= 2 code-like lines making more than half of the non-blank lines). The label is `prose`
    without a feature (null and empty rows included), the feature's name with one, `mixed` with two
    or more.
    """
    buffers = as_text_buffers(texts)
    labels = np.zeros(len(buffers), np.int8)
    _structure_kernel(buffers.data, buffers.offsets, buffers.nulls, *_KEYWORDS, labels)
    return labels


def structure_counts(texts: Texts) -> dict[str, int]:
    """How many rows carry each structure label (every label present, 0 when unseen)."""
    counts = np.bincount(structure_labels(texts), minlength=len(STRUCTURES))
    return dict(zip(STRUCTURES, counts.tolist(), strict=True))


_CODE_STARTS = (
    "def", "class", "import", "return", "#include", "function", "const", "let", "var", "public",
    "private", "static", "void", "fn", "func", "package", "using", "print", "console.log", "elif",
    "SELECT", "CREATE",
)  # fmt: skip
_BLOCK_STARTS = ("if", "for", "while", "else", "try", "except", "finally", "with", "async", "match", "case")


def _keyword_arrays(words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [word.encode() for word in words]
    ends = np.cumsum([len(word) for word in encoded]).astype(np.int64)
    return np.frombuffer(b"".join(encoded), np.uint8).copy(), ends


_KEYWORDS = (*_keyword_arrays(_CODE_STARTS), *_keyword_arrays(_BLOCK_STARTS))


# -- Novelty ----------------------------------------------------------------------------------------


def novelty(
    texts: Texts, seen: KeyTable, n: int = 3, normalization: Normalization | None = None
) -> np.ndarray:
    """Per row, the share of its word n-grams (size `n`) whose keys are not in `seen`; a row of fewer
    than `n` words is one n-gram of all its words; a row without words scores 0.0. `seen` is unchanged."""
    hashes = ngram_hashes(texts, n, normalization)
    counts = np.diff(hashes.offsets)
    missing = seen.counts_of(hashes.hashes) == 0
    row_of = np.repeat(np.arange(len(counts)), counts)
    new = np.bincount(row_of, weights=missing, minlength=len(counts))
    return np.divide(new, counts, out=np.zeros(len(counts)), where=counts > 0)


def add_ngrams(seen: KeyTable, texts: Texts, n: int = 3, normalization: Normalization | None = None) -> None:
    """Put every row's n-gram keys into `seen` (rows accepted by another stage, a resumed run's shards)."""
    seen.add(ngram_hashes(texts, n, normalization).hashes)


def filter_novel(
    texts: Texts, seen: KeyTable, threshold: float, n: int = 3, normalization: Normalization | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Decide rows in order: row i's novelty is measured against `seen` plus the rows before it that were
    kept; it is kept when its novelty is >= `threshold`, and its n-grams join `seen`.
    Returns (novelty per row, kept mask). Rows without words have novelty 0.0."""
    hashes = ngram_hashes(texts, n, normalization)
    scores = np.zeros(len(hashes.offsets) - 1)
    kept = np.zeros(len(scores), bool)
    row = 0
    while row < len(scores):  # `seen` grows as rows are kept, not for the whole batch up front
        row = _filter_novel_kernel(
            hashes.hashes, hashes.offsets, seen.slots, seen.size, float(threshold), scores, kept, row
        )
        if row < len(scores):
            seen.reserve(int(hashes.offsets[row + 1] - hashes.offsets[row]))
    return scores, kept


# -- Numba kernels ---------------------------------------------------------------------------------


@njit(inline="always", cache=True)
def _xlogx(count: np.int64, table: np.ndarray) -> float:
    if count < table.size:
        return table[count]
    return count * math.log2(count)


@intrinsic
def _prefetch(typingctx, table, slot):
    """Start loading row `slot` of a 2-D table into the cache (a hint: nothing is read or faulted).
    A row's keys are all computed first and prefetched, so that their cache misses overlap (1.3x on
    GSM8K's answers, whose bigram and trigram tables are 8 MiB each)."""

    def codegen(context, builder, signature, args):
        items = context.make_array(signature.args[0])(context, builder, args[0])
        width = builder.extract_value(items.shape, 1)
        address = builder.gep(items.data, [builder.mul(args[1], width)])
        int32 = ir.IntType(32)
        prefetch = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [address.type, int32, int32, int32]),
            "llvm.prefetch.p0",
        )
        # For writing (the key is inserted), kept in every cache level, a data (not instruction) load.
        builder.call(prefetch, [address, int32(1), int32(3), int32(1)])
        return context.get_dummy_value()

    return types.void(table, slot), codegen


@njit(inline="always", cache=True)
def _home(slots: np.ndarray, key: np.uint64) -> np.int64:
    return np.int64(key & np.uint64(slots.shape[0] - 1))


@njit(inline="always", cache=True)
def _find(slots: np.ndarray, key: np.uint64) -> np.int64:
    """The slot holding `key`, or the empty slot where it would go."""
    mask = slots.shape[0] - 1
    slot = _home(slots, key)
    while slots[slot, 0] != key and slots[slot, 0] != np.uint64(0):
        slot = (slot + 1) & mask
    return slot


@njit(inline="always", cache=True)
def _increment(slots, size, key, amount) -> np.int64:
    """Insert `key` if absent (the caller made room) and add `amount` to its count; return the slot."""
    slot = _find(slots, key)
    if slots[slot, 0] == np.uint64(0):
        slots[slot, 0] = key
        size[0] += 1
    if slots.shape[1] > 1:
        slots[slot, 1] += amount
    return slot


@njit(cache=True)
def _rehash(slots, new_slots) -> None:
    for slot in range(slots.shape[0]):
        if slots[slot, 0] != np.uint64(0):
            new_slots[_find(new_slots, slots[slot, 0]), :] = slots[slot, :]


@njit(cache=True)
def _add_keys(slots, size, keys, first) -> np.int64:
    """Insert keys[first:] until the table is half full; return how far it got."""
    for i in range(first, keys.size):
        if 2 * (size[0] + 1) > slots.shape[0]:
            return i
        _increment(slots, size, keys[i], np.uint64(1))
    return keys.size


_AHEAD = 16  # lookups prefetch this many keys ahead


@njit(cache=True)
def _counts_of(slots, keys, out) -> None:
    for i in range(keys.size):
        if i + _AHEAD < keys.size:
            _prefetch(slots, _home(slots, keys[i + _AHEAD]))
        slot = _find(slots, keys[i])
        if slots[slot, 0] != np.uint64(0):
            out[i] = np.int64(slots[slot, 1]) if slots.shape[1] > 1 else 1


@njit(cache=True)
def _slots_of(slots, keys) -> np.ndarray:
    out = np.empty(keys.size, np.int64)
    for i in range(keys.size):
        out[i] = _find(slots, keys[i])
    return out


@njit(inline="always", cache=True)
def _write_opening(data, start, end, flags, words, pool, at) -> np.int64:
    """Write the first `words` words of data[start:end] into pool[at:], folded by `fold_byte` (the
    tokenizer's rule: a word is a run of bytes it keeps) and joined by single spaces; return the end."""
    done = 0
    in_word = False
    for i in range(start, end):
        folded = fold_byte(data[i], flags)
        if folded == 0:
            if in_word:
                done += 1
                in_word = False
                if done == words:
                    break
            continue
        if not in_word and done > 0:
            pool[at] = np.uint8(0x20)
            at += 1
        in_word = True
        pool[at] = folded
        at += 1
    return at


@njit(cache=True)
def _update_kernel(data, offsets, nulls, flags, first_row, opening_words, tables, sizes, openings, opening_size,
                   pool, pool_ends, pool_state, totals, bigram_xlogx, xlogx_table, row_openings, need) -> np.int64:  # fmt: skip
    """Count rows from `first_row` on; return the row reached. It stops early, writing the room it needs
    into `need` (keys per table, pool bytes, pool entries), before a row that might not fit."""
    rows = offsets.size - 1
    longest = 0
    for d in range(first_row, rows):
        longest = max(longest, offsets[d + 1] - offsets[d])
    work = workspace(longest)
    tokens = np.empty(longest + 2, np.uint64)
    keys = np.empty((3, longest + 2), np.uint64)
    gain = 0.0
    d = first_row
    while d < rows:
        if nulls[d]:
            d += 1
            continue
        count = tokenize(data, offsets[d], offsets[d + 1], flags, False, work, tokens)
        if count == 0:
            d += 1
            continue
        short = False
        for n in range(3):
            room = sizes[n][0] + max(count - n, 0)
            if 2 * room > tables[n].shape[0]:
                need[n] = room
                short = True
        if 2 * (opening_size[0] + 1) > openings.shape[0]:
            need[3] = opening_size[0] + 1
            short = True
        if pool_state[1] + offsets[d + 1] - offsets[d] > pool.size:
            need[4] = pool_state[1] + offsets[d + 1] - offsets[d]
            short = True
        if pool_state[0] + 1 > pool_ends.size:
            need[5] = pool_state[0] + 1
            short = True
        if short:
            break
        # n-gram keys as in ngram_index: s_n = rotl(s_(n-1), ROLL) ^ token, finished to 64 bits.
        for i in range(count):
            s = tokens[i]
            keys[0, i] = _finish64(s)
            if i + 1 < count:
                s = rotl(s, ROLL) ^ tokens[i + 1]
                keys[1, i] = _finish64(s)
                if i + 2 < count:
                    keys[2, i] = _finish64(rotl(s, ROLL) ^ tokens[i + 2])
        for n in range(3):
            for i in range(count - n):
                _prefetch(tables[n], _home(tables[n], keys[n, i]))
        for n in range(3):
            for i in range(count - n):
                slot = _increment(tables[n], sizes[n], keys[n, i], np.uint64(1))
                if n == 1:
                    after = np.int64(tables[1][slot, 1])
                    gain += _xlogx(after, xlogx_table) - _xlogx(after - 1, xlogx_table)
        totals[0] += count
        totals[1] += count - 1
        totals[2] += max(count - 2, 0)
        totals[3] += 1
        key = _finish64(_first_hash(tokens, min(opening_words, count)))
        row_openings[d] = key
        slot = _increment(openings, opening_size, key, np.uint64(1))
        if openings[slot, 1] == np.uint64(1):
            entry = pool_state[0]
            openings[slot, 2] = np.uint64(entry)
            pool_state[1] = _write_opening(
                data, offsets[d], offsets[d + 1], flags, opening_words, pool, pool_state[1]
            )
            pool_ends[entry] = pool_state[1]
            pool_state[0] = entry + 1
        d += 1
    bigram_xlogx[0] += gain
    return d


@njit(cache=True)
def _merge_tables(slots, size, other, entropy, xlogx_table) -> float:
    """Add the other table's keys and counts; return the change of sum c log2 c when `entropy` is set."""
    gain = 0.0
    for slot in range(other.shape[0]):
        ahead = other[min(slot + _AHEAD, other.shape[0] - 1), 0]
        if ahead != np.uint64(0):
            _prefetch(slots, _home(slots, ahead))
        if other[slot, 0] != np.uint64(0):
            amount = other[slot, 1] if other.shape[1] > 1 else np.uint64(1)
            at = _increment(slots, size, other[slot, 0], amount)
            if entropy:
                after = np.int64(slots[at, 1])
                gain += _xlogx(after, xlogx_table) - _xlogx(after - np.int64(amount), xlogx_table)
    return gain


@njit(cache=True)
def _merge_openings(slots, size, pool, pool_ends, pool_state, other, other_pool, other_ends) -> None:
    for slot in range(other.shape[0]):
        ahead = other[min(slot + _AHEAD, other.shape[0] - 1), 0]
        if ahead != np.uint64(0):
            _prefetch(slots, _home(slots, ahead))
        if other[slot, 0] == np.uint64(0):
            continue
        at = _increment(slots, size, other[slot, 0], other[slot, 1])
        if slots[at, 1] == other[slot, 1]:  # new here: copy its text
            source = np.int64(other[slot, 2])
            start = other_ends[source - 1] if source > 0 else 0
            length = other_ends[source] - start
            pool[pool_state[1] : pool_state[1] + length] = other_pool[start : start + length]
            pool_state[1] += length
            slots[at, 2] = np.uint64(pool_state[0])
            pool_ends[pool_state[0]] = pool_state[1]
            pool_state[0] += 1


@njit(cache=True)
def _join_kernel(data, starts, ends, out) -> None:
    at = 0
    for r in range(starts.size):
        if r > 0:
            out[at] = np.uint8(0x0A)
            at += 1
        length = ends[r] - starts[r]
        out[at : at + length] = data[starts[r] : ends[r]]
        at += length


@njit(cache=True)
def _filter_novel_kernel(hashes, offsets, slots, size, threshold, scores, kept, first_row) -> np.int64:
    """Decide rows from `first_row` on; return the row reached (early: a row whose keys might not fit)."""
    for d in range(first_row, offsets.size - 1):
        start, end = offsets[d], offsets[d + 1]
        if 2 * (size[0] + end - start) > slots.shape[0]:
            return d
        for i in range(start, end):
            _prefetch(slots, _home(slots, hashes[i]))
        missing = 0
        for i in range(start, end):
            missing += slots[_find(slots, hashes[i]), 0] == np.uint64(0)
        scores[d] = missing / (end - start) if end > start else 0.0
        if scores[d] >= threshold:
            kept[d] = True
            for i in range(start, end):
                _increment(slots, size, hashes[i], np.uint64(1))
    return offsets.size - 1


@njit(inline="always", cache=True)
def _starts_with(data, at, end, words, word_ends, w) -> bool:
    first = word_ends[w - 1] if w > 0 else 0
    length = word_ends[w] - first
    if end - at < length:
        return False
    k = 0
    while k < length and data[at + k] == words[first + k]:
        k += 1
    return k == length


@njit(inline="always", cache=True)
def _keyword_at(data, at, end, words, word_ends) -> bool:
    """A keyword at `at`, followed by the line's end, a space, a tab, "(" or ":"."""
    for w in range(word_ends.size):
        if _starts_with(data, at, end, words, word_ends, w):
            first = word_ends[w - 1] if w > 0 else 0
            after = at + word_ends[w] - first
            if after == end or data[after] in (
                np.uint8(0x20),
                np.uint8(0x09),
                np.uint8(ord("(")),
                np.uint8(ord(":")),
            ):
                return True
    return False


@njit(inline="always", cache=True)
def _classify(data, start, end, code_words, code_ends, block_words, block_ends) -> np.int8:
    """One pass over the row's lines, counting what each rule of `structure_labels` matches."""
    bullets = numbered = table_rows = code_lines = nonblank = fences = 0
    in_fence = False
    line = start
    while line < end:
        line_end = line
        while line_end < end and data[line_end] != np.uint8(0x0A):
            line_end += 1
        next_line = line_end + 1
        p = line
        while p < line_end and data[p] in (np.uint8(0x20), np.uint8(0x09)):
            p += 1
        last = line_end
        while last > p and data[last - 1] in (np.uint8(0x20), np.uint8(0x09), np.uint8(0x0D)):
            last -= 1
        if p == last:
            line = next_line
            continue
        nonblank += 1
        first = data[p]
        if (
            last - p >= 3
            and first in (np.uint8(ord("`")), np.uint8(ord("~")))
            and data[p + 1] == first
            and data[p + 2] == first
        ):
            fences += 1
            code_lines += 1
            in_fence = not in_fence
            line = next_line
            continue
        if in_fence:
            code_lines += 1
            line = next_line
            continue
        spaced = p + 1 < last and data[p + 1] in (np.uint8(0x20), np.uint8(0x09))
        bullet_dot = (
            last - p >= 4 and first == np.uint8(0xE2) and data[p + 1] == np.uint8(0x80) and data[p + 2] == np.uint8(0xA2)
            and data[p + 3] in (np.uint8(0x20), np.uint8(0x09))
        )  # fmt: skip
        if (spaced and first in (np.uint8(ord("-")), np.uint8(ord("*")), np.uint8(ord("+")))) or bullet_dot:
            bullets += 1
        digits = 0
        while p + digits < last and np.uint8(data[p + digits] - np.uint8(ord("0"))) < np.uint8(10):
            digits += 1
        if (
            0 < digits <= 3
            and p + digits + 1 < last
            and data[p + digits] in (np.uint8(ord(".")), np.uint8(ord(")")))
            and data[p + digits + 1] in (np.uint8(0x20), np.uint8(0x09))
        ):
            numbered += 1
        if first == np.uint8(ord("|")):
            for k in range(p + 1, last):
                if data[k] == np.uint8(ord("|")):
                    table_rows += 1
                    break
        final = data[last - 1]
        if (
            final in (np.uint8(ord(";")), np.uint8(ord("{")), np.uint8(ord("}")))
            or _keyword_at(data, p, last, code_words, code_ends)
            or (final == np.uint8(ord(":")) and _keyword_at(data, p, last, block_words, block_ends))
        ):
            code_lines += 1
        line = next_line
    features = 0
    label = PROSE
    if bullets >= 2:
        features += 1
        label = LIST
    if numbered >= 2:
        features += 1
        label = NUMBERED
    if table_rows >= 2:
        features += 1
        label = TABLE
    if fences > 0 or (code_lines >= 2 and 2 * code_lines > nonblank):
        features += 1
        label = CODE
    return np.int8(MIXED if features >= 2 else label)


@njit(parallel=True, cache=True)
def _structure_kernel(data, offsets, nulls, code_words, code_ends, block_words, block_ends, labels) -> None:
    for d in prange(offsets.size - 1):
        if not nulls[d]:
            labels[d] = _classify(
                data, offsets[d], offsets[d + 1], code_words, code_ends, block_words, block_ends
            )
