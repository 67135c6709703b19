"""Scale-out: `synthkiln dedup` and `decontaminate` with the local executor vs Ray (1 and 2 workers),
peak memory of dedup on 20M documents, and the cluster sizes those rates imply.

Every number is a whole CLI command, Parquet in and out, at default settings (only the executor and
the cluster's CPUs change). Ray runs against a cluster started beforehand (`ray start --head
--num-cpus N`), as on a real deployment, so its start-up is not counted; connecting is.

Documents: "short" are bags of five GSM8K sentences (~0.45 KB, as in bench_dedup.py), "2 KB" are
windows of GSM8K train text with 1% holding a GSM8K test question (as in bench_decont.py).

    python benchmarks/bench_scale.py executors   # local vs Ray 1 and 2 workers
    python benchmarks/bench_scale.py memory      # 20M short documents: peak RSS, wall time
    python benchmarks/bench_scale.py clusters    # 4M short documents, 3M of them near-duplicates
    python benchmarks/bench_scale.py render      # seed rows read and prompts rendered by one driver
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from bench_dedup import bags, sentences
from common import GSM8K, RESULTS, save_report

RAY = str(Path(sys.executable).with_name("ray"))
RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
TB_PER_HOUR_MB_S = 1e6 / 3600  # 1 TB/h in MB/s
ROUNDS = 3


def write_texts(path: Path, pieces: Iterator[list[str]]) -> int:
    """Texts as one Parquet file (`id`, `text`), written a piece at a time; returns the text bytes."""
    writer, text_bytes, first = None, 0, 0
    for texts in pieces:
        text_bytes += sum(len(t) for t in texts)
        table = pa.table(
            {"id": np.arange(first, first + len(texts)), "text": pa.array(texts, pa.large_string())}
        )
        first += len(texts)
        writer = writer or pq.ParquetWriter(path, table.schema, compression="zstd")
        writer.write_table(table)
    assert writer is not None
    writer.close()
    return text_bytes


def write_short(path: Path, documents: int, seed: int = 100) -> int:
    """`documents` bags of GSM8K sentences, 1M at a time."""
    pool = sentences()
    return write_texts(
        path,
        (bags(pool, min(1_000_000, documents - s), seed=seed + s) for s in range(0, documents, 1_000_000)),
    )


def write_long(path: Path, documents: int, size: int = 2_000) -> int:
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()]
    tests = [json.loads(x)["question"] for x in (GSM8K.parent / "test.jsonl").read_text().splitlines()]
    text = " ".join(r["question"] + " " + r["answer"] for r in rows)
    rng = random.Random(0)
    docs = []
    for number in range(documents):
        start = rng.randrange(len(text) - size)
        doc = text[start : start + size]
        if number % 100 == 0:
            doc = doc[: size // 2] + " " + tests[number // 100 % len(tests)] + " " + doc[size // 2 :]
        docs.append(doc)
    pq.write_table(pa.table({"text": pa.array(docs, pa.large_string())}), path, compression="zstd")
    return sum(len(d) for d in docs)


def command(kind: str, source: Path, out: Path, executor: list[str]) -> list[str]:
    base = [sys.executable, "-m", "synthkiln.engine.cli", kind, str(source), "--out", str(out), "--quiet"]
    if kind == "decontaminate":
        base += ["--benchmark", f"gsm8k={GSM8K.parent / 'test.jsonl'}"]
    return base + executor


def timed(argv: list[str]) -> tuple[float, dict]:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=RAY_ENV)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    out = Path(argv[argv.index("--out") + 1])
    manifest = json.loads((out / "manifest.json").read_text())
    shutil.rmtree(out)
    return wall, manifest


def start_cluster(cpus: int) -> str:
    port = 6400 + cpus
    temp = tempfile.mkdtemp(prefix="ray")
    subprocess.run(
        [RAY, "start", "--head", f"--port={port}", f"--num-cpus={cpus}", f"--temp-dir={temp}",
         "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats"],
        check=True, capture_output=True, env=RAY_ENV,
    )  # fmt: skip
    return f"127.0.0.1:{port}"


def stop_cluster() -> None:
    subprocess.run([RAY, "stop", "--force"], capture_output=True, env=RAY_ENV)


def executors(scratch: Path, short_docs: int, long_docs: int) -> dict:
    inputs = {
        "short": (scratch / "short.parquet", short_docs, write_short(scratch / "short.parquet", short_docs)),
        "2KB": (scratch / "long.parquet", long_docs, write_long(scratch / "long.parquet", long_docs)),
    }
    tiny = scratch / "tiny.parquet"  # a command's fixed cost: start-up, connecting, Ray's worker processes
    write_short(tiny, 100)
    setups = {
        "local": ([], None),
        "ray-1-worker": (["--executor", "ray"], 1),
        "ray-2-workers": (["--executor", "ray"], 2),
    }
    # Rounds of every setup in turn, best of the rounds: this VM's speed drifts by 20% over minutes,
    # so setups measured one after another would compare different VMs.
    best: dict[tuple[str, str, str], tuple[float, dict]] = {}
    startup: dict[tuple[str, str], float] = {}
    # This VM hands memory freed for a few seconds back to its host and charges for taking it again, so
    # a big command after a small one pays for every page it touches. The same local command run again
    # at once is timed too ("back to back"): what a chain of commands sees on this VM.
    again: dict[tuple[str, str], float] = {}
    for _ in range(ROUNDS):
        for label, (flags, cpus) in setups.items():
            address = start_cluster(cpus) if cpus else None
            try:
                extra = [*flags, "--ray-address", address] if address else flags
                for kind in ("dedup", "decontaminate"):
                    wall = timed(command(kind, tiny, scratch / "out", extra))[0]
                    startup[kind, label] = min(wall, startup.get((kind, label), wall))
                    for size, (path, _, _) in inputs.items():
                        run = timed(command(kind, path, scratch / "out", extra))
                        if (kind, size, label) not in best or run[0] < best[kind, size, label][0]:
                            best[kind, size, label] = run
                        if label == "local":
                            wall = timed(command(kind, path, scratch / "out", extra))[0]
                            again[kind, size] = min(wall, again.get((kind, size), wall))
            finally:
                if address:
                    stop_cluster()
    runs: dict[str, dict] = {}
    for (kind, size, label), (wall, manifest) in best.items():
        _, documents, text_bytes = inputs[size]
        runs.setdefault(f"{kind}/{size}", {})[label] = {
            "documents": documents,
            "text_MB": round(text_bytes / 1e6, 1),
            "wall_seconds": round(wall, 2),
            "startup_seconds": round(startup[kind, label], 2),  # the same command on 100 documents
            "documents_per_second": round(documents / wall),
            "MB_per_second": round(text_bytes / 1e6 / wall, 1),
            "removed": manifest["removed"],
            "executor": manifest["executor"],
        }
        if label == "local":
            runs[f"{kind}/{size}"][label]["back_to_back"] = {
                "wall_seconds": round(again[kind, size], 2),
                "documents_per_second": round(documents / again[kind, size]),
                "MB_per_second": round(text_bytes / 1e6 / again[kind, size], 1),
            }
    for by_setup in runs.values():
        local = by_setup["local"]
        for label in ("ray-1-worker", "ray-2-workers"):
            ray = by_setup[label]
            ray["time_vs_local"] = round(ray["wall_seconds"] / local["wall_seconds"], 3)
            ray["time_past_startup_vs_local"] = round(
                (ray["wall_seconds"] - ray["startup_seconds"])
                / (local["wall_seconds"] - local["startup_seconds"]),
                3,
            )
    return runs


def sizing(runs: dict) -> dict:
    """Workers (Ray, per-worker rate measured with 1 worker) for 1 TB of 2 KB documents an hour through
    dedup then decontamination."""

    def rate(kind: str) -> float:  # past the command's start-up: what a long job sees
        run = runs[f"{kind}/2KB"]["ray-1-worker"]
        return round(run["text_MB"] / (run["wall_seconds"] - run["startup_seconds"]), 1)

    dedup, decont = rate("dedup"), rate("decontaminate")
    both = 1 / (1 / dedup + 1 / decont)
    return {
        "per_worker_MB_per_second": {"dedup": dedup, "decontaminate": decont, "both": round(both, 1)},
        "workers_for_1TB_per_hour": int(np.ceil(TB_PER_HOUR_MB_S / both)),
        "note": "one worker = one Ray CPU slot = one core of this 2-core VM (a task runs Numba on one thread); "
        "rates past each command's start-up; the driver's single pass (clusters, writing) does not scale "
        "with workers",
    }


# No GPU has been lent to measure generation, so a published rate: Red Hat's MLPerf Inference v5.1
# submission, Llama 3.1 8B (FP8) on vLLM 0.10.0, one H100, offline scenario (output tokens).
PUBLISHED_H100_TOKENS_PER_S = 5777


def generation_sizing(verified_per_hour: int = 1_000_000, tokens_per_row: int = 300) -> dict:
    """Engines (one H100 each) and sandbox cores for `verified_per_hour` verified code examples, at a
    few acceptance rates (a recipe's funnel gives its own: `accepted / generated`). Sandboxed checks per
    core are `bench_sandbox.py`'s HumanEval rate on this VM."""
    sandbox = json.loads((RESULTS / "sandbox_cpu.json").read_text())
    humaneval = sandbox["humaneval_164"]
    checks_per_core = humaneval["passed"] / humaneval["synthkiln pool seconds"] / sandbox["workers"]
    rows_per_engine_hour = PUBLISHED_H100_TOKENS_PER_S * 3600 / tokens_per_row
    by_acceptance = {}
    for acceptance in (0.25, 0.5, 0.9):
        generated = verified_per_hour / acceptance
        by_acceptance[str(acceptance)] = {
            "generated_rows_per_hour": round(generated),
            "h100_engines": int(np.ceil(generated / rows_per_engine_hour)),
            "sandbox_cores": int(np.ceil(generated / 3600 / checks_per_core)),
        }
    return {
        "verified_per_hour": verified_per_hour,
        "tokens_per_row": tokens_per_row,
        "engine_tokens_per_second": PUBLISHED_H100_TOKENS_PER_S,
        "engine_rate_source": "Red Hat, MLPerf Inference v5.1: Llama 3.1 8B FP8, vLLM 0.10.0, 1x H100, offline",
        "rows_per_engine_hour": round(rows_per_engine_hour),
        "sandbox_checks_per_core_second": round(checks_per_core, 1),
        "by_acceptance": by_acceptance,
    }


def memory(scratch: Path, documents: int) -> dict:
    source = scratch / "big.parquet"
    text_bytes = write_short(source, documents, seed=7)
    return {**dedup_peak(scratch, source, text_bytes, documents), "target_peak_rss_GiB": 8}


def clusters(scratch: Path, originals: int, copies: int) -> dict:
    """A corpus that is mostly near-duplicates: the connected components hold most rows."""
    source = scratch / "copies.parquet"
    text_bytes = write_copies(source, originals, copies)
    return {"originals": originals, "copies_each": copies,
            **dedup_peak(scratch, source, text_bytes, originals * (copies + 1))}  # fmt: skip


def write_copies(path: Path, originals: int, copies: int) -> int:
    """`originals` bags of GSM8K sentences, each followed by `copies` near-copies (one word changed, so
    each is a near-duplicate and none is exact)."""
    pool, words = sentences(), np.array(["lemon", "violin", "harbour", "quartz"])

    def pieces() -> Iterator[list[str]]:
        for start in range(0, originals, 250_000):
            rng, rows = np.random.default_rng(start), []
            for text in bags(pool, min(250_000, originals - start), seed=11 + start):
                split = text.split(" ")
                rows.append(text)
                for word in words[rng.integers(0, len(words), copies)]:
                    edited = split.copy()
                    edited[rng.integers(len(edited))] = word
                    rows.append(" ".join(edited))
            yield rows

    return write_texts(path, pieces())


def dedup_peak(scratch: Path, source: Path, text_bytes: int, documents: int) -> dict:
    """One `synthkiln dedup` of `source` at defaults: wall time, peak RSS, what it removed."""
    out = scratch / "out"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "synthkiln.engine.cli", "dedup", str(source), "--out", str(out), "--quiet"],
        capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "documents": documents,
        "text_GB": round(text_bytes / 1e9, 2),
        "input_parquet_GB": round(source.stat().st_size / 1e9, 2),
        "wall_seconds": round(wall, 1),
        "documents_per_second": round(documents / wall),
        "peak_rss_GiB": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 3),
        "removed": manifest["removed"],
        "clusters_with_duplicates": manifest["clusters_with_duplicates"],
        "partitions_grouped": manifest["partitions_grouped"],
        "component_rounds": manifest["component_rounds"],
        "seconds_by_pass": manifest["seconds_by_pass"],
    }


def render(scratch: Path, rows: int) -> dict:
    """Seed rows read and prompts rendered per second by the driver (GSM8K train questions as seeds,
    the instruction task at defaults): how many engines one driver keeps fed."""
    from synthkiln.engine.config import InstructionTask, SeedsConfig
    from synthkiln.engine.seeds import read_seeds
    from synthkiln.engine.tasks import build_task

    questions = [json.loads(line)["question"] for line in GSM8K.read_text().splitlines()]
    seeds = scratch / "seeds.jsonl"
    seeds.write_text(
        "".join(json.dumps({"instruction": questions[i % len(questions)]}) + "\n" for i in range(rows))
    )
    task = build_task(InstructionTask(kind="instruction"))
    started = time.perf_counter()
    prompts = sum(
        len(task.prompts(seed, n)) for n, seed in enumerate(read_seeds(SeedsConfig(path=str(seeds))))
    )
    seconds = time.perf_counter() - started
    return {
        "seed_rows": rows,
        "prompts": prompts,
        "seconds": round(seconds, 2),
        "prompts_per_second": round(prompts / seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["executors", "memory", "clusters", "render"])
    parser.add_argument("--short-documents", type=int, default=1_000_000)
    parser.add_argument("--long-documents", type=int, default=200_000)
    parser.add_argument("--documents", type=int, default=20_000_000, help="memory mode")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(dir=RESULTS.parents[1].parent))  # the disk, not a tmpfs
    try:
        if args.mode == "executors":
            runs = executors(scratch, args.short_documents, args.long_documents)
            save_report("scale_cpu", {"benchmark": "scale", "runs": runs, "sizing": sizing(runs),
                                      "generation_sizing": generation_sizing(),
                                      "target_ray_overhead_at_equal_workers": 1.25})  # fmt: skip
        elif args.mode == "clusters":
            save_report(
                "scale_clusters_cpu", {"benchmark": "dedup-clusters", **clusters(scratch, 1_000_000, 3)}
            )
        elif args.mode == "render":
            save_report("scale_render_cpu", {"benchmark": "seeds-and-prompts", **render(scratch, 200_000)})
        else:
            save_report("scale_memory_cpu", {"benchmark": "dedup-memory", **memory(scratch, args.documents)})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
