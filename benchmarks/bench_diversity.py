"""Diversity metrics per 100k rows: synthkiln's Numba kernels on one core vs plain Python, in one run.

Rows: GSM8K train answers (7,473) repeated to 100,000. Three jobs, each run by both sides on the same
rows, and their results compared (they must agree, or the ratio means nothing):

- lexical: distinct 1/2/3-grams, bigram entropy, zlib compression ratio, opening concentration
  (`LexicalStats`: one update over all rows; the same without the compression ratio, since zlib is
  the same call on the same bytes on both sides; and the pipeline's way, a fresh accumulator per
  1,000-row shard with its summary, merged into the cumulative one);
- structure: the rule-based structure label of every row;
- novelty: the low-novelty filter (word 3-grams, threshold 0.3, rows decided in order).

The Python side is what a data engineer writes without kernels: `str.translate` + split on the same
normalisation, sets and a `Counter` of word tuples, `math.log2`, `zlib`, and `re` per line.

`pipeline` (a second report, `diversity_pipeline_cpu.json`): the cost of diversity inside a run, at
quickstart rates. `examples/quickstart.toml` as shipped (the embedded SmolLM2 on transformers) run with
diversity off, at its defaults (measured per commit; the MiniLM figures are off on a CPU), and with
novelty rejection and steering on too; one loaded teacher serves every run, twice in the order off, on,
steered (the machine's speed drifts by a few percent over minutes), and the overhead is the best wall
time per generated token of each case over the best "off" one. Also MiniLM's embedding rate (rows/s) on GSM8K answers, what `embeddings = true` adds per row.

    python benchmarks/bench_diversity.py [lexical|pipeline]   (both by default)
"""

from __future__ import annotations

import itertools
import json
import math
import re
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import pyarrow as pa
from common import GSM8K, best_of, save_report

from synthkiln.kernels.diversity import (
    STRUCTURES,
    KeyTable,
    LexicalStats,
    filter_novel,
    join_rows,
    structure_counts,
)
from synthkiln.kernels.minhash import set_threads
from synthkiln.kernels.text import as_text_buffers

ROWS, SHARD_ROWS, NOVELTY_N, NOVELTY_THRESHOLD = 100_000, 1_000, 3, 0.3

# -- The plain Python reference -------------------------------------------------------------------

# The kernels' default normalisation: ASCII letters and digits make words (lowercased), other ASCII
# characters separate them, non-ASCII characters belong to words (so split on " " only: str.split()
# would also split at a non-breaking space, which GSM8K holds).
_FOLD = {code: (chr(code).lower() if chr(code).isalnum() else " ") for code in range(128)}


def python_words(text: str) -> list[str]:
    return [word for word in text.translate(_FOLD).split(" ") if word]


def python_lexical(rows: list[str], compression: bool = True) -> dict[str, float]:
    unigrams: set[str] = set()
    trigrams: set[tuple[str, str, str]] = set()
    bigrams: Counter[tuple[str, str]] = Counter()
    openings: Counter[str] = Counter()
    totals = [0, 0, 0]
    for row in rows:
        words = python_words(row)
        if not words:
            continue
        unigrams.update(words)
        bigrams.update(itertools.pairwise(words))
        trigrams.update(zip(words, words[1:], words[2:], strict=False))
        openings[" ".join(words[:5])] += 1
        totals[0] += len(words)
        totals[1] += len(words) - 1
        totals[2] += max(len(words) - 2, 0)
    figures = {
        "distinct_1": len(unigrams) / totals[0],
        "distinct_2": len(bigrams) / totals[1],
        "distinct_3": len(trigrams) / totals[2],
        "ngram_entropy_2": -sum(c / totals[1] * math.log2(c / totals[1]) for c in bigrams.values()),
        "opening_concentration": openings.most_common(1)[0][1] / sum(openings.values()),
    }
    if compression:
        raw = "\n".join(rows).encode()
        figures["compression_ratio"] = len(zlib.compress(raw, 6)) / len(raw)
    return figures


_BULLET = re.compile(r"[-*+\u2022][ \t]")
_NUMBERED = re.compile(r"[0-9]{1,3}[.)][ \t]")
_CODE_START = re.compile(
    r"(?:def|class|import|return|#include|function|const|let|var|public|private|static|void|fn|func|"
    r"package|using|print|console\.log|elif|SELECT|CREATE)(?:[ \t(:]|$)"
)
_BLOCK_START = re.compile(r"(?:if|for|while|else|try|except|finally|with|async|match|case)(?:[ \t(:]|$)")


def python_structure(text: str) -> str:
    """The rules of `structure_labels`, line by line with `re`."""
    bullets = numbered = table_rows = code_lines = nonblank = fences = 0
    in_fence = False
    for raw_line in text.split("\n"):
        line = raw_line.lstrip(" \t").rstrip(" \t\r")
        if not line:
            continue
        nonblank += 1
        if line.startswith(("```", "~~~")):
            fences += 1
            code_lines += 1
            in_fence = not in_fence
            continue
        if in_fence:
            code_lines += 1
            continue
        bullets += bool(_BULLET.match(line))
        numbered += bool(_NUMBERED.match(line))
        table_rows += line.startswith("|") and "|" in line[1:]
        code_lines += bool(
            line.endswith((";", "{", "}"))
            or _CODE_START.match(line)
            or (line.endswith(":") and _BLOCK_START.match(line))
        )
    features = [
        name
        for name, present in (
            ("list", bullets >= 2),
            ("numbered", numbered >= 2),
            ("table", table_rows >= 2),
            ("code", fences > 0 or (code_lines >= 2 and 2 * code_lines > nonblank)),
        )
        if present
    ]
    return "mixed" if len(features) >= 2 else (features[0] if features else "prose")


def python_novelty_filter(rows: list[str]) -> list[bool]:
    seen: set[tuple[str, ...]] = set()
    kept = []
    for row in rows:
        words = python_words(row)
        span = min(NOVELTY_N, len(words))
        grams = [tuple(words[i : i + span]) for i in range(len(words) - span + 1)] if words else []
        novelty = sum(gram not in seen for gram in grams) / len(grams) if grams else 0.0
        kept.append(novelty >= NOVELTY_THRESHOLD)
        if kept[-1]:
            seen.update(grams)
    return kept


# -- The run -----------------------------------------------------------------------------------------


def streamed_in_shards(array: pa.Array) -> dict[str, object]:
    """The pipeline's use: per shard a fresh accumulator and its summary, merged into the cumulative one."""
    cumulative = LexicalStats()
    for start in range(0, len(array), SHARD_ROWS):
        shard = LexicalStats()
        shard.update(array[start : start + SHARD_ROWS])
        shard.summary()
        cumulative.merge(shard)
    return cumulative.summary()


def best_with_result(runs: int, function) -> tuple[object, float]:
    """The result of `function` and the fastest of `runs` timed calls, in seconds."""
    result, fastest = None, float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        result = function()
        fastest = min(fastest, time.perf_counter() - started)
    return result, fastest


def lexical_benchmark() -> None:
    answers = [json.loads(line)["answer"] for line in GSM8K.read_text().splitlines()]
    rows = (answers * (ROWS // len(answers) + 1))[:ROWS]
    array = pa.array(rows, pa.large_string())
    total_bytes = sum(len(row.encode()) for row in rows)
    set_threads(1)
    for warm in (lambda: LexicalStats().update(array[:100]), lambda: structure_counts(array[:100])):
        warm()  # compile, or load the cached kernels
    filter_novel(array[:100], KeyTable(), NOVELTY_THRESHOLD, NOVELTY_N)

    def lexical(compression: bool = True) -> tuple[LexicalStats, dict[str, object]]:
        stats = LexicalStats(compression=compression)
        stats.update(array)
        return stats, stats.summary()

    joined = join_rows(as_text_buffers(array))
    (stats, ours), seconds_lexical = best_with_result(3, lexical)
    seconds = {
        "lexical_synthkiln": seconds_lexical,
        "lexical_without_compression_synthkiln": best_of(3, lambda: lexical(compression=False)),
        "lexical_in_1000_row_shards_merged_synthkiln": best_of(3, lambda: streamed_in_shards(array)),
        "structure_synthkiln": best_of(3, lambda: structure_counts(array)),
        "novelty_synthkiln": best_of(
            3, lambda: filter_novel(array, KeyTable(), NOVELTY_THRESHOLD, NOVELTY_N)
        ),
        "zlib_level_6_alone": best_of(3, lambda: zlib.compress(joined, 6)),
    }
    # The Python side takes ~30 s a round: best of two.
    theirs, seconds["lexical_python"] = best_with_result(2, lambda: python_lexical(rows))
    seconds["lexical_without_compression_python"] = best_of(
        2, lambda: python_lexical(rows, compression=False)
    )
    python_labels, seconds["structure_python"] = best_with_result(
        2, lambda: Counter(map(python_structure, rows))
    )
    python_kept, seconds["novelty_python"] = best_with_result(2, lambda: python_novelty_filter(rows))

    shards = streamed_in_shards(array)
    our_structure = structure_counts(array)
    _, our_kept = filter_novel(array, KeyTable(), NOVELTY_THRESHOLD, NOVELTY_N)
    agreement = {
        "lexical": all(ours[key] == theirs[key] for key in theirs if key != "ngram_entropy_2")
        and math.isclose(ours["ngram_entropy_2"], theirs["ngram_entropy_2"], rel_tol=1e-9),
        "shards_merged_vs_one_update": all(
            shards[key] == ours[key]
            for key in ("distinct_1", "distinct_2", "distinct_3", "opening_concentration")
        ),
        "structure": our_structure == {label: python_labels.get(label, 0) for label in STRUCTURES},
        "novelty": our_kept.tolist() == python_kept,
    }
    table_bytes = sum(table.slots.nbytes for table in stats.ngrams)
    distinct = sum(len(table) for table in stats.ngrams)
    per_100k = ROWS / 100_000
    results = {
        name: {
            "seconds_per_100k_rows": round(value / per_100k, 4),
            "MB_per_s": round(total_bytes / value / 1e6, 1),
        }
        for name, value in seconds.items()
    }
    ratios = {
        job: round(seconds[f"{job}_python"] / seconds[f"{job}_synthkiln"], 1)
        for job in ("lexical", "lexical_without_compression", "structure", "novelty")
    }
    save_report(
        "diversity_cpu",
        {
            "benchmark": "diversity",
            "rows": ROWS,
            "bytes": total_bytes,
            "numba_threads": 1,
            "results": results,
            "ratios_python_over_synthkiln": ratios,
            "agreement": agreement,
            "metrics": {key: value for key, value in ours.items() if key != "top_openings"},
            "top_opening": ours["top_openings"][0],
            "structure": our_structure,
            "novelty_kept": int(our_kept.sum()),
            "memory": {
                "distinct_ngrams_1_2_3": distinct,
                "ngram_table_bytes": table_bytes,
                "bytes_per_distinct_ngram": round(table_bytes / distinct, 1),
            },
        },
    )


QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.toml"
PIPELINE_CASES = {
    "off": {"diversity.enabled": "false"},
    "on": {},
    "steered": {"diversity.min_novelty": "0.1", "diversity.steering.enabled": "true"},
}


def pipeline_benchmark() -> None:
    from synthkiln.engine import Pipeline
    from synthkiln.engine.config import load_recipe
    from synthkiln.engine.embeddings import embed
    from synthkiln.engine.teachers import build_teachers

    base = load_recipe(QUICKSTART)
    teacher = build_teachers(base.teachers)[0]
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for position, case in enumerate(["off", "on", "steered"] * 2):
            overrides = [f"{key}={value}" for key, value in PIPELINE_CASES[case].items()]
            recipe = load_recipe(QUICKSTART, overrides)
            with Pipeline(recipe, teachers=[teacher]) as pipeline:
                started = time.perf_counter()
                manifest = pipeline.run(Path(scratch) / f"{position}-{case}", progress=False)
                wall = time.perf_counter() - started
            tokens = manifest["tokens"]["completion"]
            runs.append(
                {
                    "case": case,
                    "wall_seconds": round(wall, 2),
                    "completion_tokens": tokens,
                    "seconds_per_1k_tokens": round(1000 * wall / tokens, 3),
                    "accepted": manifest["funnel"]["accepted"],
                    "steering_decisions": len((manifest.get("steering") or {}).get("decisions", [])),
                }
            )
            print(runs[-1], file=sys.stderr)
    teacher.close()
    best = {
        case: min(r["seconds_per_1k_tokens"] for r in runs if r["case"] == case) for case in PIPELINE_CASES
    }
    overhead = {case: round(best[case] / best["off"] - 1, 4) for case in ("on", "steered")}
    answers = [json.loads(line)["answer"] for line in GSM8K.read_text().splitlines()][:512]
    embed(answers[:64])  # load the model
    embedding_seconds = best_of(2, lambda: embed(answers))
    save_report(
        "diversity_pipeline_cpu",
        {
            "benchmark": "diversity_pipeline",
            "recipe": "examples/quickstart.toml (as shipped)",
            "runs": runs,
            "overhead_vs_off": overhead,
            "target_overhead": 0.05,
            "minilm_rows_per_second": round(len(answers) / embedding_seconds, 1),
            "minilm_rows": len(answers),
        },
    )


if __name__ == "__main__":
    parts = sys.argv[1:] or ["lexical", "pipeline"]
    if "lexical" in parts:
        lexical_benchmark()
    if "pipeline" in parts:
        pipeline_benchmark()
