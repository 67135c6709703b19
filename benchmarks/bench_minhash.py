"""MinHash text-to-signature throughput: synthkiln vs rensa and datasketch, in one run.

synthkiln runs its Numba kernel at 1 and 2 threads (and with 256-bit vectors, in a child process),
its permutation stage alone, and its Triton kernel where CUDA is available.

Same documents (20k real-text documents of ~2 KB built from GSM8K), word 5-gram shingles, 128
permutations. Peers get what they need to run: rensa and datasketch take Python shingle lists
(built per document, as their users do); rensa's matrix entry point also gets pre-hashed shingles.
Slow peers run on a subset and are reported per byte, so the ratios compare like with like.

    python benchmarks/bench_minhash.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
from common import GSM8K, best_of, save_report

from synthkiln.kernels.minhash import (
    minhash_signatures,
    pick_backend,
    set_threads,
    shingle_hashes,
    signatures_from_hashes,
)

NUM_PERM, NGRAM = 128, 5


def documents(count: int = 20_000, size: int = 2_000) -> list[str]:
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()]
    text = " ".join(r["question"] + " " + r["answer"] for r in rows)
    docs, position = [], 0
    while len(docs) < count:
        if position + size > len(text):
            position = (position + 7919) % 1000  # wrap with a shift so documents do not repeat exactly
        docs.append(text[position : position + size])
        position += size
    return docs


def python_shingles(text: str) -> list[str]:
    words = text.lower().split()
    return [" ".join(words[i : i + NGRAM]) for i in range(max(1, len(words) - NGRAM + 1))]


def narrow_vectors_seconds() -> float | None:
    """Text-to-signature on 1 thread with LLVM's default 256-bit vectors, which is what a process
    gets when it imported numba before synthkiln: a child process, since numba fixes it per process.
    None where the CPU lacks AVX-512 (there is no other setting to compare)."""
    wide = os.environ.get("NUMBA_CPU_FEATURES", "")
    if not wide.endswith(",-prefer-256-bit"):
        return None
    env = {**os.environ, "NUMBA_CPU_FEATURES": wide.removesuffix(",-prefer-256-bit")}
    child = subprocess.run(
        [sys.executable, __file__, "--narrow-vectors"], env=env, capture_output=True, text=True, check=True
    )
    return float(child.stdout.split()[-1])


def main() -> None:
    docs = documents()
    array = pa.array(docs, pa.large_string())
    total_bytes = sum(len(d.encode()) for d in docs)
    minhash_signatures(array[:100], backend="numba")  # compile (or load the cached kernels)
    if "--narrow-vectors" in sys.argv:
        set_threads(1)
        print(best_of(3, lambda: minhash_signatures(array, backend="numba")))
        return
    hashes, offsets = shingle_hashes(array)
    shingles = len(hashes)
    signatures_from_hashes(hashes[:1000], np.array([0, 1000]))

    results: dict[str, dict[str, float]] = {}

    def record(name: str, seconds: float, fraction: float = 1.0) -> None:
        scaled = seconds / fraction
        results[name] = {
            "seconds_for_corpus": round(scaled, 4),
            "MB_per_s": round(total_bytes / scaled / 1e6, 1),
            "docs_per_s": round(len(docs) / scaled, 1),
            "ns_per_shingle_permutation": round(scaled / (shingles * NUM_PERM) * 1e9, 4),
        }

    for threads in (1, 2):
        set_threads(threads)
        record(
            f"synthkiln_numba_{threads}_thread",
            best_of(3, lambda: minhash_signatures(array, backend="numba")),
        )
    set_threads(1)
    record(
        "permutation_only_lower_bound_1_thread", best_of(3, lambda: signatures_from_hashes(hashes, offsets))
    )
    narrow = narrow_vectors_seconds()
    if narrow is not None:
        record("synthkiln_numba_1_thread_256_bit_vectors", narrow)
    if pick_backend("auto") == "triton":  # a GPU: the Triton kernel, copies to and from the device included
        minhash_signatures(array[:100], backend="triton")
        record("synthkiln_triton_gpu", best_of(3, lambda: minhash_signatures(array, backend="triton")))
    set_threads(os.cpu_count() or 1)

    from datasketch import MinHash
    from rensa import RMinHash

    subset = docs[:2_000]
    fraction = len(subset) / len(docs)

    def rensa_per_document() -> None:
        for text in subset:
            sketch = RMinHash(num_perm=NUM_PERM, seed=1)
            sketch.update(python_shingles(text))
            sketch.digest()

    record("rensa_RMinHash_per_document", best_of(2, rensa_per_document), fraction)
    rensa_hashes, rensa_offsets = hashes.astype(np.uint64), offsets.astype(np.uint64)
    record(
        "rensa_matrix_prehashed_shingles",
        best_of(
            3, lambda: RMinHash.digest_matrix_from_flat_token_hashes(rensa_hashes, rensa_offsets, NUM_PERM, 1)
        ),
    )
    datasketch_subset = docs[:300]

    def datasketch_update_batch() -> None:
        for text in datasketch_subset:
            sketch = MinHash(num_perm=NUM_PERM, seed=1)
            sketch.update_batch([s.encode() for s in python_shingles(text)])

    record("datasketch_update_batch", best_of(1, datasketch_update_batch), len(datasketch_subset) / len(docs))

    ours_1 = results["synthkiln_numba_1_thread"]["MB_per_s"]
    ours_2 = results["synthkiln_numba_2_thread"]["MB_per_s"]
    ratios = {
        "numba_2_threads_vs_rensa_per_document": round(
            ours_2 / results["rensa_RMinHash_per_document"]["MB_per_s"], 1
        ),
        "numba_2_threads_vs_datasketch": round(ours_2 / results["datasketch_update_batch"]["MB_per_s"], 1),
        "numba_1_thread_vs_rensa_matrix_prehashed": round(
            ours_1 / results["rensa_matrix_prehashed_shingles"]["MB_per_s"], 2
        ),
        "lower_bound_over_numba_1_thread": round(
            results["permutation_only_lower_bound_1_thread"]["MB_per_s"] / ours_1, 2
        ),
    }
    targets = {
        "MB_per_s_per_core": 400,
        "vs_rensa_end_to_end": 20,
        "vs_datasketch": 100,
        "within_x_of_lower_bound": 2,
    }
    save_report(
        "minhash_cpu",
        {
            "benchmark": "minhash",
            "documents": len(docs),
            "bytes": total_bytes,
            "shingles": shingles,
            "num_perm": NUM_PERM,
            "ngram": NGRAM,
            "results": results,
            "ratios": ratios,
            "targets": targets,
        },
    )


if __name__ == "__main__":
    main()
