"""Decontamination throughput: synthkiln vs the plain-Python 13-gram method (`ngram_baseline.py`).

Same documents (~2 KB of GSM8K train text each, 1% with a GSM8K test question planted), same index of
~10k benchmark items: GSM8K test (question, answer), HumanEval (prompt, canonical solution) and, to
reach the size, the first 3,500 GSM8K train rows as a third benchmark (the documents use the rest).
Also: index build time for GSM8K + HumanEval, cold and from the cache.

    python benchmarks/bench_decont.py
"""

from __future__ import annotations

import gzip
import json
import os
import random
import tempfile
import time
from pathlib import Path

import pyarrow as pa
from common import GSM8K, best_of, save_report
from ngram_baseline import NgramBaseline

from synthkiln.engine.benchmarks import BenchmarkSource
from synthkiln.engine.config import BenchmarkConfig, DecontaminateConfig
from synthkiln.engine.stages.decontam import ContaminationIndex
from synthkiln.kernels.minhash import set_threads

SHARED = GSM8K.parents[1]
SPLIT = 3_500  # train rows used as a benchmark; documents are built from the rows after


def documents(rows: list[dict], planted: list[str], count: int = 5_000, size: int = 2_000) -> list[str]:
    text = " ".join(r["question"] + " " + r["answer"] for r in rows)
    rng = random.Random(0)
    docs, position = [], 0
    while len(docs) < count:
        if position + size > len(text):
            position = (position + 7919) % 1000
        doc = text[position : position + size]
        if len(docs) % 100 == 0:
            doc = doc[: size // 2] + " " + rng.choice(planted) + " " + doc[size // 2 :]
        docs.append(doc)
        position += size
    return docs


def main() -> None:
    train = [json.loads(line) for line in GSM8K.read_text().splitlines()]
    test_path, humaneval_path = SHARED / "gsm8k" / "test.jsonl", SHARED / "humaneval" / "HumanEval.jsonl.gz"
    test = [json.loads(line) for line in test_path.read_text().splitlines()]
    with gzip.open(humaneval_path, "rt") as handle:
        humaneval = [json.loads(line) for line in handle]
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["SYNTHKILN_CACHE_DIR"] = scratch  # cold builds: nothing cached from earlier runs
        train_benchmark = Path(scratch) / "gsm8k_train_part.jsonl"
        train_benchmark.write_text("".join(json.dumps(r) + "\n" for r in train[:SPLIT]))
        small = [
            BenchmarkConfig(name="gsm8k", path=str(test_path)),
            BenchmarkConfig(name="humaneval", path=str(humaneval_path)),
        ]
        large = [
            *small,
            BenchmarkConfig(
                name="gsm8k-train-part", path=str(train_benchmark), fields=["question", "answer"]
            ),
        ]

        def build(benchmarks: list[BenchmarkConfig], **parameters) -> ContaminationIndex:
            config = DecontaminateConfig(benchmarks=benchmarks, **parameters)
            sources = [BenchmarkSource.of(b) for b in benchmarks]
            return ContaminationIndex.build(config, sources, [s.digest() for s in sources])

        build(small).find(pa.array(["compile the kernels"]))  # Numba compiles or loads its cache first
        build_seconds = best_of(3, lambda: build(small))
        ContaminationIndex.for_config(DecontaminateConfig(benchmarks=small))  # writes the cache entry
        from synthkiln.engine.stages import decontam

        def cached() -> None:
            decontam._LOADED.clear()
            ContaminationIndex.for_config(DecontaminateConfig(benchmarks=small))

        cached_seconds = best_of(3, cached)
        exact = build(large, fuzzy=False)
        both = build(large)
    items = sum(b["indexed"] for b in exact.benchmarks)
    docs = documents(train[SPLIT:], [t["question"] for t in test])
    array = pa.array(docs, pa.large_string())
    megabytes = sum(len(d.encode()) for d in docs) / 1e6
    results: dict[str, dict] = {}

    def record(name: str, seconds: float, scale: float = 1.0) -> None:
        results[name] = {"seconds": round(seconds, 4), "MB/s": round(megabytes * scale / seconds, 2)}

    flagged = {}
    for threads in (1, 2):
        set_threads(threads)
        record(f"synthkiln ngram, {threads} thread(s)", best_of(3, lambda: exact.find(array)))
        record(
            f"synthkiln ngram + minhash containment, {threads} thread(s)",
            best_of(3, lambda: both.find(array)),
        )
    flagged["synthkiln ngram"] = sum(m is not None for m in exact.find(array))
    flagged["synthkiln ngram + minhash"] = sum(m is not None for m in both.find(array))
    baseline_items = [
        (f"{name}/{i}/{f}", row[f])
        for name, rows, fields in (("gsm8k", test, ("question", "answer")), ("humaneval", humaneval, ("prompt", "canonical_solution")),
                                   ("train", train[:SPLIT], ("question", "answer")))
        for i, row in enumerate(rows)
        for f in fields
    ]  # fmt: skip
    started = time.perf_counter()
    baseline = NgramBaseline(baseline_items)
    baseline_build = time.perf_counter() - started
    subset = docs[:500]
    record(
        "python 13-gram baseline",
        best_of(1, lambda: [baseline.find(d) for d in subset]),
        len(subset) / len(docs),
    )
    flagged["python 13-gram baseline (on the subset, scaled)"] = (
        sum(baseline.find(d) is not None for d in subset) * len(docs) // len(subset)
    )
    base = results["python 13-gram baseline"]["MB/s"]
    for row in results.values():
        row["ratio vs baseline"] = round(row["MB/s"] / base, 1)
    save_report(
        "decont_cpu",
        {
            "documents": len(docs),
            "megabytes": round(megabytes, 2),
            "benchmark_items": items,
            "planted": len(docs) // 100,
            "throughput": results,
            "rows_flagged": flagged,
            "index_build_seconds": {
                "gsm8k + humaneval, cold": round(build_seconds, 3),
                "gsm8k + humaneval, from cache": round(cached_seconds, 4),
                "python baseline dict, all items": round(baseline_build, 3),
            },
            "targets": {"MB/s on 2 cores": 200, "ratio vs baseline": 50, "index build seconds": 2},
        },
    )


if __name__ == "__main__":
    main()
