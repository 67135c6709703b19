from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa

from synthkiln.kernels.text import Normalization, as_text_buffers


def expected_table(normalization: Normalization) -> np.ndarray:
    """The folding rules written out byte by byte: what each byte must become (0: separator)."""
    table = np.zeros(256, np.uint8)
    for byte in range(256):
        character = chr(byte)
        if byte >= 0x80:
            table[byte] = byte  # UTF-8 lead and continuation bytes hash as themselves
        elif byte <= 0x20 or byte == 0x7F:
            table[byte] = 0  # whitespace and control characters
        elif not character.isalnum():
            table[byte] = 0 if normalization.punctuation else byte
        elif character.isdigit():
            table[byte] = ord("0") if normalization.digits else byte
        else:
            table[byte] = ord(character.lower()) if normalization.lowercase else byte
    return table


def test_byte_table_follows_every_flag_combination() -> None:
    for lowercase, punctuation, digits in itertools.product((False, True), repeat=3):
        normalization = Normalization(lowercase=lowercase, punctuation=punctuation, digits=digits)
        table = normalization.byte_table()
        assert table.dtype == np.uint8
        np.testing.assert_array_equal(table, expected_table(normalization), err_msg=str(normalization))


def test_text_buffers_are_zero_copy_views_of_arrow() -> None:
    array = pa.array(["ab", None, "cde"], pa.large_string()).slice(1)
    buffers = as_text_buffers(array)
    assert buffers.nulls.tolist() == [True, False]
    assert bytes(buffers.data[buffers.offsets[1] : buffers.offsets[2]]) == b"cde"
    assert np.shares_memory(buffers.data, np.frombuffer(array.buffers()[2], np.uint8))
