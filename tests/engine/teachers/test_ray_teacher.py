"""`executor = "ray"`: the embedded SmolLM2 served by a Ray actor, verifiers on Ray workers, the same rows
as the local run; an actor killed mid-run loses and doubles nothing."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from synthkiln.engine import Pipeline
from synthkiln.engine.errors import TeacherError
from tests.engine.test_pipeline import committed_rows

pytestmark = pytest.mark.slow

INSTRUCTIONS = [
    "Explain what a hash table is in two sentences.",
    "Name two benefits of regular exercise.",
    "How do you convert Celsius to Fahrenheit?",
    "Write a haiku about autumn leaves.",
    "What is the capital of France?",
    "Give one tip for writing clear emails.",
    "Why is the sky blue?",
    "Describe a cat in one sentence.",
    "What does a compiler do?",
    "Name a prime number larger than ten.",
    "How many legs does a spider have?",
    "Suggest a name for a pet goldfish.",
]


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> dict:
    seeds = tmp_path_factory.mktemp("seeds") / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": text}) + "\n" for text in INSTRUCTIONS))
    return {
        "name": "ray-test",
        "seeds": {"path": str(seeds)},
        "task": {"kind": "instruction"},
        "teachers": [{"backend": "transformers", "dtype": "float32"}],
        "sampling": {"temperature": 0, "max_tokens": 16},
        "filters": {"unterminated": False},
        "generation": {"batch_size": 2},
        # a sandboxed check of every response: its jobs go to Ray workers
        "verify": {"verifiers": [{"name": "regex", "pattern": "[A-Za-z]"}]},
        "output": {"shard_rows": 1},
    }


def rows_of(out: Path) -> list[tuple]:
    rows = committed_rows(out, "data")
    return sorted((r["prompt_id"], r["sample_index"], r["response"], r["verified"]) for r in rows)


@pytest.fixture(scope="module")
def local_rows(recipe: dict, tmp_path_factory: pytest.TempPathFactory) -> list[tuple]:
    out = tmp_path_factory.mktemp("local") / "out"
    with Pipeline.from_recipe(recipe) as pipeline:
        pipeline.run(out, progress=False)
    rows = rows_of(out)
    assert len(rows) == len(INSTRUCTIONS) and all(verified for *_, verified in rows)
    return rows


def test_ray_run_writes_the_local_rows(
    recipe: dict, local_rows: list[tuple], tmp_path: Path, local_ray
) -> None:
    with Pipeline.from_recipe({**recipe, "executor": "ray"}) as pipeline:
        manifest = pipeline.run(tmp_path / "out", progress=False)
    assert rows_of(tmp_path / "out") == local_rows
    teacher = manifest["teachers"][0]
    assert teacher["executor"] == "ray" and teacher["actors"] == 1 and teacher["backend"] == "transformers"
    rows = committed_rows(tmp_path / "out", "data")
    assert {v["verifier"] for r in rows for v in r["verdicts"]} == {"regex"}
    assert manifest["sandbox"]["executor"] == "ray"  # checked by Ray tasks, not this process's pool
    # the same recipe hash: a Ray run resumes a local one and the other way round
    with Pipeline.from_recipe(recipe) as local:
        assert local.recipe.content_hash() == pipeline.recipe.content_hash()


def test_engine_actor_killed_mid_run_loses_and_doubles_nothing(
    recipe: dict, local_rows: list[tuple], tmp_path: Path, local_ray
) -> None:
    out = tmp_path / "out"
    killed: list[int] = []
    in_flight: list[int] = []

    def kill_after_first_commit(pipeline: Pipeline) -> None:
        while not killed:
            try:
                committed = json.loads((out / "manifest.json").read_text())["funnel"]["accepted"]
            except (OSError, ValueError, KeyError):
                committed = 0
            if committed >= 2:
                pid = pipeline.teachers[0].actor_pids()[0]
                in_flight.append(pipeline.teachers[0].in_flight)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.02)

    with Pipeline.from_recipe({**recipe, "executor": "ray"}) as pipeline:
        pipeline.teachers  # noqa: B018 (the actor starts before the run, so the watcher can find it)
        watcher = threading.Thread(target=kill_after_first_commit, args=(pipeline,), daemon=True)
        watcher.start()
        manifest = pipeline.run(out, progress=False)
        watcher.join(timeout=5)
        assert killed, "the run ended before the actor could be killed"
        assert in_flight[0] > 0  # requests were on their way when it died
        assert pipeline.teachers[0].actor_pids()[0] != killed[0]  # Ray restarted it
    assert manifest["complete"] is True
    rows = rows_of(out)
    assert len({(prompt, sample) for prompt, sample, *_ in rows}) == len(rows)  # nothing doubled
    assert rows == local_rows  # nothing lost, the retried requests gave the same completions


def test_prompt_counts_come_back_from_the_actors_as_counted_locally(recipe: dict, local_ray) -> None:
    """The feeder counts a window's prompts in one call per actor: the counts are the model's own."""
    prompts = [[{"role": "user", "content": text}] for text in INSTRUCTIONS]
    with Pipeline.from_recipe(recipe) as local:
        expected = [local.teachers[0].prompt_tokens(messages) for messages in prompts]
    with Pipeline.from_recipe({**recipe, "executor": "ray", "ray": {"actors_per_teacher": 2}}) as pipeline:
        teacher = pipeline.teachers[0]
        assert teacher.counts_tokens_exactly
        assert teacher.prompts_tokens(prompts) == expected
        assert teacher.prompts_tokens(prompts[:1]) == expected[:1]
    assert len(set(expected)) > 3  # prompts of different lengths, counted apart


def test_an_actor_that_cannot_load_its_teacher_says_why(recipe: dict, local_ray) -> None:
    broken = {
        **recipe,
        "executor": "ray",
        "teachers": [{"backend": "transformers", "model": "embedded:nope"}],
    }
    with Pipeline.from_recipe(broken) as pipeline, pytest.raises(TeacherError) as raised:
        pipeline.teachers  # noqa: B018
    assert str(raised.value).startswith("teacher 'transformers': its Ray actors did not start: ")
    assert "unknown embedded model 'embedded:nope'" in str(raised.value)
