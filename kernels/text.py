"""Text as the kernels see it: Arrow's UTF-8 data buffer plus int64 offsets, and a byte table.

Normalisation folds each byte on its own: 0 marks a separator (whitespace and control characters,
and ASCII punctuation unless kept), anything else is the byte to hash (ASCII lowercased, digits
folded to '0' on request). Bytes >= 0x80 are UTF-8 and hash as themselves; full Unicode
normalisation (NFKC + lowercase) runs first in Arrow's C++ kernels when asked for.

`fold_byte` is the definition. Numba kernels call it (it is branch-free, so a loop over a document
compiles to SIMD compares); GPU kernels and numpy code look bytes up in `byte_table()`, built from it.

`tokenize` turns a document into token hashes (words, or UTF-8 characters): the first step of the
MinHash scheme (:mod:`minhash`) and of the n-gram index (:mod:`ngram_index`), which share it so that
both see the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from llvmlite import ir
from numba import njit, types
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

LOWERCASE, PUNCTUATION, DIGITS = 1, 2, 4  # bits of `Normalization.flags`
GOLDEN64 = np.uint64(0x9E3779B97F4A7C15)  # K of the token hash (and the shingle hash's multiplier)


@njit(inline="always", cache=True)
def fold_byte(byte: np.uint8, flags: np.uint8) -> np.uint8:
    """The byte to hash, or 0 for a separator. Masks (0xFF for true) instead of branches: vectorisable."""
    upper = np.uint8(0) - np.uint8(np.uint8(byte - np.uint8(ord("A"))) < np.uint8(26))
    lower = np.uint8(0) - np.uint8(np.uint8(byte - np.uint8(ord("a"))) < np.uint8(26))
    digit = np.uint8(0) - np.uint8(np.uint8(byte - np.uint8(ord("0"))) < np.uint8(10))
    printable = np.uint8(0) - np.uint8(np.uint8(byte - np.uint8(0x21)) < np.uint8(0x7F - 0x21))
    utf8 = np.uint8(0) - np.uint8(byte >> np.uint8(7))
    punctuation_kept = np.uint8(((flags >> np.uint8(1)) & np.uint8(1)) - np.uint8(1))
    keep = upper | lower | digit | utf8 | (printable & punctuation_kept)
    folded = byte | (upper & np.uint8((flags & np.uint8(LOWERCASE)) << np.uint8(5)))
    to_zero_digit = digit & (np.uint8(0) - np.uint8((flags >> np.uint8(2)) & np.uint8(1)))
    folded = (folded & ~to_zero_digit) | (np.uint8(ord("0")) & to_zero_digit)
    return folded & keep


@dataclass(frozen=True)
class Normalization:
    """How text is folded before shingling. The defaults suit near-duplicate detection."""

    lowercase: bool = True
    punctuation: bool = True  # fold ASCII punctuation into separators
    digits: bool = False  # fold every digit to '0' (numbers stop mattering)
    unicode: bool = False  # NFKC + Unicode lowercase before the byte table (slower)
    delete: str = ""  # characters removed before tokenizing ("'" keeps "it's" and "its" one word)

    @property
    def flags(self) -> np.uint8:
        """The byte folding as `fold_byte` takes it."""
        return np.uint8(LOWERCASE * self.lowercase + PUNCTUATION * self.punctuation + DIGITS * self.digits)

    def byte_table(self) -> np.ndarray:
        """`fold_byte` of every byte value: what each byte becomes (0: separator)."""
        return _byte_table(self.flags)


@dataclass(frozen=True)
class TextBuffers:
    """UTF-8 bytes of all documents and int64 offsets (document i is data[offsets[i]:offsets[i+1]])."""

    data: np.ndarray  # uint8
    offsets: np.ndarray  # int64, len = documents + 1
    nulls: np.ndarray  # bool, True where the input row was null

    def __len__(self) -> int:
        return len(self.offsets) - 1


def as_text_buffers(
    texts: pa.Array | pa.ChunkedArray | Sequence[str] | np.ndarray, normalization: Normalization | None = None
) -> TextBuffers:
    """Zero-copy views of an Arrow string array's buffers (copying only to join chunks or widen offsets,
    or when `normalization` asks for a Unicode step or deleted characters, done in Arrow's C++ kernels)."""
    array = _as_arrow(texts)
    if normalization is not None and normalization.unicode:
        array = pc.utf8_lower(pc.utf8_normalize(array, "NFKC"))
    for character in normalization.delete if normalization is not None else "":
        array = pc.replace_substring(array, character, "")  # literal: ~4x faster than one regex here
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    if pa.types.is_string(array.type):
        width = np.int32
    elif pa.types.is_large_string(array.type):
        width = np.int64
    else:
        raise TypeError(f"expected a string array, got {array.type}")
    validity, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(
        offsets_buffer, dtype=width, count=len(array) + 1, offset=array.offset * np.dtype(width).itemsize
    )
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    nulls = (
        array.is_null().to_numpy(zero_copy_only=False) if validity is not None else np.zeros(len(array), bool)
    )
    return TextBuffers(data, offsets.astype(np.int64, copy=False), nulls)


def _as_arrow(texts: pa.Array | pa.ChunkedArray | Sequence[str] | np.ndarray) -> pa.Array | pa.ChunkedArray:
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        return texts
    return pa.array(list(texts) if isinstance(texts, np.ndarray) else texts, type=pa.large_string())


@njit(cache=True)
def _byte_table(flags: np.uint8) -> np.ndarray:
    table = np.empty(256, np.uint8)
    for byte in range(256):
        table[byte] = fold_byte(np.uint8(byte), flags)
    return table


# -- Tokenizer (Numba) ------------------------------------------------------------------------------

SPACE = np.uint8(0x20)


def _powers(count: int) -> np.ndarray:
    powers, value = np.empty(count, dtype=np.uint64), 1
    for i in range(count):
        powers[i] = value
        value = value * int(GOLDEN64) % 2**64
    return powers


POWERS = _powers(256)  # K**i mod 2**64 for the polynomial token hash (chunk positions wrap at 256)
_PAD = 72  # zero bytes after a document's folded bytes: the separator block's tail plus one 8-byte read


@intrinsic
def _load_u64(typingctx, array, index):
    """The 8 bytes of a uint8 array at `index`, little endian, from any alignment."""

    def codegen(context, builder, signature, args):
        items = context.make_array(signature.args[0])(context, builder, args[0])
        address = builder.bitcast(builder.gep(items.data, [args[1]]), ir.IntType(64).as_pointer())
        return builder.load(address, align=1)

    return types.uint64(array, index), codegen


@intrinsic
def _popcount(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(x), codegen


@njit(inline="always", cache=True)
def _low_bytes(count: np.int64) -> np.uint64:
    """A mask of the low `count` bytes, 0 <= count <= 8 (two shifts: a shift by 64 is undefined)."""
    half = np.uint64(4 * count)
    return ((np.uint64(1) << half) << half) - np.uint64(1)


@njit(cache=True)
def workspace(longest: int):
    """Scratch for the words tokenizer, enough for any document of up to `longest` bytes."""
    blocks = longest // 64 + 1
    return (
        np.zeros(blocks * 64 + _PAD, np.uint8),  # folded bytes, zero padded
        np.empty(blocks, np.uint64),  # one separator bit per byte
        np.empty(blocks * 64 + 8, np.int64),  # word edges (starts and ends, alternating)
        np.empty(blocks * 32 + 1, np.int64),  # the words longer than 8 bytes
    )


@njit(inline="always", cache=True)
def tokenize(data, start, end, flags, chars, work, out) -> np.int64:
    """Write the document's token hashes into `out` (room for end - start + 2); return how many.
    `work` is a `workspace` for documents of at least end - start bytes."""
    if chars:
        return _tokenize_chars(data, start, end, flags, out)
    return _tokenize_words(data, start, end, flags, work, out)


@njit(inline="always", cache=True)
def _tokenize_words(data, start, end, flags, work, out) -> np.int64:
    # Word boundaries are unpredictable, so no branch may depend on them: fold the bytes and turn them
    # into one separator bit per byte (two loops the compiler vectorises), find every edge between a
    # word and a separator with bit operations (edges are written 8 at a time whether there are 8 or
    # not, so the loop exit is taken once per 64 bytes, the simdjson way), hash every word's first
    # 8 bytes in a branch-free loop that lists the longer words, then add their other chunks.
    folded, separators, edges, long_words = work
    n = end - start
    text = data[start:end]  # a view from 0: indices the compiler knows are in range, so it vectorises
    for i in range(n):
        folded[i] = fold_byte(text[i], flags)
    blocks = n // 64 + 1  # covers byte n: every word ends before the padding does
    folded[n : blocks * 64 + 8] = 0
    for w in range(blocks):
        bits = np.uint64(0)
        for j in range(64):
            bits |= np.uint64(folded[w * 64 + j] == 0) << np.uint64(j)
        separators[w] = bits
    count = np.int64(0)
    before = np.uint64(1)  # the byte before the text counts as a separator
    for w in range(blocks):
        bits = separators[w]
        changes = bits ^ ((bits << np.uint64(1)) | before)
        before = bits >> np.uint64(63)
        at = count
        count += np.int64(_popcount(changes))
        while True:
            for _ in range(8):
                edges[at] = w * 64 + np.int64(trailing_zeros(changes))
                changes &= changes - np.uint64(1)
                at += 1
            if changes == 0:
                break
    words = count // 2
    longer = 0
    for t in range(words):
        length = edges[2 * t + 1] - edges[2 * t]
        out[t] = _chunk_term(folded, edges[2 * t], length, 0)
        long_words[longer] = t
        longer += length > 8
    for k in range(longer):
        t = long_words[k]
        length = edges[2 * t + 1] - edges[2 * t]
        for chunk in range(1, (length + 7) // 8):
            out[t] += _chunk_term(folded, edges[2 * t], length, chunk)
    return words


@njit(inline="always", cache=True)
def _chunk_term(folded, first, length, chunk) -> np.uint64:
    """chunk_j * K**(j + 1) of the token hash: the word's bytes [8j, 8j + 8), zero padded."""
    present = _low_bytes(min(length - 8 * chunk, 8))
    return (_load_u64(folded, first + 8 * chunk) & present) * POWERS[(chunk + 1) & 255]


@njit(inline="always", cache=True)
def _add_byte(h: np.uint64, folded: np.uint64, length: np.uint64) -> np.uint64:
    """The token hash with one more byte at `length`: byte-at-a-time form of the chunk polynomial."""
    shifted = folded << (np.uint64(8) * (length & np.uint64(7)))
    return h + shifted * POWERS[((length >> np.uint64(3)) + np.uint64(1)) & np.uint64(255)]


@njit(inline="always", cache=True)
def _tokenize_chars(data, start, end, flags, out) -> np.int64:
    count = 0
    h = np.uint64(0)
    length = np.uint64(0)
    pending_space = False
    for i in range(start, end):
        byte = data[i]
        folded = fold_byte(byte, flags)
        if folded == 0:
            if length > 0:
                out[count] = h
                count += 1
                h = np.uint64(0)
                length = np.uint64(0)
            pending_space = count > 0
            continue
        continuation = (byte & np.uint8(0xC0)) == np.uint8(0x80)
        if length > 0 and not continuation:
            out[count] = h
            count += 1
            h = np.uint64(0)
            length = np.uint64(0)
        if pending_space:
            out[count] = _add_byte(np.uint64(0), np.uint64(SPACE), np.uint64(0))
            count += 1
            pending_space = False
        h = _add_byte(h, np.uint64(folded), length)
        length += np.uint64(1)
    if length > 0:
        out[count] = h
        count += 1
    return count
