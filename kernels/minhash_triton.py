"""The MinHash kernel in Triton: the scheme of :mod:`minhash`, bit for bit, one program per document.

Each program walks its document's bytes once, branch-free, to write token hashes into a scratch
buffer (the chunk polynomial added byte by byte, where the Numba tokenizer takes 8 bytes at a time;
the same sum), then rolls over its shingles, folding each into a vector of `num_perm` running minima
held in registers. Its byte walk is serial per document: the first thing to measure when a GPU is
at hand (the target is >= 5 GB/s on one H100; not yet measured). Without a GPU it runs under ``TRITON_INTERPRET=1``
(slow, for correctness); tensors are passed as signed types and bitcast in the kernel because CPU
torch lacks most unsigned operations.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from synthkiln.kernels.minhash import POWERS
from synthkiln.kernels.text import TextBuffers


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
def tokenize(data_ptr, table_ptr, powers_ptr, tokens, start, end, CHARS: tl.constexpr):
    """Write the token hashes of bytes [start, end) to `tokens` (room for end - start + 2); return how many."""
    space_hash = tl.full((), 0x20, tl.uint64) * tl.load(powers_ptr + 1).to(tl.uint64, bitcast=True)

    h = tl.full((), 0, tl.uint64)
    length = tl.full((), 0, tl.uint64)
    count = tl.full((), 0, tl.int64)
    pending_space = count != 0
    for i in range(start, end):
        byte = tl.load(data_ptr + i).to(tl.uint8, bitcast=True)
        mapped = tl.load(table_ptr + byte.to(tl.int32)).to(tl.uint8, bitcast=True).to(tl.uint64)
        separator = mapped == 0
        if CHARS:
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
        else:
            tl.store(tokens + count, h.to(tl.int64, bitcast=True))
            count += (separator & (length > 0)).to(tl.int64)
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
    ngram, num_perm, CHARS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    doc = tl.program_id(0)
    start = tl.load(offsets_ptr + doc)
    end = tl.load(offsets_ptr + doc + 1)
    end = tl.where(tl.load(nulls_ptr + doc) != 0, start, end)
    tokens = tokens_ptr + start + 2 * doc  # room for end - start + 2 token hashes
    count = tokenize(data_ptr, table_ptr, powers_ptr, tokens, start, end, CHARS)

    lanes = tl.arange(0, BLOCK)
    in_range = lanes < num_perm
    a = tl.load(a_ptr + lanes, mask=in_range, other=0).to(tl.uint32, bitcast=True)
    b = tl.load(b_ptr + lanes, mask=in_range, other=0).to(tl.uint32, bitcast=True)
    mins = tl.full((BLOCK,), 0xFFFFFFFF, tl.uint32)
    span = tl.minimum(count, ngram)
    # Rolling shingle hash, as in the Numba kernel: s_i = XOR_k rotl(t[i+k], (span-1-k)*27).
    s = tl.full((), 0, tl.uint64)
    for k in range(0, span):
        s = rotl(s, 27) ^ tl.load(tokens + k).to(tl.uint64, bitcast=True)
    first = tl.minimum(mins, a * _finish(s) + b)
    mins = tl.where(count > 0, first, mins)
    leaving = (span.to(tl.uint64) * 27) & 63
    for i in range(1, count - span + 1):
        leaving_token = tl.load(tokens + i - 1).to(tl.uint64, bitcast=True)
        entering_token = tl.load(tokens + i + span - 1).to(tl.uint64, bitcast=True)
        s = rotl(s, 27) ^ rotl(leaving_token, leaving) ^ entering_token
        mins = tl.minimum(mins, a * _finish(s) + b)
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
            ngram, num_perm, CHARS=chars, BLOCK=triton.next_power_of_2(num_perm),
        )  # fmt: skip
    return out.cpu().numpy().view(np.uint32)
