"""Diversity measured on a run's commits, resumed exactly, flagged, novelty rejection, and the
`synthkiln diversity` command on real human data and on a planted monotone set.

Expected figures are worked out here in plain Python on texts whose normalisation is the identity
(lower-case words separated by single spaces), independently of the kernels.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synthkiln.engine import Pipeline
from synthkiln.engine.cli import format_funnel, main
from tests.conftest import shared_benchmark
from tests.engine.scripted import ScriptedTeacher

WORDS = [f"w{i:02d}" for i in range(12)]
# Answers of plain lower-case words: the kernels' normalisation leaves them as they are.
VOCABULARY = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "oscar",
    "papa",
]
SCRIPT = {
    word: [" ".join(VOCABULARY[(i + j) % 15] for j in range(8)) + f" {word} first",
           " ".join(VOCABULARY[(3 * i + j) % 15] for j in range(6)) + f" {word} second"]
    for i, word in enumerate(WORDS)
}  # fmt: skip


def recipe(tmp_path: Path, **diversity: object) -> dict:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": f"Write {word}."}) + "\n" for word in WORDS))
    return {
        "name": "diverse",
        "seeds": {"path": str(seeds)},
        "task": {"kind": "instruction"},
        "sampling": {"temperature": 0, "max_tokens": 8},
        "filters": {"unterminated": False, "refusal": False, "min_words": 1},
        "generation": {"batch_size": 3, "samples_per_prompt": 2},
        "output": {"shard_rows": 5},
        "diversity": {"embeddings": False, **diversity},
    }


def distinct(texts: list[str], n: int) -> float:
    grams = [
        tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)
    ]
    return len(set(grams)) / len(grams)


def trigrams(text: str) -> list[tuple[str, ...]]:
    words = text.split()
    return [tuple(words[i : i + 3]) for i in range(len(words) - 2)]


def committed(out: Path) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    return [
        row for shard in manifest["shards"]["data"] for row in pq.read_table(out / shard["path"]).to_pylist()
    ]


def test_each_commit_is_measured_and_the_cumulative_figures_are_the_datasets(tmp_path: Path) -> None:
    with Pipeline.from_recipe(recipe(tmp_path), teachers=[ScriptedTeacher(SCRIPT)]) as pipeline:
        manifest = pipeline.run(tmp_path / "out", progress=False)
    diversity = manifest["diversity"]
    responses = [row["response"] for row in committed(tmp_path / "out")]
    assert len(responses) == 24
    assert len(diversity["shards"]) == len(manifest["shards"]["data"]) > 1
    assert sum(shard["rows"] for shard in diversity["shards"]) == 24
    cumulative = diversity["cumulative"]
    for n in (1, 2, 3):
        assert cumulative[f"distinct_{n}"] == pytest.approx(distinct(responses, n), abs=1e-4)
    openings = Counter(" ".join(t.split()[:5]) for t in responses)
    assert cumulative["opening_concentration"] == pytest.approx(max(openings.values()) / 24, abs=1e-4)
    assert cumulative["distributions"]["structure"] == {"prose": 24}
    assert cumulative["near_duplicate_rate"] == 0.0  # dedup on, nothing near-duplicated
    assert "embedding_spread" not in cumulative  # diversity.embeddings = false


def test_a_resumed_run_measures_what_a_clean_run_measures(tmp_path: Path) -> None:
    config = recipe(tmp_path)
    with Pipeline.from_recipe(config, teachers=[ScriptedTeacher(SCRIPT)]) as pipeline:
        clean = pipeline.run(tmp_path / "clean", progress=False)
    with Pipeline.from_recipe(config, teachers=[ScriptedTeacher(SCRIPT)]) as pipeline:
        pipeline.run(tmp_path / "resumed", limit=7, progress=False)
    with Pipeline.from_recipe(config, teachers=[ScriptedTeacher(SCRIPT)]) as pipeline:
        resumed = pipeline.run(tmp_path / "resumed", progress=False)
    assert resumed["funnel"]["accepted"] == clean["funnel"]["accepted"] == 24
    resumed_figures = {
        k: v for k, v in resumed["diversity"]["cumulative"].items() if k != "compression_ratio"
    }
    clean_figures = {k: v for k, v in clean["diversity"]["cumulative"].items() if k != "compression_ratio"}
    assert resumed_figures == clean_figures  # zlib's ratio depends on how rows were cut into shards


def test_a_concentrated_opening_is_flagged_in_the_manifest_summary_and_card(tmp_path: Path) -> None:
    same_start = {word: [f"as an ai model i think {word} {k}" for k in ("one", "two")] for word in WORDS}
    config = recipe(tmp_path, max_share={"opening": 0.5, "min_rows": 10})
    config["dedup"] = {"enabled": False}
    with Pipeline.from_recipe(config, teachers=[ScriptedTeacher(same_start)]) as pipeline:
        manifest = pipeline.run(tmp_path / "out", progress=False)
    opening, ngram = manifest["diversity"]["cumulative"]["flags"]
    assert opening == {"kind": "opening", "share": 1.0, "max_share": 0.5, "examples": ["as an ai model i"]}
    # Each row's 7 bigrams start with the same 5 ("as an" ... "i think"): each is 1/7 of all bigrams.
    assert ngram == {"kind": "ngram", "share": round(1 / 7, 4), "max_share": 0.05, "examples": []}
    assert manifest["diversity"]["cumulative"]["near_duplicate_rate"] is None  # dedup off: not measured
    assert "flag: opening concentrated, 100.0% of rows over the 50% limit: 'as an ai model i'" in "\n".join(
        format_funnel(manifest).splitlines()
    )
    card = (tmp_path / "out" / "README.md").read_text()
    assert "**Concentrated opening**: 100.0% of rows (limit 50%), e.g. `as an ai model i`" in card


STITCHED = {
    "w00": ["the quick brown fox jumps over the lazy dog", "x"],
    "w01": ["a stitch in time saves nine lives they say", "x"],
    # Phrases of the two rows above, none of them similar to either as a whole.
    "w02": ["the quick brown fox jumps a stitch in time saves nine", "x"],
    "w03": ["completely fresh words about ocean tides and lunar cycles", "x"],
}


def test_a_row_stitched_from_seen_phrases_is_rejected_for_low_novelty(tmp_path: Path) -> None:
    config = recipe(tmp_path, min_novelty=0.3)
    config["seeds"]["path"] = str(tmp_path / "stitched.jsonl")
    Path(config["seeds"]["path"]).write_text(
        "".join(json.dumps({"instruction": f"Write {w}."}) + "\n" for w in STITCHED)
    )
    config["generation"]["samples_per_prompt"] = 1
    with Pipeline.from_recipe(config, teachers=[ScriptedTeacher(STITCHED)]) as pipeline:
        manifest = pipeline.run(tmp_path / "out", progress=False)
    assert manifest["funnel"]["rejected"] == {"novelty": {"low-novelty": 1}}
    (rejected,) = pq.read_table(tmp_path / "out" / "rejected").to_pylist()
    assert rejected["response"] == STITCHED["w02"][0]
    seen = {gram for w in ("w00", "w01") for gram in trigrams(STITCHED[w][0])}
    stitched = trigrams(STITCHED["w02"][0])
    assert len(stitched) == 9
    novelty = sum(gram not in seen for gram in stitched) / len(stitched)  # "fox jumps a", "jumps a stitch"
    assert rejected["detail"] == f"novelty {novelty:.3f} below 0.3"
    assert sorted(row["response"] for row in committed(tmp_path / "out")) == sorted(
        STITCHED[w][0] for w in ("w00", "w01", "w03")
    )


def test_novelty_is_restored_on_resume(tmp_path: Path) -> None:
    config = recipe(tmp_path, min_novelty=0.3)
    config["seeds"]["path"] = str(tmp_path / "stitched.jsonl")
    Path(config["seeds"]["path"]).write_text(
        "".join(json.dumps({"instruction": f"Write {w}."}) + "\n" for w in STITCHED)
    )
    config["generation"].update(samples_per_prompt=1, batch_size=1)
    with Pipeline.from_recipe(config, teachers=[ScriptedTeacher(STITCHED)]) as pipeline:
        pipeline.run(tmp_path / "out", limit=2, progress=False)
    with Pipeline.from_recipe(config, teachers=[ScriptedTeacher(STITCHED)]) as pipeline:
        manifest = pipeline.run(tmp_path / "out", progress=False)
    # The stitched row comes after the resume: only the restored n-grams can reject it.
    assert manifest["funnel"]["rejected"] == {"novelty": {"low-novelty": 1}}


def test_the_command_scores_a_monotone_set_below_human_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gsm8k = shared_benchmark("gsm8k") / "train.jsonl"
    human = tmp_path / "human.jsonl"
    human.write_text("".join(line + "\n" for line in gsm8k.read_text().splitlines()[:400]))
    monotone = tmp_path / "monotone.jsonl"
    sentences = [
        "The answer is 42 because we add the numbers together.",
        "The answer is 42 because we multiply the numbers together.",
        "The answer is 42 because we subtract the numbers together.",
        "The answer is 42 because we divide the numbers together.",
    ]
    monotone.write_text("".join(json.dumps({"answer": sentences[i % 4]}) + "\n" for i in range(400)))
    figures = {}
    for name, path in (("human", human), ("monotone", monotone)):
        assert main(["diversity", str(path), "--text-field", "answer", "--sample-size", "200", "--json"]) == 0
        figures[name] = json.loads(capsys.readouterr().out)
    human_figures, mono = figures["human"], figures["monotone"]
    assert human_figures["rows"] == mono["rows"] == 400
    for lower in ("distinct_1", "distinct_2", "distinct_3", "ngram_entropy_2", "compression_ratio",
                  "embedding_spread", "vendi_score", "cluster_coverage"):  # fmt: skip
        assert mono[lower] < 0.5 * human_figures[lower], lower
    assert mono["opening_concentration"] == 1.0 > 5 * human_figures["opening_concentration"]
    assert mono["near_duplicate_rate"] is None  # a corpus: no dedup stage measured it


def test_the_command_names_a_missing_text_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"text": "hello"}) + "\n")
    assert main(["diversity", str(path)]) == 2
    assert capsys.readouterr().err == f"error: {path}: no field 'response' (fields: text); use --text-field\n"


def test_the_embedding_figures_cover_the_sample_when_asked(tmp_path: Path) -> None:
    config = recipe(tmp_path, embeddings=True, sample_size=10)
    with Pipeline.from_recipe(config, teachers=[ScriptedTeacher(SCRIPT)]) as pipeline:
        manifest = pipeline.run(tmp_path / "out", progress=False)
    cumulative = manifest["diversity"]["cumulative"]
    assert cumulative["sample_size"] == 10  # a reservoir of 10 of the 24 accepted rows
    assert 0 < cumulative["embedding_spread"] < 1 and 1 < cumulative["vendi_score"] <= 10
    # Every commit measured them, each on the sample as it stood.
    shards = manifest["diversity"]["shards"]
    assert len(shards) > 1 and cumulative["rows"] == 24
