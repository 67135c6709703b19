"""MinHash signatures of documents, straight from Arrow text buffers (Numba on CPU, Triton on GPU).

Scheme (shared bit for bit by both backends):

1. tokens (:func:`text.tokenize`, shared with the n-gram index): words (runs of bytes that
   :func:`text.fold_byte` keeps), or characters (UTF-8 code points, each separator run folded to one
   space);
2. token hash: the token's folded bytes cut into 8-byte little-endian chunks (the last one zero
   padded), hashed as the polynomial ``sum(chunk_j * K**((j + 1) mod 256)) mod 2**64`` (K the 64-bit
   golden ratio constant). Tokens hold no zero byte, so distinct tokens of up to 8 bytes get distinct
   hashes; mixing is left to the shingle hash, which mixes once per shingle;
3. shingle hash: ``ngram`` consecutive token hashes rotated by their position and xor-ed
   (``XOR_k rotl(t[i+k], (ngram-1-k)*27)``, which the n-gram index computes as a rolling hash),
   multiplied by the golden ratio constant, folded to 32 bits and mixed with ``fmix32`` (a document
   with fewer tokens is one shingle of all of them);
4. signature: ``num_perm`` affine permutations ``a*x + b mod 2**32`` (``a`` odd), minimum over shingles.

A document without tokens (empty, whitespace or punctuation only, or null) gets the all-ones
signature `EMPTY`; similarity and LSH treat it as matching nothing.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from typing import Literal

import numba
import numpy as np
import pyarrow as pa
from numba import njit, prange

from synthkiln.kernels.text import GOLDEN64, Normalization, TextBuffers, as_text_buffers, tokenize, workspace

EMPTY = np.uint32(0xFFFFFFFF)
SCHEME = 2  # bump when any hash above (or text.tokenize's) changes: other schemes' signatures are refused

MIX32_1 = np.uint32(0x85EBCA6B)
MIX32_2 = np.uint32(0xC2B2AE35)
ROLL = np.uint64(27)

Backend = Literal["auto", "numba", "triton"]


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The affine permutations (a odd, b any) of `seed`, as uint32 arrays."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**32, size=num_perm, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
    b = rng.integers(0, 2**32, size=num_perm, dtype=np.uint64).astype(np.uint32)
    return a, b


def minhash_signatures(
    texts: pa.Array | pa.ChunkedArray | Sequence[str] | np.ndarray,
    num_perm: int = 128,
    ngram: int = 5,
    seed: int = 1,
    backend: Backend = "auto",
    tokens: Literal["words", "chars"] = "words",
    normalization: Normalization | None = None,
) -> np.ndarray:
    """Signatures of shape (len(texts), num_perm), uint32. See the module docstring for the scheme."""
    if num_perm < 1 or ngram < 1:
        raise ValueError(f"num_perm and ngram must be positive, got {num_perm} and {ngram}")
    normalization = normalization or Normalization()
    buffers = as_text_buffers(texts, normalization)
    a, b = permutations(num_perm, seed)
    chars = tokens == "chars"
    if tokens not in ("words", "chars"):
        raise ValueError(f"tokens must be 'words' or 'chars', got {tokens!r}")
    if pick_backend(backend) == "triton":
        from synthkiln.kernels.minhash_triton import signatures_triton

        return signatures_triton(buffers, normalization.byte_table(), ngram, chars, a, b)
    return signatures_numba(buffers, normalization.flags, ngram, chars, a, b)


def signatures_numba(
    buffers: TextBuffers, flags: np.uint8, ngram: int, chars: bool, a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    out = np.empty((len(buffers), len(a)), dtype=np.uint32)
    if len(buffers):
        chunks = min(len(buffers), 64 * numba.get_num_threads())  # many more chunks than threads: balance
        _kernel_for(len(a))(
            buffers.data, buffers.offsets, buffers.nulls, flags, ngram, chars, a, b, out, chunks
        )
    return out


def shingle_hashes(
    texts: pa.Array | Sequence[str],
    ngram: int = 5,
    tokens: Literal["words", "chars"] = "words",
    normalization: Normalization | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The 32-bit shingle hashes of each document (flat) and their int64 offsets: exact Jaccard, benchmarks."""
    normalization = normalization or Normalization()
    buffers = as_text_buffers(texts, normalization)
    counts = np.zeros(len(buffers), np.int64)
    hashes = np.empty(len(buffers.data) + 2 * len(buffers), np.uint32)
    _shingles_kernel(
        buffers.data,
        buffers.offsets,
        buffers.nulls,
        normalization.flags,
        ngram,
        tokens == "chars",
        hashes,
        counts,
    )
    offsets = np.zeros(len(buffers) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    starts = buffers.offsets[:-1] + 2 * np.arange(len(buffers))
    flat = (
        np.concatenate([hashes[s : s + c] for s, c in zip(starts, counts, strict=True)])
        if len(counts)
        else hashes[:0]
    )
    return flat, offsets


def signatures_from_hashes(
    hashes: np.ndarray, offsets: np.ndarray, num_perm: int = 128, seed: int = 1
) -> np.ndarray:
    """Signatures of pre-hashed shingles: the permutation stage alone (the kernel's lower bound)."""
    a, b = permutations(num_perm, seed)
    out = np.empty((len(offsets) - 1, num_perm), dtype=np.uint32)
    _permute_kernel(hashes, offsets, a, b, out)
    return out


_GPU_DEVICES = ("/dev/nvidia[0-9]*", "/dev/dxg", "/dev/kfd")  # NVIDIA, WSL2's GPU, AMD ROCm


def pick_backend(backend: Backend) -> str:
    """'triton' or 'numba': `auto` is Triton where CUDA is available."""
    if backend == "auto":
        if not any(glob.glob(device) for device in _GPU_DEVICES):  # spare the second torch takes to import
            return "numba"
        try:
            import torch

            return "triton" if torch.cuda.is_available() else "numba"
        except ImportError:
            return "numba"
    if backend not in ("numba", "triton"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'triton', got {backend!r}")
    return backend


# -- Numba kernels ---------------------------------------------------------------------------------
# Every constant and intermediate is explicitly uint32/uint64: Numba widens uint32*uint32 to uint64
# (and mixes of signed/unsigned to float) unless told otherwise.


@njit(inline="always", cache=True)
def _fmix32(h: np.uint32) -> np.uint32:
    h ^= h >> np.uint32(16)
    h = np.uint32(h * MIX32_1)
    h ^= h >> np.uint32(13)
    h = np.uint32(h * MIX32_2)
    h ^= h >> np.uint32(16)
    return h


@njit(inline="always", cache=True)
def rotl(x: np.uint64, bits: np.uint64) -> np.uint64:
    bits &= np.uint64(63)
    return (x << bits) | (x >> ((np.uint64(64) - bits) & np.uint64(63)))


@njit(inline="always", cache=True)
def _finish(s: np.uint64) -> np.uint32:
    s *= GOLDEN64
    return _fmix32(np.uint32((s ^ (s >> np.uint64(32))) & np.uint64(0xFFFFFFFF)))


@njit(inline="always", cache=True)
def _shingle_hashes(tokens, count, span, out, raw) -> np.int64:
    """Shingle hashes: s_i = XOR_k rotl(t[i+k], (span-1-k)*ROLL); the rotations keep token order.

    One pass per token of the shingle over all shingles, then one finishing pass: each loop is
    vectorised (1.2x the whole kernel against a rolling hash, whose chain is serial). `raw` is
    uint64 scratch of `count` entries."""
    shingles = count - span + 1
    for i in range(shingles):
        raw[i] = tokens[i + span - 1]
    for k in range(span - 1):
        bits = np.uint64((span - 1 - k) * ROLL)
        for i in range(shingles):
            raw[i] ^= rotl(tokens[i + k], bits)
    for i in range(shingles):
        out[i] = _finish(raw[i])
    return shingles


_BLOCK = 8  # shingles per pass over the permutations: a[p], b[p], mins[p] are loaded once per 8


@njit(inline="always", cache=True)
def _update_block(mins, a, b, num_perm, h, first) -> None:
    for p in range(num_perm):
        ap, bp = a[p], b[p]
        v = mins[p]
        for j in range(_BLOCK):  # a constant trip count: unrolled, leaving the p loop to vectorise
            v = min(v, np.uint32(ap * h[first + j] + bp))
        mins[p] = v


@njit(inline="always", cache=True)
def _update1(mins, a, b, num_perm, x) -> None:
    for p in range(num_perm):
        mins[p] = min(mins[p], np.uint32(a[p] * x + b[p]))


@njit(inline="always", cache=True)
def _permute_into(mins, a, b, num_perm, h, start, end) -> None:
    """Fold shingle hashes h[start:end] into the running minima, 8 shingles per permutation pass."""
    i = start
    while i + _BLOCK <= end:
        _update_block(mins, a, b, num_perm, h, i)
        i += _BLOCK
    for j in range(i, end):
        _update1(mins, a, b, num_perm, h[j])


def _make_kernel(num_perm: int):
    """The signature kernel with `num_perm` fixed at compile time, so the permutation loop unrolls."""

    @njit(parallel=True, cache=True)
    def kernel(data, offsets, nulls, flags, ngram, chars, a, b, out, chunks):
        documents = offsets.size - 1
        for chunk in prange(chunks):
            # Scratch sized for the chunk's longest document, allocated once per chunk, not per document.
            first, last = chunk * documents // chunks, (chunk + 1) * documents // chunks
            longest = 0
            for d in range(first, last):
                longest = max(longest, offsets[d + 1] - offsets[d])
            work = workspace(longest)
            tokens = np.empty(longest + 2, dtype=np.uint64)
            h = np.empty(longest + 2, dtype=np.uint32)
            raw = np.empty(longest + 2, dtype=np.uint64)
            mins = np.empty(num_perm, dtype=np.uint32)
            for d in range(first, last):
                mins[:] = EMPTY
                if not nulls[d]:
                    count = tokenize(data, offsets[d], offsets[d + 1], flags, chars, work, tokens)
                    if count > 0:
                        # Two tight loops (hash all shingles, then permute them in blocks) ran faster
                        # than one fused loop here.
                        shingles = _shingle_hashes(tokens, count, min(ngram, count), h, raw)
                        _permute_into(mins, a, b, num_perm, h, 0, shingles)
                out[d, :] = mins

    return kernel


_KERNELS: dict[int, object] = {}


def _kernel_for(num_perm: int):
    """One kernel per signature width, compiled on first use (and cached on disk by Numba)."""
    if num_perm not in _KERNELS:
        _KERNELS[num_perm] = _make_kernel(num_perm)
    return _KERNELS[num_perm]


@njit(parallel=True, cache=True)
def _shingles_kernel(data, offsets, nulls, flags, ngram, chars, hashes, counts):
    for d in prange(offsets.size - 1):
        start, end = offsets[d], offsets[d + 1]
        if nulls[d]:
            counts[d] = 0
            continue
        tokens = np.empty(end - start + 2, dtype=np.uint64)
        count = tokenize(data, start, end, flags, chars, workspace(end - start), tokens)
        base = start + 2 * d
        if count == 0:
            counts[d] = 0
            continue
        raw = np.empty(count, np.uint64)
        counts[d] = _shingle_hashes(tokens, count, min(ngram, count), hashes[base : base + count], raw)


@njit(parallel=True, cache=True)
def _permute_kernel(h, offsets, a, b, out):
    num_perm = a.size
    for d in prange(offsets.size - 1):
        mins = np.full(num_perm, EMPTY, dtype=np.uint32)
        _permute_into(mins, a, b, num_perm, h, offsets[d], offsets[d + 1])
        out[d, :] = mins


def set_threads(count: int) -> None:
    """Numba worker threads for the kernels on the calling thread (benchmarks compare 1 and 2)."""
    numba.set_num_threads(count)


def get_threads() -> int:
    """Numba worker threads the kernels use on the calling thread."""
    return numba.get_num_threads()
