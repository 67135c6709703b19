"""The MinHash kernel in Triton: the scheme of :mod:`minhash`, bit for bit, one program per document.

A program tokenizes its document BYTES bytes at a time, one byte per lane: a byte's place in its
word and the word's hash so far (the chunk polynomial, added byte by byte: the same sum the Numba
tokenizer takes 8 bytes at a time) are segmented scans restarting where words begin, and each word's
hash is stored from the lane of its last byte (character tokens take a serial walk). Shingles are
then hashed SHINGLES at a time and permuted as one (SHINGLES, num_perm) tile reduced to its minima.
Without a GPU it runs under ``TRITON_INTERPRET=1`` (slow, for correctness); tensors are passed as
signed types and bitcast in the kernel because CPU torch lacks most unsigned operations. Not yet
timed on a GPU (target: >= 5 GB/s on one H100).
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from synthkiln.kernels.text import POWERS, TextBuffers

BYTES = 256  # bytes a program tokenizes at once (one per lane)
SHINGLES = 32  # shingles a program permutes at once: a (SHINGLES, num_perm) tile


@triton.jit
def _fmix32(h):
    h ^= h >> 16
    h *= 0x85EBCA6B
    h ^= h >> 13
    h *= 0xC2B2AE35
    h ^= h >> 16
    return h


@triton.jit
def rotl(x, bits):
    bits = bits & 63
    return (x << bits) | (x >> ((64 - bits) & 63))


@triton.jit
def _finish(s):
    s *= 0x9E3779B97F4A7C15
    return _fmix32(((s ^ (s >> 32)) & 0xFFFFFFFF).to(tl.uint32))


@triton.jit
def _restarting_sum(restart_a, sum_a, restart_b, sum_b):
    """Combine of a segmented scan: running sums that start again wherever `restart` is set."""
    return restart_a | restart_b, tl.where(restart_b != 0, sum_b, sum_a + sum_b)


@triton.jit
def _fold(data_ptr, table_ptr, offsets, inside):
    """The folded bytes at `offsets`; 0 (a separator) outside."""
    byte = tl.load(data_ptr + offsets, mask=inside, other=0).to(tl.uint8, bitcast=True)
    return tl.load(table_ptr + byte.to(tl.int32)).to(tl.uint8, bitcast=True)


@triton.jit
def tokenize(data_ptr, table_ptr, powers_ptr, tokens, start, end, CHARS: tl.constexpr, BLOCK: tl.constexpr):
    """Write the token hashes of bytes [start, end) to `tokens` (room for end - start + 2); return how many."""
    if CHARS:
        return _tokenize_chars(data_ptr, table_ptr, powers_ptr, tokens, start, end)
    return _tokenize_words(data_ptr, table_ptr, powers_ptr, tokens, start, end, BLOCK)


@triton.jit
def _tokenize_words(data_ptr, table_ptr, powers_ptr, tokens, start, end, BLOCK: tl.constexpr):
    # BLOCK bytes at a time, every lane one byte: a byte's place in its word and the word's hash so
    # far are segmented scans that restart where a word begins; each word's hash is stored from the
    # lane of its last byte. The word running off the end of a block is carried into the next.
    lanes = tl.arange(0, BLOCK)
    count = tl.full((), 0, tl.int64)
    carried_hash = tl.full((), 0, tl.uint64)
    carried_length = tl.full((), 0, tl.int64)
    for block in range(start, end, BLOCK):
        offsets = block + lanes
        folded = _fold(data_ptr, table_ptr, offsets, offsets < end)
        word = folded != 0
        after_separator = _fold(data_ptr, table_ptr, offsets - 1, (offsets > start) & (offsets <= end)) == 0
        before_separator = _fold(data_ptr, table_ptr, offsets + 1, offsets + 1 < end) == 0
        begins = (word & after_separator).to(tl.int32)
        continuing = tl.cumsum(begins, 0) == 0  # lanes still in the word carried from the block before
        _, place = tl.associative_scan((begins, word.to(tl.int64)), 0, _restarting_sum)
        place += tl.where(continuing, carried_length, 0) - 1
        power = tl.load(powers_ptr + (((place >> 3) + 1) & 255).to(tl.int32)).to(tl.uint64, bitcast=True)
        shifted = folded.to(tl.uint64) << ((place & 7) * 8).to(tl.uint64)
        term = tl.where(word, shifted * power, 0).to(tl.uint64)
        _, hashes = tl.associative_scan((begins, term), 0, _restarting_sum)
        hashes += tl.where(continuing, carried_hash, 0).to(tl.uint64)
        ends = word & before_separator
        slots = count + tl.cumsum(ends.to(tl.int64), 0) - 1
        tl.store(tokens + slots, hashes.to(tl.int64, bitcast=True), mask=ends)
        count += tl.sum(ends.to(tl.int64), 0)
        last = lanes == BLOCK - 1
        carried_hash = tl.sum(tl.where(last, hashes, 0).to(tl.uint64), 0)
        carried_length = tl.sum(tl.where(last, place + 1, 0), 0)
    return count


@triton.jit
def _tokenize_chars(data_ptr, table_ptr, powers_ptr, tokens, start, end):
    space_hash = tl.full((), 0x20, tl.uint64) * tl.load(powers_ptr + 1).to(tl.uint64, bitcast=True)

    h = tl.full((), 0, tl.uint64)
    length = tl.full((), 0, tl.uint64)
    count = tl.full((), 0, tl.int64)
    pending_space = count != 0
    for i in range(start, end):
        byte = tl.load(data_ptr + i).to(tl.uint8, bitcast=True)
        mapped = tl.load(table_ptr + byte.to(tl.int32)).to(tl.uint8, bitcast=True).to(tl.uint64)
        separator = mapped == 0
        continuation = (byte & 0xC0) == 0x80
        finish = (length > 0) & (separator | (continuation == 0))
        tl.store(tokens + count, h.to(tl.int64, bitcast=True))
        count += finish.to(tl.int64)
        space = (separator == 0) & pending_space
        tl.store(tokens + count, space_hash.to(tl.int64, bitcast=True))
        count += space.to(tl.int64)
        pending_space = separator & (count > 0)
        restart = finish | (length == 0)
        h = tl.where(restart, 0, h).to(tl.uint64)
        length = tl.where(restart, 0, length).to(tl.uint64)
        # Byte-at-a-time form of the 8-byte-chunk polynomial of the Numba tokenizer.
        power = tl.load(powers_ptr + (((length >> 3) + 1) & 255).to(tl.int32)).to(tl.uint64, bitcast=True)
        h = tl.where(separator, 0, h + (mapped << ((length & 7) * 8)) * power).to(tl.uint64)
        length = tl.where(separator, 0, length + 1).to(tl.uint64)
    tl.store(tokens + count, h.to(tl.int64, bitcast=True))
    count += (length > 0).to(tl.int64)
    return count


@triton.jit
def _minhash_kernel(
    data_ptr, offsets_ptr, nulls_ptr, table_ptr, powers_ptr, tokens_ptr, a_ptr, b_ptr, out_ptr,
    ngram, num_perm, CHARS: tl.constexpr, BYTES: tl.constexpr, SHINGLES: tl.constexpr, PERMS: tl.constexpr,
):  # fmt: skip
    doc = tl.program_id(0)
    start = tl.load(offsets_ptr + doc)
    end = tl.load(offsets_ptr + doc + 1)
    end = tl.where(tl.load(nulls_ptr + doc) != 0, start, end)
    tokens = tokens_ptr + start + 2 * doc  # room for end - start + 2 token hashes
    count = tokenize(data_ptr, table_ptr, powers_ptr, tokens, start, end, CHARS, BYTES)

    lanes = tl.arange(0, PERMS)
    in_range = lanes < num_perm
    a = tl.load(a_ptr + lanes, mask=in_range, other=0).to(tl.uint32, bitcast=True)
    b = tl.load(b_ptr + lanes, mask=in_range, other=0).to(tl.uint32, bitcast=True)
    mins = tl.full((PERMS,), 0xFFFFFFFF, tl.uint32)
    span = tl.minimum(count, ngram)
    shingles = tl.where(count > 0, count - span + 1, 0)
    # SHINGLES shingles at a time: s_i = XOR_k rotl(t[i+k], (span-1-k)*27) as in the Numba kernel,
    # then every permutation of every shingle in one (SHINGLES, PERMS) tile, reduced to its minima.
    for first in range(0, shingles, SHINGLES):
        shingle = first + tl.arange(0, SHINGLES)
        valid = shingle < shingles
        s = tl.zeros((SHINGLES,), tl.uint64)
        for k in range(0, span):
            token = tl.load(tokens + shingle + k, mask=valid, other=0).to(tl.uint64, bitcast=True)
            s ^= rotl(token, ((span - 1 - k) * 27).to(tl.uint64))
        permuted = a[None, :] * _finish(s)[:, None] + b[None, :]
        permuted = tl.where(valid[:, None], permuted, 0xFFFFFFFF).to(tl.uint32)
        mins = tl.minimum(mins, tl.min(permuted, 0))
    tl.store(out_ptr + doc * num_perm + lanes, mins.to(tl.int32, bitcast=True), mask=in_range)


def signatures_triton(
    buffers: TextBuffers, table: np.ndarray, ngram: int, chars: bool, a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    documents, num_perm = len(buffers), len(a)

    def tensor(array: np.ndarray, dtype: np.dtype) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array).view(dtype)).to(device)

    data = tensor(buffers.data if len(buffers.data) else np.zeros(1, np.uint8), np.int8)
    out = torch.empty((documents, num_perm), dtype=torch.int32, device=device)
    if documents:
        scratch = torch.empty(max(len(buffers.data), 1) + 2 * documents, dtype=torch.int64, device=device)
        _minhash_kernel[(documents,)](
            data, tensor(buffers.offsets, np.int64), tensor(buffers.nulls.astype(np.int8), np.int8),
            tensor(table, np.int8), tensor(POWERS, np.int64), scratch, tensor(a, np.int32), tensor(b, np.int32), out,
            ngram, num_perm, CHARS=chars, BYTES=BYTES, SHINGLES=SHINGLES, PERMS=triton.next_power_of_2(num_perm),
        )  # fmt: skip
    return out.cpu().numpy().view(np.uint32)
