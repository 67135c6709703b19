"""The n-gram probe in Triton: the Numba kernel of :mod:`ngram_index`, hit for hit, one program per
document (tokens from the shared Triton tokenizer, one rolling pass per n-gram length, the bitmap
before the table, the prefix pass for short texts). Two launches, as on CPU: count, then write the
hits of the documents that have any. Without a GPU it runs under ``TRITON_INTERPRET=1`` (slow, for
correctness).
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from synthkiln.kernels.minhash_triton import BYTES, rotl, tokenize
from synthkiln.kernels.text import POWERS, TextBuffers


@triton.jit
def _u64(pointer):
    return tl.load(pointer).to(tl.uint64, bitcast=True)


@triton.jit
def _lookup(keys_ptr, mask, h):
    """Slot of `h` in the open-addressing table, or -1."""
    slot = (h & mask.to(tl.uint64)).to(tl.int64)
    stored = _u64(keys_ptr + slot)
    while (stored != h) & (stored != 0):
        slot = (slot + 1) & mask.to(tl.int64)
        stored = _u64(keys_ptr + slot)
    return tl.where(stored == h, slot, -1)


@triton.jit
def _finish64(s):
    h = s * 0x9E3779B97F4A7C15
    h ^= h >> 32
    return h | (h == 0).to(tl.uint64)


@triton.jit
def _first_hash(tokens, span):
    s = tl.full((), 0, tl.uint64)
    for k in range(0, span):
        s = rotl(s, 27) ^ _u64(tokens + k)
    return s


@triton.jit
def _probe_kernel(
    data_ptr, offsets_ptr, nulls_ptr, table_ptr, powers_ptr, scratch_ptr, spans_ptr, n_spans, bitmap_ptr,
    bit_mask, keys_ptr, keys_mask, prefix_span_ptr, prefix_keys_ptr, prefix_mask, prefix_slot_entry_ptr,
    prefix_offsets_ptr, whole_lengths_ptr, whole_hashes_ptr, documents_ptr, counts_ptr, starts_ptr,
    position_ptr, span_ptr, slot_ptr, WRITE: tl.constexpr,
):  # fmt: skip
    c = tl.program_id(0)
    doc = tl.load(documents_ptr + c)
    start = tl.load(offsets_ptr + doc)
    end = tl.load(offsets_ptr + doc + 1)
    end = tl.where(tl.load(nulls_ptr + doc) != 0, start, end)
    tokens = scratch_ptr + start + 2 * doc
    count = tokenize(data_ptr, table_ptr, powers_ptr, tokens, start, end, False, BYTES)
    found = tl.full((), 0, tl.int64)
    out = tl.load(starts_ptr + c)  # zeros when counting
    prefix_span = tl.load(prefix_span_ptr)
    for si in range(0, n_spans):
        span = tl.load(spans_ptr + si)
        if count >= span:
            leaving = (span.to(tl.uint64) * 27) & 63
            s = _first_hash(tokens, span)
            for i in range(0, count - span + 1):
                if i > 0:
                    s = rotl(s, 27) ^ rotl(_u64(tokens + i - 1), leaving) ^ _u64(tokens + i + span - 1)
                h = _finish64(s)
                bit = ((h >> 32) & bit_mask.to(tl.uint64)).to(tl.int64)
                marked = (_u64(bitmap_ptr + (bit >> 6)) >> (bit & 63).to(tl.uint64)) & 1
                if marked != 0:
                    slot = _lookup(keys_ptr, keys_mask, h)
                    if slot >= 0:
                        if WRITE:
                            tl.store(position_ptr + out + found, i)
                            tl.store(span_ptr + out + found, span)
                            tl.store(slot_ptr + out + found, slot)
                        found += 1
    if (prefix_span > 0) & (count >= prefix_span):
        leaving = (prefix_span.to(tl.uint64) * 27) & 63
        s = _first_hash(tokens, prefix_span)
        for i in range(0, count - prefix_span + 1):
            if i > 0:
                s = rotl(s, 27) ^ rotl(_u64(tokens + i - 1), leaving) ^ _u64(tokens + i + prefix_span - 1)
            prefix_slot = _lookup(prefix_keys_ptr, prefix_mask, _finish64(s))
            if prefix_slot >= 0:
                entry = tl.load(prefix_slot_entry_ptr + prefix_slot)
                for w in range(tl.load(prefix_offsets_ptr + entry), tl.load(prefix_offsets_ptr + entry + 1)):
                    length = tl.load(whole_lengths_ptr + w)
                    whole = _u64(whole_hashes_ptr + w)
                    if i + length <= count:  # noqa: SIM102 (Triton has no short-circuit `and`)
                        if _finish64(_first_hash(tokens + i, length)) == whole:
                            if WRITE:
                                tl.store(position_ptr + out + found, i)
                                tl.store(span_ptr + out + found, length)
                                tl.store(slot_ptr + out + found, _lookup(keys_ptr, keys_mask, whole))
                            found += 1
    if not WRITE:
        tl.store(counts_ptr + doc, found)


def probe_triton(buffers: TextBuffers, table: np.ndarray, index) -> tuple[np.ndarray, ...]:
    """(counts per document, touched documents, position, span, slot) as the Numba path returns them."""
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def tensor(array: np.ndarray, dtype: np.dtype = np.int64) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array).view(dtype)).to(device)

    documents = len(buffers)
    counts = torch.zeros(max(documents, 1), dtype=torch.int64, device=device)
    empty = np.zeros(0, np.int64)
    if not documents:
        return np.zeros(0, np.int64), empty, empty, empty, empty
    data = tensor(buffers.data if len(buffers.data) else np.zeros(1, np.uint8), np.int8)
    scratch = torch.empty(max(len(buffers.data), 1) + 2 * documents, dtype=torch.int64, device=device)
    common = (
        data, tensor(buffers.offsets), tensor(buffers.nulls.astype(np.int8), np.int8), tensor(table, np.int8),
        tensor(POWERS), scratch, tensor(index.spans), len(index.spans), tensor(index.bitmap),
        index.bitmap.size * 64 - 1, tensor(index.keys), index.keys.size - 1, tensor(index.prefix_span),
        tensor(index.prefix_keys), index.prefix_keys.size - 1, tensor(index.prefix_slot_entry),
        tensor(index.prefix_offsets), tensor(index.whole_lengths), tensor(index.whole_hashes),
    )  # fmt: skip
    unused = torch.zeros(documents, dtype=torch.int64, device=device)  # starts and outputs when counting
    _probe_kernel[(documents,)](
        *common,
        tensor(np.arange(documents, dtype=np.int64)),
        counts,
        unused,
        unused,
        unused,
        unused,
        WRITE=False,
    )
    counts_host = counts.cpu().numpy()[:documents]
    touched = np.flatnonzero(counts_host)
    starts = np.zeros(len(touched) + 1, np.int64)
    np.cumsum(counts_host[touched], out=starts[1:])
    total = int(starts[-1])
    outputs = [torch.empty(max(total, 1), dtype=torch.int64, device=device) for _ in range(3)]
    if len(touched):
        _probe_kernel[(len(touched),)](*common, tensor(touched), counts, tensor(starts), *outputs, WRITE=True)
    position, span, slot = (o.cpu().numpy()[:total] for o in outputs)
    return counts_host, touched, position, span, slot
