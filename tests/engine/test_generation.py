"""Continuous generation: teachers stream, prompts finish in any order, the stages see seed order.

These use the deterministic ScriptedTeacher where the verdict depends on completion order or timing
(a model's own speed would make it uncertain); the real backends stream in tests/engine/teachers/.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synthkiln.engine import Pipeline
from synthkiln.engine.config import SamplingConfig, VLLMTeacherConfig, recipe_from_dict
from synthkiln.engine.errors import TeacherError
from synthkiln.engine.generation import TeacherDriver
from synthkiln.engine.stages import default_stages
from synthkiln.engine.stages.base import Stage
from synthkiln.engine.teachers import EngineDied, Finished, GenerationRequest
from synthkiln.engine.teachers.vllm_teacher import plan_gpus
from tests.engine.scripted import ScriptedTeacher

WORDS = [f"w{i:02d}" for i in range(12)]  # none inside another
SCRIPT = {
    word: [f"{word} first answer with some words", f"{word} second answer, other words"] for word in WORDS
}


def recipe(tmp_path: Path, words: list[str] = WORDS, **generation: object) -> dict:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": f"Write {word}."}) + "\n" for word in words))
    return {
        "name": "streaming",
        "seeds": {"path": str(seeds)},
        "task": {"kind": "instruction"},
        "sampling": {"temperature": 0, "max_tokens": 8},
        "filters": {"unterminated": False, "refusal": False, "min_words": 1},
        "generation": {"batch_size": 3, "samples_per_prompt": 2, **generation},
    }


def rows(out: Path) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    return [
        row for shard in manifest["shards"]["data"] for row in pq.read_table(out / shard["path"]).to_pylist()
    ]


def test_prompts_finish_out_of_order_and_the_dataset_is_the_in_order_one(tmp_path: Path) -> None:
    # The first prompt of each window takes longest, so every window's prompts finish backwards.
    slow = ScriptedTeacher(SCRIPT, polls={word: 6 - 2 * (i % 3) for i, word in enumerate(WORDS)})
    with Pipeline.from_recipe(recipe(tmp_path), teachers=[slow]) as pipeline:
        manifest = pipeline.run(tmp_path / "scrambled", progress=False)
    with Pipeline.from_recipe(recipe(tmp_path), teachers=[ScriptedTeacher(SCRIPT)]) as pipeline:
        pipeline.run(tmp_path / "in-order", progress=False)

    assert slow.asked == WORDS  # submitted in seed order (all at once: they fit in flight)...
    assert sorted(slow.finished) == sorted(WORDS)
    assert slow.finished[:3] != WORDS[:3]  # ...and finished out of it
    scrambled, in_order = rows(tmp_path / "scrambled"), rows(tmp_path / "in-order")
    assert len(scrambled) == 2 * len(WORDS)
    for row in scrambled:  # each row answers its own prompt
        word = row["messages"][0]["content"].split()[1].rstrip(".")
        assert row["response"] == SCRIPT[word][row["sample_index"]]
    assert scrambled == in_order  # the same rows in the same order, whatever the finishing order
    assert manifest["complete"] is True


def test_a_slow_teacher_does_not_hold_back_a_fast_one(tmp_path: Path) -> None:
    words = [f"w{i:02d}" for i in range(24)]
    script = {word: [f"{word} answer"] for word in words}
    slow = ScriptedTeacher(script, capacity=1, name="slow", poll_seconds=0.2)
    fast = ScriptedTeacher(script, name="fast", poll_seconds=0.01)
    config = recipe(tmp_path, words, samples_per_prompt=1)
    config["teachers"] = [
        {"backend": "transformers", "name": "slow"},
        {"backend": "transformers", "name": "fast"},
    ]
    with Pipeline.from_recipe(config, teachers=[slow, fast]) as pipeline:
        manifest = pipeline.run(tmp_path / "out", progress=False)
    assert len(slow.finished) >= 4 and len(fast.finished) >= 4
    assert len(slow.finished) + len(fast.finished) == len(words)
    # The fast teacher is done with all of its prompts before the slow one is half way through.
    assert fast.finished_at[-1] < slow.finished_at[len(slow.finished) // 2]
    assert {row["teacher"] for row in rows(tmp_path / "out")} == {"slow", "fast"}
    assert set(manifest["pipeline"]["teachers"]) == {"slow", "fast"}


class SlowStage(Stage):
    name = "slow-stage"

    def process(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        time.sleep(0.15)
        return self.split(batch, pa.nulls(len(batch), pa.string()))


def test_the_stage_that_holds_generation_back_is_named(tmp_path: Path) -> None:
    config = recipe(tmp_path, batch_size=1)
    stages = [*default_stages(recipe_from_dict(config)), SlowStage()]
    with Pipeline.from_recipe(
        config, teachers=[ScriptedTeacher(SCRIPT, capacity=1)], stages=stages
    ) as pipeline:
        manifest = pipeline.run(tmp_path / "held", progress=False)
    held = manifest["pipeline"]
    assert held["bottleneck"]["part"] == "stage:slow-stage"
    assert held["bottleneck"]["seconds"] > 0.5  # 12 windows of 0.15 s, the feeder waiting for room
    assert held["curation_seconds"]["slow-stage"] >= 12 * 0.15

    fed = ScriptedTeacher(SCRIPT, poll_seconds=0.05, capacity=2)
    with Pipeline.from_recipe(config, teachers=[fed]) as pipeline:
        manifest = pipeline.run(tmp_path / "fed", progress=False)
    teachers = manifest["pipeline"]
    assert teachers["bottleneck"] == {"part": "teachers", "seconds": 0.0}
    stats = teachers["teachers"]["scripted"]
    assert stats["requests"] == len(WORDS) and stats["max_in_flight"] == 1  # 2 requests / 2 samples
    assert stats["busy_share"] > 0.8 and stats["mean_in_flight"] > 0.8
    assert stats["completion_tokens"] == sum(len(t.split()) for answers in SCRIPT.values() for t in answers)


class RefusingTeacher(ScriptedTeacher):
    """Refuses the prompt of one word, as a backend refuses a prompt over its context."""

    def poll(self) -> list[Finished]:
        return [
            Finished(f.key, [], "HTTP 400: prompt too long") if self._words[f.key] == "w03" else f
            for f in super().poll()
        ]


def test_a_refused_request_is_quarantined_and_the_run_goes_on(tmp_path: Path) -> None:
    config = recipe(tmp_path)
    with Pipeline.from_recipe(config, teachers=[RefusingTeacher(SCRIPT)]) as pipeline:
        manifest = pipeline.run(tmp_path / "out", progress=False)
    assert manifest["complete"] is True
    assert len(rows(tmp_path / "out")) == 2 * (len(WORDS) - 1)
    refused = pq.read_table(tmp_path / "out" / "rejected").to_pylist()
    assert [(r["reason"], r["sample_index"]) for r in refused] == [("teacher-refused", None)]
    assert refused[0]["detail"] == ("seeds.jsonl line 4: teacher 'scripted': HTTP 400: prompt too long")
    assert manifest["pipeline"]["teachers"]["scripted"]["refused"] == 1


class DyingTeacher(ScriptedTeacher):
    """An engine that dies at the given polls; `restart` brings it back with its requests."""

    def __init__(self, script: dict[str, list[str]], deaths_at: set[int]) -> None:
        super().__init__(script, capacity=2)
        self.deaths_at, self.polled, self.restarts = deaths_at, 0, 0

    def poll(self) -> list[Finished]:
        self.polled += 1
        if self.polled in self.deaths_at:
            raise EngineDied("engine 0 died: killed")
        return super().poll()

    def restart(self) -> None:
        self.restarts += 1


def test_a_dead_engine_is_restarted_once_then_the_run_stops_with_its_rows_kept(tmp_path: Path) -> None:
    config = recipe(tmp_path)
    once = DyingTeacher(SCRIPT, deaths_at={3})
    with Pipeline.from_recipe(config, teachers=[once]) as pipeline:
        manifest = pipeline.run(tmp_path / "once", progress=False)
    assert once.restarts == 1 and manifest["complete"] is True
    assert manifest["pipeline"]["teachers"]["scripted"]["restarts"] == 1
    assert len(rows(tmp_path / "once")) == 2 * len(WORDS)

    twice = DyingTeacher(SCRIPT, deaths_at={5, 7})
    with (
        pytest.raises(TeacherError, match=r"restarted 1 time.*run the same command again"),
        Pipeline.from_recipe(config, teachers=[twice]) as pipeline,
    ):
        pipeline.run(tmp_path / "twice", progress=False)
    kept = rows(tmp_path / "twice")
    assert 0 < len(kept) < 2 * len(WORDS)  # the windows finished before the second death
    with Pipeline.from_recipe(config, teachers=[ScriptedTeacher(SCRIPT)]) as pipeline:
        assert pipeline.run(tmp_path / "twice", progress=False)["complete"] is True
    assert rows(tmp_path / "twice") == rows(tmp_path / "once")


def test_the_driver_serves_other_threads_while_the_pipeline_streams() -> None:
    teacher = ScriptedTeacher(SCRIPT, polls={"w00": 3})
    driver = TeacherDriver(teacher)
    try:
        requests = [
            GenerationRequest([{"role": "user", "content": f"Rate {w}."}], n=2) for w in ("w00", "w01")
        ]
        answers = driver.generate(requests, SamplingConfig(temperature=0))
    finally:
        driver.close()
    assert [[c.text for c in samples] for samples in answers] == [SCRIPT["w00"], SCRIPT["w01"]]
    assert teacher.finished == ["w01", "w00"]  # out of order inside, in order for the caller


def vllm(label: str, share: float = 0.9, replicas: int = 1, tp: int = 1) -> VLLMTeacherConfig:
    return VLLMTeacherConfig(
        backend="vllm", name=label, gpu_memory_utilization=share, replicas=replicas, tensor_parallel_size=tp
    )


def test_engines_get_gpus_of_their_own_then_share_only_what_fits() -> None:
    assert plan_gpus([vllm("a", replicas=4, tp=2)], 8) == [[[0, 1], [2, 3], [4, 5], [6, 7]]]
    assert plan_gpus([vllm("a", replicas=2), vllm("b", replicas=2)], 8) == [[[0], [1]], [[2], [3]]]
    assert plan_gpus([vllm("a", 0.45), vllm("b", 0.45)], 1) == [[[0]], [[0]]]
    with pytest.raises(TeacherError, match=r"GPU 0 would hold 2 vLLM engines .* 1\.80 .*'a' 0\.9, 'b' 0\.9"):
        plan_gpus([vllm("a"), vllm("b")], 1)
    with pytest.raises(TeacherError, match="GPU 0 would hold 2 vLLM engines"):
        plan_gpus([vllm("a", replicas=3)], 2)
    with pytest.raises(TeacherError, match="tensor_parallel_size 4 needs 4 GPUs; this node has 2"):
        plan_gpus([vllm("a", tp=4)], 2)


def test_importing_the_engine_does_not_import_numba() -> None:
    """vLLM's workers re-import the script that starts them, and vLLM 0.32 cannot start a worker in
    which numba is imported: a script that imports the pipeline must not pull numba in with it."""
    script = "import sys, synthkiln.engine, synthkiln.engine.cli; print(sorted({'numba', 'llvmlite'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
