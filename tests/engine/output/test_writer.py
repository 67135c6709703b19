from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from synthkiln.engine import Pipeline
from synthkiln.engine.config import recipe_from_dict
from synthkiln.engine.errors import OutputError
from synthkiln.engine.output.writer import DatasetWriter
from synthkiln.engine.schema import ROW_SCHEMA, rejected_schema
from tests.engine.scripted import ScriptedTeacher

RUN_INFO = {
    "teachers": [{"name": "smol", "backend": "transformers", "model": "SmolLM2-135M-Instruct"}],
    "verifiers": ["reference-answer"],
}


def recipe(**output):
    return recipe_from_dict(
        {"name": "round-trip", "seeds": {"path": "s.jsonl"}, "task": {"kind": "reasoning"}, "output": output}
    )


def rows(prefix: str, count: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(
        [
            {
                "id": f"{prefix}{i}",
                "prompt_id": f"{prefix}{i}",
                "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ünïcode ✓"}],
                "response": "ünïcode ✓",
                "verified": True,
                "prompt_tokens": 3,
                "completion_tokens": 5,
                "source": "synthetic",
            }
            for i in range(count)
        ],
        ROW_SCHEMA,
    )


def rejected(prefix: str, count: int, stage: str = "length", reason: str = "too-short") -> pa.RecordBatch:
    table = rows(prefix, count).to_pylist()
    return pa.RecordBatch.from_pylist(
        [{**r, "stage": stage, "reason": reason} for r in table], rejected_schema(ROW_SCHEMA)
    )


def test_round_trip_manifest_and_card(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path / "ds", recipe(shard_rows=4), RUN_INFO)
    writer.add(rows("a", 3), rejected("r", 2), generation_seconds=1.5, device_seconds=1.5)  # 5 rows: commits
    writer.add(rows("b", 2), rejected("s", 1, stage="seeds", reason="bad-seed-row"))
    manifest = writer.close(complete=True)

    data = pq.read_table(tmp_path / "ds" / "data")
    assert data.schema.equals(ROW_SCHEMA)  # nullability and nested types survive
    assert sorted(data.column("id").to_pylist()) == ["a0", "a1", "a2", "b0", "b1"]
    assert data.column("messages").to_pylist()[0][1]["content"] == "ünïcode ✓"
    assert (
        pq.ParquetFile(tmp_path / "ds" / "data" / "part-00000.parquet")
        .metadata.row_group(0)
        .column(0)
        .compression
        == "ZSTD"
    )
    on_disk = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert on_disk == manifest
    funnel = manifest["funnel"]
    assert funnel["accepted"] == 5
    assert funnel["prompts"] == 7 and funnel["samples"] == 7  # the quarantined seed row is neither
    assert funnel["seeds_quarantined"] == 1
    assert funnel["rejected"] == {"length": {"too-short": 2}, "seeds": {"bad-seed-row": 1}}
    assert manifest["tokens"] == {"prompt": 21, "completion": 35}
    assert manifest["complete"] is True
    assert [s["path"] for s in manifest["shards"]["data"]] == [
        "data/part-00000.parquet",
        "data/part-00001.parquet",
    ]
    assert manifest["timing"]["device_seconds_per_accepted"] == pytest.approx(0.3)

    card = (tmp_path / "ds" / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["configs"][0]["data_files"][0]["path"] == "data/*.parquet"
    assert header["synthkiln"]["recipe_hash"] == manifest["recipe_hash"]
    assert header["synthkiln"]["verifiers"] == ["reference-answer"]
    assert "| accepted | 5 |" in card
    assert "rejected by `length`: too-short | 2 |" in card
    assert "no benchmark" in card  # not decontaminated, and it says so


def crash_after_one_commit(out: Path) -> None:
    """A run that dies holding the directory's lock, as `kill -9` leaves it."""
    writer = DatasetWriter(out, recipe(shard_rows=100), RUN_INFO)
    writer.add(rows("a", 2), rejected("r", 1))
    writer.commit()
    writer.add(rows("b", 2), rejected("s", 1))  # pending, never committed: lost with the crash
    (out / "data" / ".part-00009.parquet.tmp").write_bytes(b"half a file")
    (out / "data" / "part-00009.parquet").write_bytes(b"renamed but not in the manifest")
    os._exit(0)


def test_reopen_resumes_and_drops_uncommitted_files(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    crashing = multiprocessing.get_context("spawn").Process(target=crash_after_one_commit, args=(out,))
    crashing.start()
    crashing.join()
    assert crashing.exitcode == 0

    reopened = DatasetWriter(out, recipe(shard_rows=100), RUN_INFO)
    assert reopened.completed_prompts == {"a0", "a1", "r0"}
    assert sorted(p.name for p in (out / "data").iterdir()) == ["part-00000.parquet"]
    assert reopened.manifest["runs"] == 2
    reopened.add(rows("b", 2), rejected("s", 1))
    manifest = reopened.close(complete=True)
    assert manifest["funnel"]["accepted"] == 4
    assert pq.read_table(out / "data").num_rows == 4


def test_other_recipe_or_foreign_directory_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    DatasetWriter(out, recipe(), RUN_INFO).close(complete=True)
    other = recipe_from_dict({"name": "other", "seeds": {"path": "x.jsonl"}, "task": {"kind": "reasoning"}})
    with pytest.raises(OutputError, match="holds a run of another recipe"):
        DatasetWriter(out, other, RUN_INFO)
    fresh = DatasetWriter(out, other, RUN_INFO, fresh=True)
    assert fresh.manifest["name"] == "other"
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(OutputError, match=r"holds no synthkiln manifest \(found: holiday.jpg\)"):
        DatasetWriter(foreign, recipe(), RUN_INFO)
    assert (foreign / "holiday.jpg").exists()


def _cost_run(tmp_path: Path, backend: str, cost: dict) -> tuple[dict, list[dict], list[dict]]:
    """A run of 12 prompts whose answers pass the regex verifier one time in two."""
    tmp_path.mkdir(exist_ok=True)
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": f"Write w{i:02d}."}) + "\n" for i in range(12)))
    script = {
        f"w{i:02d}": [f"answer number {i} " + ("VALID" if i % 2 else "wrong") + f" {'x' * i}"]
        for i in range(12)
    }
    teacher = ScriptedTeacher(script, poll_seconds=0.01)  # an engine step takes time: device seconds > 0
    teacher.backend = backend
    config = {
        "name": "priced",
        "seeds": {"path": str(seeds)},
        "task": {"kind": "instruction"},
        "filters": {"refusal": False, "unterminated": False},
        "generation": {"batch_size": 4},
        "verify": {"verifiers": [{"name": "regex", "pattern": "VALID"}]},
        "cost": cost,
    }
    out = tmp_path / backend
    with Pipeline.from_recipe(config, teachers=[teacher]) as pipeline:
        manifest = pipeline.run(out, progress=False)
        curated = pipeline.run_stats["curation_seconds"]
    kept = pq.read_table(out / "data").to_pylist()
    rejected = pq.read_table(out / "rejected").to_pylist()
    assert curated.keys() - {"commit"} == manifest["timing"]["stage_seconds"].keys()
    for stage, seconds in manifest["timing"]["stage_seconds"].items():
        assert seconds == pytest.approx(curated[stage], abs=0.005)  # the same time, summed per commit
    return manifest, kept, rejected


def test_cost_per_verified_row_from_device_seconds(tmp_path: Path) -> None:
    manifest, kept, rejected = _cost_run(tmp_path, "scripted", {"gpu_hour_usd": 3.6})
    verified = [row for row in kept if row["verified"]]
    assert len(verified) == 6 and len(rejected) == 6
    cost = manifest["cost"]
    total = manifest["timing"]["device_seconds"] * 3.6 / 3600
    assert manifest["timing"]["device_seconds"] > 0
    assert cost["total_usd"] == pytest.approx(total, rel=1e-5)
    assert cost["usd_per_generated_sample"] == pytest.approx(total / 12, rel=1e-5)
    assert cost["usd_per_verified_row"] == pytest.approx(total / 6, rel=1e-5)  # rejected work is paid too
    assert manifest["funnel"]["verified"] == 6
    assert "per verified row" in (tmp_path / "scripted" / "README.md").read_text()


def test_cost_of_an_api_teacher_from_its_tokens(tmp_path: Path) -> None:
    prices = {"input_usd_per_million": 2.0, "output_usd_per_million": 8.0}
    manifest, kept, rejected = _cost_run(tmp_path, "openai", prices)
    rows = kept + rejected
    assert len(rows) == 12
    prompt_tokens = sum(row["prompt_tokens"] for row in rows)
    completion_tokens = sum(row["completion_tokens"] for row in rows)
    total = (prompt_tokens * 2.0 + completion_tokens * 8.0) / 1e6
    assert manifest["cost"]["api_tokens"] == {"prompt": prompt_tokens, "completion": completion_tokens}
    assert manifest["cost"]["total_usd"] == pytest.approx(total, rel=1e-5)
    assert manifest["cost"]["usd_per_verified_row"] == pytest.approx(total / 6, rel=1e-5)
    unpriced, _, _ = _cost_run(tmp_path / "unpriced", "openai", {"gpu_hour_usd": 1.0})
    assert unpriced["cost"]["total_usd"] is None  # an API teacher without token prices has no cost
