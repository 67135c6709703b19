"""Text as the kernels see it: Arrow's UTF-8 data buffer plus int64 offsets, and a byte table.

Normalisation folds each byte on its own: 0 marks a separator (whitespace and control characters,
and ASCII punctuation unless kept), anything else is the byte to hash (ASCII lowercased, digits
folded to '0' on request). Bytes >= 0x80 are UTF-8 and hash as themselves; full Unicode
normalisation (NFKC + lowercase) runs first in Arrow's C++ kernels when asked for.

`fold_byte` is the definition. Numba kernels call it (it is branch-free, so a loop over a document
compiles to SIMD compares); GPU kernels and numpy code look bytes up in `byte_table()`, built from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

LOWERCASE, PUNCTUATION, DIGITS = 1, 2, 4  # bits of `Normalization.flags`


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
