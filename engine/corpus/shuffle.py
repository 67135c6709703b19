"""Shuffles through a scratch folder: records partitioned by key, grouped one partition range at a time.

A producer task writes its records to one file, sorted by fine partition, and returns how many fell in
each (`FINE_PARTITIONS` counts). The driver turns those counts into ranges of consecutive partitions
that fit a memory budget (`spans`), and a consumer task reads its range from every producer's file
(`read_span`). So a consumer holds one range, never the whole data set, and the driver holds counts.
Dedup shuffles band keys this way, and the connected-components rounds their edges.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

FINE_PARTITIONS = 1024
RECORD_BYTES = 16  # a record is two 64-bit values: a band key and its row, an edge's two rows
_SPREAD = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: consecutive rows spread over partitions
_PARTITION_SHIFT = np.uint64(64 - 10)  # the top 10 bits: 1024 partitions


def save_whole(path: Path, array: np.ndarray) -> None:
    """Whole or not at all: a retried task rewrites the same name."""
    partial = path.with_name(path.name + f".{uuid.uuid4().hex}.partial")  # two nodes may share a pid
    with open(partial, "wb") as handle:
        np.save(handle, array)
    os.replace(partial, path)


def save_by_row(path: Path, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Records `(row, value)` to `path`, sorted by the fine partition of `row`; the count per partition."""
    partition = ((rows.astype(np.uint64) * _SPREAD) >> _PARTITION_SHIFT).astype(np.uint16)
    order = np.argsort(partition, kind="stable")  # a radix sort, for 16-bit keys
    save_whole(path, np.stack([rows[order], values[order]], axis=1))
    return np.bincount(partition, minlength=FINE_PARTITIONS)


def offsets(counts: list[np.ndarray]) -> np.ndarray:
    """(producers, FINE_PARTITIONS + 1): where each fine partition starts in each producer's file."""
    table = np.zeros((len(counts), FINE_PARTITIONS + 1), np.int64)
    for producer, partition_counts in enumerate(counts):
        np.cumsum(partition_counts, out=table[producer, 1:])
    return table


def spans(table: np.ndarray, partition_mb: int, workers: int) -> list[tuple[int, int]]:
    """Consecutive fine partitions grouped into ranges of at most `partition_mb` of records (a fine
    partition larger than that is a range of its own), and into at least about `workers` ranges, so
    that no worker of a cluster waits while one groups everything."""
    sizes = (table[:, 1:] - table[:, :-1]).sum(axis=0) * RECORD_BYTES
    budget = min(partition_mb << 20, max(1, -(-int(sizes.sum()) // workers)))
    ranges, start, held = [], 0, 0
    for partition, size in enumerate(sizes):
        if held and held + size > budget:
            ranges.append((start, partition))
            start, held = partition, 0
        held += size
    if held:
        ranges.append((start, len(sizes)))
    return ranges


def read_span(files: list[Path], table: np.ndarray, span: tuple[int, int], dtype: type) -> np.ndarray:
    """The records of fine partitions [span) from every producer's file (`files[producer]`)."""
    low, high = span
    sizes = table[:, high] - table[:, low]
    records = np.empty((int(sizes.sum()), 2), dtype)  # read straight in
    filled = 0
    for producer in np.flatnonzero(sizes):
        stored = np.load(files[producer], mmap_mode="r")
        records[filled : filled + sizes[producer]] = stored[table[producer, low] : table[producer, high]]
        filled += sizes[producer]
        del stored  # unmapped: pages read stay out of this process's memory
    return records
