"""Near-duplicate removal end to end: 1M documents through `synthkiln dedup` (wall time, peak RSS),
and quality on planted near-duplicates in real text (precision, recall).

Documents are bags of five GSM8K sentences drawn at random, so they are real text and distinct.
Planted duplicates edit one or two words of a document (exact Jaccard kept above the threshold);
distractors share some sentences with a document but stay below half the threshold's similarity.

    python benchmarks/bench_dedup.py [--documents 1000000]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from common import GSM8K, save_report

from synthkiln.kernels.lsh import cluster_duplicates
from synthkiln.kernels.minhash import minhash_signatures, shingle_hashes

THRESHOLD = 0.8


def sentences() -> list[str]:
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()]
    text = " ".join(r["question"] for r in rows)
    return [s.strip() for s in re.split(r"(?<=[.?!])\s+", text) if len(s.split()) >= 6]


def bags(pool: list[str], count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(pool), size=(count, 5))
    return [" ".join(pool[i] for i in row) for row in picks]


def exact_jaccard(a: str, b: str) -> float:
    hashes, offsets = shingle_hashes([a, b])
    x, y = set(hashes[offsets[0] : offsets[1]].tolist()), set(hashes[offsets[1] : offsets[2]].tolist())
    return len(x & y) / len(x | y)


def quality(pool: list[str]) -> dict[str, float]:
    rng = random.Random(5)
    docs = bags(pool, 20_000, seed=1)
    planted, distractors = [], []
    while len(planted) < 500:
        index = rng.randrange(len(docs))
        words = docs[index].split()
        for _ in range(rng.choice([1, 2])):
            words[rng.randrange(len(words))] = rng.choice(["lemon", "violin", "harbour", "quartz"])
        copy = " ".join(words)
        if exact_jaccard(copy, docs[index]) >= THRESHOLD + 0.05:
            planted.append((index, len(docs)))
            docs.append(copy)
    while len(distractors) < 500:
        index = rng.randrange(20_000)
        kept_sentences = re.split(r"(?<=[.?!])\s+", docs[index])[:2]
        other = " ".join(kept_sentences + [pool[rng.randrange(len(pool))] for _ in range(3)])
        if exact_jaccard(other, docs[index]) < THRESHOLD / 2:
            distractors.append((index, len(docs)))
            docs.append(other)
    clusters = cluster_duplicates(minhash_signatures(docs), THRESHOLD).cluster
    found_planted = sum(clusters[a] == clusters[b] for a, b in planted)
    found_distractors = sum(clusters[a] == clusters[b] for a, b in distractors)
    return {
        "documents": len(docs),
        "planted_pairs": len(planted),
        "distractor_pairs": len(distractors),
        "recall": round(found_planted / len(planted), 4),
        "precision": round(found_planted / max(1, found_planted + found_distractors), 4),
    }


def end_to_end(pool: list[str], documents: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "corpus.parquet"
        chunk = 200_000
        writer = None
        for start in range(0, documents, chunk):
            texts = bags(pool, min(chunk, documents - start), seed=100 + start)
            table = pa.table(
                {"id": np.arange(start, start + len(texts)), "text": pa.array(texts, pa.large_string())}
            )
            writer = writer or pq.ParquetWriter(source, table.schema, compression="zstd")
            writer.write_table(table)
        writer.close()
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "synthkiln.engine.cli", "dedup", str(source), "--out", str(Path(scratch) / "out"),
             "--threshold", str(THRESHOLD), "--quiet"],
            capture_output=True, text=True,
        )  # fmt: skip
        wall = time.perf_counter() - started
        if done.returncode:
            raise SystemExit(done.stderr)
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        manifest = json.loads((Path(scratch) / "out" / "manifest.json").read_text())
        passes = manifest["seconds_by_pass"]
        return {
            "documents": documents,
            "input_bytes": source.stat().st_size,
            "wall_seconds": round(wall, 2),
            "peak_rss_GiB": round(peak_kib / 2**20, 3),
            "removed": manifest["removed"],
            # the command's time past its two passes is writing shards and the index
            "stage_seconds": {**passes, "write": round(manifest["seconds"] - sum(passes.values()), 3)},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=1_000_000)
    args = parser.parse_args()
    pool = sentences()
    save_report(
        "dedup_cpu",
        {
            "benchmark": "dedup",
            "threshold": THRESHOLD,
            "num_perm": 128,
            "ngram": 5,
            "quality": quality(pool),
            "end_to_end": end_to_end(pool, args.documents),
            "targets": {"wall_seconds": 60, "peak_rss_GiB": 3, "precision": 0.95, "recall": 0.95},
        },
    )


if __name__ == "__main__":
    main()
