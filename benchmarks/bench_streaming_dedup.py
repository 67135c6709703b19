"""Streaming near-duplicate removal (the `dedup` pipeline stage's index) vs batch clustering (what
`synthkiln dedup` runs) on the same 1M MinHash signatures, and whether a long stream slows down.

The signatures are synthetic, not hashed from text: what is measured starts at the signatures, and
bench_minhash.py / bench_dedup.py time the hashing. Originals are uniform random uint32 rows (128
permutations, the dedup stage's default). Planted near-duplicates (10% of rows) copy an earlier
original and redraw each value with probability 0.1 (estimated Jaccard ~0.9, above the 0.8
threshold); near-misses (5%) redraw with probability 0.35 (~0.65): they often share a band key with
their source without being similar, so buckets with several owners occur and are looked through.

The stream is fed to `StreamingIndex.add` in steps of 64 rows; the batch side is one
`cluster_duplicates` call with the keep-first policy. Both rounds alternate (best total of
`--rounds` each); per-step times come from the best streaming round.

    python benchmarks/bench_streaming_dedup.py [--rows 1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
from common import save_report

from synthkiln.kernels.lsh import StreamingIndex, cluster_duplicates, optimal_bands

NUM_PERM = 128
THRESHOLD = 0.8
STEP = 64
DUPLICATE_SHARE, DUPLICATE_REDRAW = 0.10, 0.10
NEAR_MISS_SHARE, NEAR_MISS_REDRAW = 0.05, 0.35


def planted_signatures(rows: int, seed: int = 0) -> tuple[np.ndarray, int, int]:
    """(signatures, near-duplicates, near-misses); each planted row's source is an earlier original."""
    rng = np.random.default_rng(seed)
    # EMPTY (0xFFFFFFFF) marks an empty document: never drawn.
    signatures = rng.integers(0, 2**32 - 1, size=(rows, NUM_PERM), dtype=np.uint32)
    kind = rng.choice(
        3, size=rows, p=[1 - DUPLICATE_SHARE - NEAR_MISS_SHARE, DUPLICATE_SHARE, NEAR_MISS_SHARE]
    )
    kind[:1000] = 0  # every planted row has originals before it to copy
    originals = np.flatnonzero(kind == 0)
    planted = np.flatnonzero(kind > 0)
    earlier = np.searchsorted(originals, planted)
    sources = originals[(rng.random(len(planted)) * earlier).astype(np.int64)]
    redraw = np.where(kind[planted] == 1, DUPLICATE_REDRAW, NEAR_MISS_REDRAW)
    copies = signatures[sources]
    changed = rng.random(copies.shape) < redraw[:, None]
    copies[changed] = rng.integers(0, 2**32 - 1, size=int(changed.sum()), dtype=np.uint32)
    signatures[planted] = copies
    return signatures, int((kind == 1).sum()), int((kind == 2).sum())


def stream(signatures: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(total seconds, seconds per step, keep mask) through a fresh index."""
    index = StreamingIndex(NUM_PERM, THRESHOLD)
    steps, duplicate_of = [], []
    started = time.perf_counter()
    for start in range(0, len(signatures), STEP):
        step_started = time.perf_counter()
        duplicate_of.append(index.add(signatures[start : start + STEP])[0])
        steps.append(time.perf_counter() - step_started)
    total = time.perf_counter() - started
    return total, np.array(steps), np.concatenate(duplicate_of) < 0


def batch(signatures: np.ndarray) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    keep = cluster_duplicates(signatures, THRESHOLD).keep
    return time.perf_counter() - started, keep


def index_peak_bytes(signatures: np.ndarray) -> int:
    """Peak bytes numpy allocated while streaming (index, its growth copies, per-step results);
    untimed, as tracing allocations slows the steps."""
    tracemalloc.start()
    stream(signatures)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    signatures, duplicates, near_misses = planted_signatures(args.rows)
    stream(signatures[:2000])  # compile or load the kernels outside the timings
    batch(signatures[:2000])

    batch_seconds, stream_runs = [], []
    for _ in range(args.rounds):
        seconds, batch_keep = batch(signatures)
        batch_seconds.append(seconds)
        stream_runs.append(stream(signatures))
    stream_seconds, steps, stream_keep = min(stream_runs, key=lambda run: run[0])
    tenth = len(steps) // 10
    first, last = steps[:tenth] * 1e6, steps[-tenth:] * 1e6
    bands, rows = optimal_bands(THRESHOLD, NUM_PERM)
    save_report(
        "streaming_dedup_cpu",
        {
            "benchmark": "streaming_dedup",
            "rows": args.rows,
            "num_perm": NUM_PERM,
            "threshold": THRESHOLD,
            "bands": bands,
            "rows_per_band": rows,
            "step": STEP,
            "rounds": args.rounds,
            "planted_near_duplicates": duplicates,
            "planted_near_misses": near_misses,
            "removed": {"batch": int((~batch_keep).sum()), "streaming": int((~stream_keep).sum())},
            "keep_differs_rows": int((batch_keep != stream_keep).sum()),
            "batch_seconds": round(min(batch_seconds), 3),
            "streaming_seconds": round(stream_seconds, 3),
            "batch_seconds_all": [round(s, 3) for s in batch_seconds],
            "streaming_seconds_all": [round(run[0], 3) for run in stream_runs],
            "streaming_over_batch": round(stream_seconds / min(batch_seconds), 3),
            "step_us": {
                "first_10pct_mean": round(first.mean(), 1),
                "last_10pct_mean": round(last.mean(), 1),
                "first_10pct_median": round(float(np.median(first)), 1),
                "last_10pct_median": round(float(np.median(last)), 1),
                "last_over_first_mean": round(last.mean() / first.mean(), 3),
                "last_over_first_median": round(float(np.median(last) / np.median(first)), 3),
                "slowest": round(steps.max() * 1e6, 1),
                "median_by_tenth": [
                    round(float(np.median(part)) * 1e6, 1) for part in np.array_split(steps, 10)
                ],
            },
            "streaming_peak_MiB": round(index_peak_bytes(signatures) / 2**20, 1),
            "signatures_MiB": round(signatures.nbytes / 2**20, 1),
            "targets": {"streaming_over_batch": 2.0, "last_over_first": "~1"},
        },
    )


if __name__ == "__main__":
    main()
