"""The pipeline end to end on the real embedded model (short generations)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synthkiln.engine import Pipeline
from synthkiln.engine.errors import SeedsError
from synthkiln.engine.schema import ROW_SCHEMA
from tests.conftest import QUICK_INSTRUCTIONS
from tests.engine.scripted import ScriptedTeacher

pytestmark = pytest.mark.slow


def instruction_recipe(seeds: Path, **extra) -> dict:
    recipe = {
        "name": "pipeline-test",
        "seeds": {"path": str(seeds)},
        "task": {"kind": "instruction"},
        "sampling": {"temperature": 0, "max_tokens": 12},
        "filters": {"unterminated": False},
        "generation": {"batch_size": 2},
    }
    for section, values in extra.items():
        recipe[section] = {**recipe.get(section, {}), **values}
    return recipe


def committed_rows(out: Path, folder: str) -> list[dict]:
    """The rows of the shards the manifest lists in `folder` (data or rejected)."""
    shards = json.loads((out / "manifest.json").read_text())["shards"][folder]
    return [row for shard in shards for row in pq.read_table(out / shard["path"]).to_pylist()]


@pytest.fixture
def seeds(tmp_path: Path) -> Path:
    path = tmp_path / "seeds.jsonl"
    lines = [json.dumps({"instruction": text}) for text in QUICK_INSTRUCTIONS]
    lines.insert(2, '{"instruction": broken')  # a bad row in the middle
    lines.append(json.dumps({"question": "no instruction field"}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_run_writes_dataset_and_quarantines_bad_rows(tmp_path: Path, seeds: Path, hf_teacher) -> None:
    with Pipeline.from_recipe(instruction_recipe(seeds), teachers=[hf_teacher]) as pipeline:
        manifest = pipeline.run(tmp_path / "out", progress=False)
    data = pq.read_table(tmp_path / "out" / "data")
    assert data.num_rows == len(QUICK_INSTRUCTIONS)
    assert set(data.column("teacher").to_pylist()) == {"transformers"}
    first = data.to_pylist()[0]
    assert first["messages"][-1] == {"role": "assistant", "content": first["response"]}
    assert first["completion_tokens"] == 12 and first["prompt_tokens"] > 10
    assert first["source"] == "synthetic" and first["template_hash"]
    rejected = pq.read_table(tmp_path / "out" / "rejected").to_pylist()
    details = sorted(r["detail"] for r in rejected)
    assert details[0].startswith("seeds.jsonl line 3: invalid JSON")
    assert details[1] == "seeds.jsonl line 6: field 'instruction' is missing"
    assert manifest["funnel"]["seeds_quarantined"] == 2
    assert manifest["complete"] is True
    assert manifest["teachers"][0]["model"] == "SmolLM2-135M-Instruct"
    assert manifest["seeds"]["sha256"]


def test_stream_yields_arrow_batches_without_writing(tmp_path: Path, seeds: Path, hf_teacher) -> None:
    pipeline = Pipeline.from_recipe(instruction_recipe(seeds), teachers=[hf_teacher])
    batches = list(pipeline.stream(limit=3))
    assert all(isinstance(b, pa.RecordBatch) and b.schema.equals(pipeline.schema) for b in batches)
    assert set(ROW_SCHEMA.names) < set(pipeline.schema.names)  # plus the dedup stage's columns
    assert sum(len(b) for b in batches) in (3, 4)  # stops after the step that reaches the limit
    assert not (tmp_path / "out").exists()


def test_keep_first_and_reference_verification(tmp_path: Path, gsm8k_dir: Path, hf_teacher) -> None:
    recipe = {
        "name": "gsm8k-test",
        "seeds": {"path": str(gsm8k_dir / "train.jsonl"), "limit": 2},
        "task": {"kind": "reasoning"},
        "sampling": {"temperature": 0.8, "max_tokens": 48},
        "filters": {"unterminated": False},
        "generation": {"samples_per_prompt": 3, "keep": "first", "batch_size": 2},
    }
    with Pipeline.from_recipe(recipe, teachers=[hf_teacher]) as pipeline:
        manifest = pipeline.run(tmp_path / "out", progress=False)
    funnel = manifest["funnel"]
    assert funnel["prompts"] == 2 and funnel["samples"] == 6
    rows = committed_rows(tmp_path / "out", "data")  # no data/ at all when every sample was rejected
    rejected = committed_rows(tmp_path / "out", "rejected")
    assert len(rows) + len(rejected) == 6
    assert len({r["prompt_id"] for r in rows}) == len(rows)  # at most one kept sample per prompt
    assert {row["stage"] for row in rejected} <= {"reference", "select", "length", "refusal", "empty"}
    # Kept rows and those the reference check rejected; each prompt's first sample is one of them (SmolLM2
    # gets these wrong: all six are rejected by the check here, so `rows` alone may be empty).
    judged = rows + [row for row in rejected if row["stage"] == "reference"]
    assert len({row["prompt_id"] for row in judged}) == 2
    for row in judged:
        assert row["reference"] is not None
        kept = "stage" not in row
        assert row["verified"] is True if kept else (row["verified"] is False or row["answer"] is None)
    # GSM8K references are the number after "####".
    first_seed = json.loads((gsm8k_dir / "train.jsonl").read_text().splitlines()[0])
    references = {r["reference"] for r in rows + rejected if r["seed_row"] == 1}
    assert references == {first_seed["answer"].rsplit("####", 1)[1].strip()}


def test_generate_verified_batch_for_launchers(hf_teacher) -> None:
    recipe = {
        "name": "api",
        "seeds": {"path": "unused.jsonl"},
        "task": {"kind": "instruction"},
        "sampling": {"temperature": 0.7, "max_tokens": 16},
        "filters": {"unterminated": False},
        "generation": {"keep": "first"},
    }
    with Pipeline.from_recipe(recipe, teachers=[hf_teacher]) as pipeline:
        table = pipeline.generate_verified_batch(QUICK_INSTRUCTIONS[:2], samples_per_prompt=2)
    assert isinstance(table, pa.Table) and table.schema.equals(pipeline.schema)
    assert 1 <= table.num_rows <= 2
    assert set(table.column("seed_source").to_pylist()) == {"<api>"}


def test_several_teachers_share_prompts_by_weight(
    tmp_path: Path, seeds: Path, embedded_model_dir: Path
) -> None:
    recipe = instruction_recipe(seeds, sampling={"max_tokens": 4})
    recipe["teachers"] = [
        {"backend": "transformers", "name": "big-share", "weight": 3, "model": str(embedded_model_dir)},
        {"backend": "transformers", "name": "small-share", "weight": 1, "model": str(embedded_model_dir)},
    ]
    recipe["seeds"]["limit"] = None
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(json.dumps({"instruction": f"Say the number {i}."}) for i in range(24)) + "\n")
    recipe["seeds"]["path"] = str(path)
    recipe["generation"]["batch_size"] = 24
    recipe["guards"] = {"max_teacher_share": 0.6}
    with Pipeline.from_recipe(recipe) as pipeline:
        manifest = pipeline.run(tmp_path / "out", progress=False)
    teachers = pq.read_table(tmp_path / "out" / "data").column("teacher").to_pylist()
    counts = {name: teachers.count(name) for name in ("big-share", "small-share")}
    assert counts["big-share"] > counts["small-share"] > 0
    assert [t["name"] for t in manifest["teachers"]] == ["big-share", "small-share"]
    # Which teacher wrote what share is recorded, and a share past the guard is flagged on the card.
    big = counts["big-share"] / len(teachers)
    assert big > 0.6
    assert manifest["guards"]["teachers"]["big-share"]["share_of_accepted"] == round(big, 4)
    assert [flag["teacher"] for flag in manifest["guards"]["flags"]] == ["big-share"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"wrote {100 * big:.1f}% of the accepted rows" in card
    assert "Flag**: teacher big-share" in card


def test_synthetic_seeds_are_refused_past_the_lineage_guard(tmp_path: Path) -> None:
    synthetic = tmp_path / "synthetic.jsonl"
    synthetic.write_text(
        json.dumps({"instruction": "Say hello.", "lineage_depth": 0}) + "\n"
        + json.dumps({"instruction": "Say hi.", "source": "synthetic"}) + "\n"
    )  # fmt: skip
    recipe = {
        "name": "recursive",
        "seeds": {"path": str(synthetic)},
        "task": {"kind": "instruction"},
        "filters": {"refusal": False, "unterminated": False},
        "dedup": {"enabled": False},  # both rows get the same answer
    }
    teacher = ScriptedTeacher({"Say": ["Hello there, friend."]})
    refusal = r"synthetic.jsonl line 2: the seed row is synthetic \(lineage depth 1\)"
    with (
        Pipeline.from_recipe(recipe, teachers=[teacher]) as pipeline,
        pytest.raises(SeedsError, match=refusal),
    ):
        pipeline.run(tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused").exists() and teacher.asked == []  # refused before anything
    allowed = {**recipe, "guards": {"max_lineage_depth": 2}}
    with Pipeline.from_recipe(allowed, teachers=[teacher]) as pipeline:
        pipeline.run(tmp_path / "allowed", progress=False)
    depths = {r["seed_row"]: r["lineage_depth"] for r in committed_rows(tmp_path / "allowed", "data")}
    assert depths == {1: 1, 2: 2}  # a human seed row makes depth 1, a synthetic one depth 2


def test_prompts_holding_benchmark_items_are_never_generated(
    tmp_path: Path, gsm8k_dir: Path, hf_teacher
) -> None:
    test_questions = [
        json.loads(line)["question"] for line in (gsm8k_dir / "test.jsonl").read_text().splitlines()[:2]
    ]
    seeds = tmp_path / "seeds.jsonl"
    instructions = [
        *QUICK_INSTRUCTIONS[:2],
        test_questions[0],
        QUICK_INSTRUCTIONS[2],
        test_questions[1].upper(),
    ]
    seeds.write_text("".join(json.dumps({"instruction": text}) + "\n" for text in instructions))
    recipe = instruction_recipe(
        seeds, decontaminate={"benchmarks": [{"name": "gsm8k", "path": str(gsm8k_dir / "test.jsonl")}]}
    )
    with Pipeline.from_recipe(recipe, teachers=[hf_teacher]) as pipeline:
        manifest = pipeline.run(tmp_path / "out", progress=False)
    data = pq.read_table(tmp_path / "out" / "data").to_pylist()
    assert sorted(r["seed_row"] for r in data) == [1, 2, 4]  # only clean prompts reached the teacher
    rejected = pq.read_table(tmp_path / "out" / "rejected").to_pylist()
    assert sorted(r["seed_row"] for r in rejected) == [3, 5]
    assert {(r["stage"], r["reason"]) for r in rejected} == {("seeds", "contaminated:gsm8k")}
    assert {r["contamination"]["item_id"] for r in rejected} == {"0", "1"}
    assert all(r["response"] is None for r in rejected)
    assert manifest["funnel"]["samples"] == 3 and manifest["funnel"]["seeds_quarantined"] == 2
    assert manifest["funnel"]["rejected"] == {"seeds": {"contaminated:gsm8k": 2}}
    against = manifest["decontaminated_against"]
    assert [b["name"] for b in against] == ["gsm8k"] and len(against[0]["sha256"]) == 64
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Decontaminated against: **gsm8k**" in card and against[0]["sha256"][:16] in card
    # a rerun resumes: nothing is generated or rejected twice
    with Pipeline.from_recipe(recipe, teachers=[hf_teacher]) as pipeline:
        again = pipeline.run(tmp_path / "out", progress=False)
    assert again["funnel"] == manifest["funnel"]
