from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synthkiln.engine.config import BenchmarkConfig, DecontaminateConfig
from synthkiln.engine.corpus import run_corpus_command
from synthkiln.engine.corpus.decontaminate import Decontaminate as DecontaminateCorpus
from synthkiln.engine.errors import SynthkilnError
from synthkiln.engine.stages import decontam
from synthkiln.engine.stages.decontam import ContaminationIndex, Decontaminate
from tests.conftest import REPO, shared_benchmark, synthkiln_command


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch) -> None:
    """Every test builds its indexes afresh (the on-disk cache is tested on purpose below)."""
    monkeypatch.setenv("SYNTHKILN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setattr(decontam, "_LOADED", {})


def index_of(*benchmarks: BenchmarkConfig, **parameters) -> ContaminationIndex:
    return ContaminationIndex.for_config(DecontaminateConfig(benchmarks=list(benchmarks), **parameters))


def gsm8k_test(gsm8k_dir: Path) -> BenchmarkConfig:
    return BenchmarkConfig(name="gsm8k", path=str(gsm8k_dir / "test.jsonl"))


@pytest.fixture(scope="module")
def humaneval_path() -> Path:
    return shared_benchmark("humaneval/HumanEval.jsonl.gz")


# -- measured quality: planted benchmark items ------------------------------------------------------


def recased(text: str, rng: random.Random) -> str:
    """Case, punctuation and whitespace changed; the words stay."""
    text = text.upper() if rng.random() < 0.5 else text.swapcase()
    text = text.replace(",", " ;").replace(".", " !").replace("?", "").replace("(", " ( ").replace(":", " :")
    return re.sub(r"[ \n]", lambda m: rng.choice(["  ", "\n", "\t"]), text)


def two_words_replaced(text: str, rng: random.Random, vocabulary: list[str]) -> str:
    tokens = text.split(" ")
    for i in rng.sample([i for i, t in enumerate(tokens) if t.strip()], 2):
        tokens[i] = rng.choice(vocabulary)
    return " ".join(tokens)


def recall(index: ContaminationIndex, documents: list[str], benchmark: str) -> float:
    matches = index.find(pa.array(documents))
    return sum(m is not None and m.benchmark == benchmark for m in matches) / len(documents)


def test_gsm8k_questions_planted_in_train_text(gsm8k_dir: Path) -> None:
    rng = random.Random(0)
    test = [json.loads(line) for line in (gsm8k_dir / "test.jsonl").read_text().splitlines()]
    train = [json.loads(line) for line in (gsm8k_dir / "train.jsonl").read_text().splitlines()]
    vocabulary = [w for row in train[:300] for w in row["question"].split() if w.isalpha()]
    planted = rng.sample(test, 300)
    questions = [row["question"] for row in planted]
    kinds = {
        "verbatim": questions,
        "recased": [recased(q, rng) for q in questions],
        "embedded": [
            f"{t['question']}\n\nHere is a similar problem: {q}\nLet's solve it.\n{t['answer']}"
            for q, t in zip(questions, rng.sample(train, len(questions)), strict=True)
        ],
        "two words replaced": [two_words_replaced(q, rng, vocabulary) for q in questions],
    }
    clean = [f"{row['question']}\n{row['answer']}" for row in rng.sample(train, 2000)]
    index = index_of(gsm8k_test(gsm8k_dir))
    found = {kind: recall(index, documents, "gsm8k") for kind, documents in kinds.items()}
    assert found["verbatim"] == found["recased"] == found["embedded"] == 1.0, found
    assert found["two words replaced"] >= 0.9, found
    # the right item is named, with the matching span
    matches = index.find(pa.array(kinds["embedded"]))
    assert all(m.item_id == str(test.index(row)) for m, row in zip(matches, planted, strict=True))
    assert all(m.field == "question" and m.method == "ngram" for m in matches)
    assert matches[0].span.lower().split()[:3] == planted[0]["question"].lower().split()[:3]
    false_positives = sum(m is not None for m in index.find(pa.array(clean))) / len(clean)
    assert false_positives <= 0.005


def test_humaneval_prompts_planted_in_code_answers(
    humaneval_path: Path, humaneval_problems: list[dict]
) -> None:
    rng = random.Random(1)
    problems = humaneval_problems

    def answer(prompt: str, problem: dict) -> str:
        return (
            f"Sure! Here is a solution:\n```python\n{prompt}{problem['canonical_solution']}```\nIt is linear."
        )

    names = ["value", "items", "result", "count", "total", "index", "number", "text"]
    kinds = {
        "verbatim": [p["prompt"] for p in problems],
        "recased": [recased(p["prompt"], rng) for p in problems],
        "embedded": [answer(p["prompt"], p) for p in problems],
        "two words replaced": [answer(two_words_replaced(p["prompt"], rng, names), p) for p in problems],
    }
    # Clean code answers: real Python source (the standard library's own modules), never HumanEval.
    sources = sorted(Path(json.__file__).parents[1].glob("*.py"))
    functions = [
        chunk
        for path in sources
        for chunk in re.split(r"\n(?=def |class )", path.read_text(errors="replace"))
        if len(chunk) > 200
    ]
    clean = [f"Here is the code:\n```python\n{chunk[:3000]}\n```" for chunk in rng.sample(functions, 2000)]
    index = index_of(BenchmarkConfig(name="humaneval", path=str(humaneval_path)))
    found = {kind: recall(index, documents, "humaneval") for kind, documents in kinds.items()}
    assert found["verbatim"] == found["recased"] == found["embedded"] == 1.0, found
    assert found["two words replaced"] >= 0.9, found
    false_positives = sum(m is not None for m in index.find(pa.array(clean))) / len(clean)
    assert false_positives <= 0.005


def test_minhash_containment_catches_edits_that_break_every_ngram(gsm8k_dir: Path) -> None:
    test = [json.loads(line) for line in (gsm8k_dir / "test.jsonl").read_text().splitlines()]
    long_questions = [row["question"] for row in test if len(row["question"].split()) >= 60][:100]
    # a word replaced every 10 words: 4 of every 10 word 4-grams broken (containment ~0.6)
    edited = [" ".join("X" if i % 10 == 5 else w for i, w in enumerate(q.split())) for q in long_questions]
    documents = [f"Consider this. {q} That is all." for q in edited]
    exact_only = index_of(gsm8k_test(gsm8k_dir), fuzzy=False).find(pa.array(documents))
    no_ngram_left = [d for d, m in zip(documents, exact_only, strict=True) if m is None]
    assert len(no_ngram_left) >= 80  # numbers split into several words can leave a 13-gram whole
    matches = index_of(gsm8k_test(gsm8k_dir)).find(pa.array(no_ngram_left))
    # A 32-hash sketch estimates 0.6 with a standard deviation of ~0.09: some items fall under the
    # 0.5 threshold by chance, so this asserts recall and the estimate's mean, not every item.
    found = [m for m in matches if m is not None and m.score >= 0.5]
    assert len(found) / len(matches) >= 0.9
    assert all(m.method == "minhash" for m in found)
    assert abs(np.mean([m.score for m in matches if m is not None]) - 0.6) <= 0.08


# -- rules -----------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_coverage_rule_common_ngrams_and_short_items(tmp_path: Path) -> None:
    shared = "please show every step of your reasoning and give the final answer at the end"
    long_item = (
        "a farmer has seventeen sheep and all but nine run away through the broken gate one night " * 2
    )
    rows = [{"id": f"t{i}", "text": f"question {i} about apples and pears. {shared}"} for i in range(12)]
    rows += [
        {"id": "long", "text": long_item},
        {"id": "short", "text": "name the largest ocean"},  # 4 words: too short to check
        {"id": "six", "text": "what colour is the summer sky"},  # 6 words: matched whole
    ]
    path = write_jsonl(tmp_path / "bench.jsonl", rows)
    benchmark = BenchmarkConfig(name="mine", path=str(path), id_field="id")
    index = index_of(benchmark, fuzzy=False)
    assert index.benchmarks[0]["too_short"] == 1 and index.benchmarks[0]["indexed"] == 14
    part_of_long = " ".join(long_item.split()[:14])
    found = index.find(
        pa.array(
            [f"tell me: {shared}", part_of_long, "WHAT colour is the summer sky?", "name the largest ocean"]
        )
    )
    assert found[0] is None  # shared by 12 items > max_item_frequency: ignored
    assert found[1] is not None and found[1].item_id == "long" and found[1].score < 0.2
    assert found[2] is not None and found[2].item_id == "six" and found[2].score == 1.0
    assert found[3] is None
    covered = index_of(benchmark, fuzzy=False, min_coverage=0.5).find(pa.array([part_of_long, long_item]))
    assert covered[0] is None and covered[1] is not None
    frequent = index_of(benchmark, fuzzy=False, max_item_frequency=20).find(pa.array([f"tell me: {shared}"]))
    assert frequent[0] is not None


def test_index_is_cached_on_disk_by_file_hash(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "bench.jsonl", [{"text": "the secret benchmark sentence that nobody should train on ever"}]
    )
    benchmark = BenchmarkConfig(name="mine", path=str(path))
    index_of(benchmark)
    cached = list((decontam.cache_dir() / "decontam").glob("*.npz"))
    assert len(cached) == 1
    decontam._LOADED.clear()
    loaded = index_of(benchmark)
    assert loaded.find(pa.array(["so: the secret benchmark sentence that nobody should train on ever!"]))[0]
    write_jsonl(path, [{"text": "a different sentence entirely now stands in this benchmark file"}])
    decontam._LOADED.clear()
    changed = index_of(benchmark)
    assert len(list((decontam.cache_dir() / "decontam").glob("*.npz"))) == 2
    assert (
        changed.find(pa.array(["the secret benchmark sentence that nobody should train on ever"]))[0] is None
    )
    assert changed.benchmarks[0]["sha256"] != loaded.benchmarks[0]["sha256"]


def test_benchmarks_fail_closed(tmp_path: Path) -> None:
    with pytest.raises(SynthkilnError, match=r"missing\.jsonl: no such file"):
        index_of(BenchmarkConfig(name="mine", path=str(tmp_path / "missing.jsonl")))
    with pytest.raises(SynthkilnError, match="not a built-in benchmark"):
        index_of(BenchmarkConfig(name="mystery"))
    path = write_jsonl(tmp_path / "b.jsonl", [{"question": "what is two plus two then"}])
    with pytest.raises(SynthkilnError, match=r"b\.jsonl has no field 'prompt'"):
        index_of(BenchmarkConfig(name="mine", path=str(path), fields=["prompt"]))
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(SynthkilnError, match=r"bad\.jsonl: line 2: invalid JSON"):
        index_of(BenchmarkConfig(name="mine", path=str(tmp_path / "bad.jsonl")))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SynthkilnError, match="empty"):
        index_of(BenchmarkConfig(name="mine", path=str(tmp_path / "empty.jsonl")))


def test_builtin_benchmark_without_a_file_needs_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    # Whether or not this machine has `datasets` and reaches the hub, both failures are staged here: the
    # run must stop naming the benchmark and the way out, never skip gsm8k.
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    with pytest.raises(SynthkilnError, match=r"benchmark 'gsm8k' .* needs `datasets`: .* gsm8k=PATH"):
        index_of(BenchmarkConfig(name="gsm8k"))

    def unreachable(*args: object, **kwargs: object) -> None:
        raise ConnectionError("hub unreachable")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=unreachable))
    with pytest.raises(
        SynthkilnError, match=r"benchmark 'gsm8k': cannot load .*ConnectionError: hub unreachable"
    ):
        index_of(BenchmarkConfig(name="gsm8k"))


# -- the stage and the corpus command ---------------------------------------------------------------


def test_stage_rejects_contaminated_rows_with_the_match(gsm8k_dir: Path) -> None:
    question = json.loads((gsm8k_dir / "test.jsonl").read_text().splitlines()[7])["question"]
    stage = Decontaminate(index_of(gsm8k_test(gsm8k_dir)), text_field="response")
    batch = pa.RecordBatch.from_pylist(
        [
            {"id": "a", "response": "A clean answer about nothing in particular."},
            {"id": "b", "response": question},
            {"id": "c", "response": None},
        ]
    )
    kept, rejected = stage.process(batch)
    assert kept.column("id").to_pylist() == ["a", "c"]
    assert kept.column("contamination").null_count == 2
    row = rejected.to_pylist()[0]
    assert row["reason"] == "contaminated:gsm8k" and row["stage"] == "decontaminate"
    assert row["contamination"]["item_id"] == "7" and row["contamination"]["method"] == "ngram"
    assert "gsm8k item 7 (question)" in row["detail"]
    assert stage.benchmarks[0]["sha256"] and stage.benchmarks[0]["indexed"] == 2638


def test_cli_writes_data_rejected_and_per_benchmark_summary(
    tmp_path: Path, gsm8k_dir: Path, humaneval_path: Path, humaneval_problems: list[dict]
) -> None:
    test = [json.loads(line) for line in (gsm8k_dir / "test.jsonl").read_text().splitlines()]
    problems = humaneval_problems
    train = [json.loads(line) for line in (gsm8k_dir / "train.jsonl").read_text().splitlines()[:300]]
    rows = [{"text": f"{r['question']} {r['answer']}", "n": i} for i, r in enumerate(train)]
    rows[10]["text"] += " " + test[3]["question"]
    rows[20]["text"] = "```python\n" + problems[5]["prompt"] + "```"
    rows[30]["text"] = None
    write_jsonl(tmp_path / "corpus.jsonl", rows[:150])
    pq.write_table(pa.Table.from_pylist(rows[150:]), tmp_path / "more.parquet")
    rows_of_more = len(rows) - 150
    out = tmp_path / "out"
    command = [*synthkiln_command(), "decontaminate", str(tmp_path / "corpus.jsonl"), str(tmp_path / "more.parquet"),
               "--out", str(out), "--benchmark", f"gsm8k={gsm8k_dir / 'test.jsonl'}",
               "--benchmark", f"he={humaneval_path}", "--benchmark-fields", "prompt", "--quiet"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "gsm8k: 2638 items checked, 1 hit, 1 rows removed" in result.stdout
    assert "he: 164 items checked, 1 hit, 1 rows removed" in result.stdout
    kept = pq.read_table(out / "data")
    assert kept.num_rows == 150 + rows_of_more - 3
    rejected = pq.read_table(out / "rejected").to_pylist()
    by_reason = {r["reason"]: r for r in rejected}
    assert set(by_reason) == {"contaminated:gsm8k", "contaminated:he", "null text"}
    assert (
        by_reason["contaminated:gsm8k"]["n"] == 10
        and by_reason["contaminated:gsm8k"]["contamination"]["item_id"] == "3"
    )
    assert (
        by_reason["contaminated:he"]["contamination"]["item_id"] == "5"
    )  # no id field given: the row number
    manifest = json.loads((out / "manifest.json").read_text())
    assert [b["name"] for b in manifest["decontaminated_against"]] == ["gsm8k", "he"]
    assert manifest["decontaminated_against"][1]["fields"] == ["prompt"]
    assert len(manifest["decontaminated_against"][0]["sha256"]) == 64
    assert manifest["removed"] == 2 and manifest["quarantined"] == 1
    # a rerun into the same directory replaces the output; a foreign directory is refused
    assert subprocess.run(command, capture_output=True, cwd=REPO).returncode == 0
    assert pq.read_table(out / "data").num_rows == kept.num_rows
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    refused = subprocess.run(
        [*command[:6], "--out", str(foreign), *command[8:]], capture_output=True, text=True, cwd=REPO
    )
    assert refused.returncode == 2 and "not empty" in refused.stderr
    assert (foreign / "notes.txt").read_text() == "mine"


def test_cli_names_bad_input_before_writing(tmp_path: Path, gsm8k_dir: Path) -> None:
    write_jsonl(tmp_path / "corpus.jsonl", [{"body": "no text field here"}])
    out = tmp_path / "out"
    result = subprocess.run(
        [*synthkiln_command(), "decontaminate", str(tmp_path / "corpus.jsonl"), "--out", str(out),
         "--benchmark", f"gsm8k={gsm8k_dir / 'test.jsonl'}", "--quiet"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 2
    assert "corpus.jsonl: no field 'text' (fields: body); use --text-field" in result.stderr
    assert not (out / "manifest.json").exists()
    usage = subprocess.run([*synthkiln_command(), "decontaminate", "x.jsonl", "--out", str(out),
                            "--benchmark-fields", "a", "--benchmark", "gsm8k"], capture_output=True, text=True)  # fmt: skip
    assert usage.returncode == 2 and "give --benchmark first" in usage.stderr


def test_corpus_function_reports_counts(tmp_path: Path, gsm8k_dir: Path) -> None:
    question = json.loads((gsm8k_dir / "test.jsonl").read_text().splitlines()[0])["question"]
    write_jsonl(tmp_path / "c.jsonl", [{"text": question}, {"text": "nothing to see here at all"}])
    config = DecontaminateConfig(benchmarks=[gsm8k_test(gsm8k_dir)])
    manifest = run_corpus_command(
        DecontaminateCorpus(config), [tmp_path / "c.jsonl"], tmp_path / "out", progress=False
    )
    assert (manifest["rows"], manifest["kept"], manifest["removed"]) == (2, 1, 1)
    assert manifest["decontaminated_against"][0]["items_hit"] == 1
    assert manifest["decontaminated_against"][0]["rows_removed"] == 1
    rejected = pq.read_table(tmp_path / "out" / manifest["shards"]["rejected"][0]["path"])
    assert " match of gsm8k item " in rejected.column("detail").to_pylist()[0]


@pytest.mark.slow
def test_generated_samples_matching_a_benchmark_are_rejected(tmp_path: Path, hf_teacher) -> None:
    from synthkiln.engine import Pipeline
    from tests.conftest import QUICK_INSTRUCTIONS

    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"instruction": text} for text in QUICK_INSTRUCTIONS])
    recipe = {
        "name": "decontam-samples",
        "seeds": {"path": str(seeds)},
        "task": {"kind": "instruction"},
        "sampling": {"temperature": 0, "max_tokens": 24},
        "filters": {"unterminated": False},
        "generation": {"batch_size": 4},
    }
    with Pipeline.from_recipe(recipe, teachers=[hf_teacher]) as pipeline:
        pipeline.run(tmp_path / "first", progress=False)
    responses = pq.read_table(tmp_path / "first" / "data").column("response").to_pylist()
    # A "benchmark" made of two of the teacher's own greedy answers: regenerating must hit it.
    benchmark = write_jsonl(tmp_path / "answers.jsonl", [{"text": r} for r in responses[:2]])
    recipe["decontaminate"] = {"benchmarks": [{"name": "own", "path": str(benchmark)}], "seeds": False}
    with Pipeline.from_recipe(recipe, teachers=[hf_teacher]) as pipeline:
        manifest = pipeline.run(tmp_path / "second", progress=False)
    kept = pq.read_table(tmp_path / "second" / "data").column("response").to_pylist()
    rejected = pq.read_table(tmp_path / "second" / "rejected").to_pylist()
    assert sorted(kept) == sorted(responses[2:])
    assert sorted(r["response"] for r in rejected) == sorted(responses[:2])
    assert {(r["stage"], r["reason"]) for r in rejected} == {("decontaminate", "contaminated:own")}
    assert all(r["contamination"]["score"] == 1.0 for r in rejected)
    assert manifest["funnel"]["rejected"] == {"decontaminate": {"contaminated:own": 2}}


def test_hits_are_ordered_as_lexsort_orders_them() -> None:
    from synthkiln.engine.stages.decontam import _order_by

    rng = np.random.default_rng(3)
    small = [rng.integers(0, n, 50_000) for n in (900, 3000, 400)]  # packed into one 64-bit key
    wide = [rng.integers(0, 2**40, 50_000), small[1], rng.integers(0, 2**30, 50_000)]  # too wide: lexsort
    for keys in (small, wide):
        np.testing.assert_array_equal(_order_by(*keys), np.lexsort(keys[::-1]))
