"""A run's integrity: resumes refuse changed inputs, `--limit N` means N, and recipe errors, prompts
too long for the teacher and limit reruns end the way the user can act on."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synthkiln.engine import Pipeline, inputs
from synthkiln.engine import pipeline as pipeline_module
from synthkiln.engine import seeds as seeds_module
from synthkiln.engine.cli import main
from synthkiln.engine.config import recipe_from_dict
from synthkiln.engine.errors import OutputError, RecipeError, SeedsError, SynthkilnError
from synthkiln.engine.output.writer import DatasetWriter
from synthkiln.engine.pipeline import StepResult, _Progress, _within
from synthkiln.engine.seeds import describe_seeds
from synthkiln.engine.teachers.openai_teacher import OpenAITeacher
from tests.conftest import QUICK_INSTRUCTIONS
from tests.engine.scripted import ScriptedTeacher

RUN_INFO = {"teachers": [], "seeds": {}, "stages": [], "versions": {}}


def write_seeds(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def instruction_recipe(seeds: Path, **extra: dict) -> dict:
    recipe = {
        "name": "integrity",
        "seeds": {"path": str(seeds)},
        "task": {"kind": "instruction"},
        "sampling": {"temperature": 0, "max_tokens": 4},
        "filters": {"unterminated": False, "refusal": False},
        "dedup": {"enabled": False},
        "generation": {"batch_size": 4},
    }
    for section, values in extra.items():
        recipe[section] = {**recipe.get(section, {}), **values}
    return recipe


def committed(out: Path, folder: str = "data") -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    tables = [pq.read_table(out / shard["path"]) for shard in manifest["shards"][folder]]
    return pa.concat_tables(tables).to_pylist() if tables else []


def inspect_line(out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["inspect", str(out)]) == 0
    return capsys.readouterr().out.splitlines()[0]


# -- item 2: the inputs are part of the run's identity -----------------------------------------


def test_changed_inputs_are_refused_on_resume_unless_allowed(tmp_path: Path) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl", [{"question": "What is 2+2?", "answer": "#### 4"}])
    template = tmp_path / "ask.jinja"
    template.write_text("Solve: {{ question }}")
    benchmark = write_seeds(tmp_path / "bench.jsonl", [{"question": "one two three four five six"}])
    recipe = recipe_from_dict(
        {
            "name": "inputs",
            "seeds": {"path": str(seeds)},
            "task": {"kind": "reasoning", "template_file": str(template)},
            "decontaminate": {"benchmarks": [{"name": "own", "path": str(benchmark)}]},
        }
    )
    out = tmp_path / "out"
    first = DatasetWriter(out, recipe, RUN_INFO).close(complete=False)
    assert sorted(first["inputs"]) == sorted([str(seeds), str(template), str(benchmark)])
    assert first["inputs"][str(seeds)]["sha256"] == inputs.sha256_file(seeds)
    assert DatasetWriter(out, recipe, RUN_INFO).close(complete=False)["runs"] == 2  # unchanged: resumes

    before = inputs.sha256_file(seeds)
    write_seeds(seeds, [{"question": "What is 3+3?", "answer": "#### 6"}])
    benchmark.write_text(benchmark.read_text() + json.dumps({"question": "seven eight nine ten"}) + "\n")
    with pytest.raises(OutputError) as refused:
        DatasetWriter(out, recipe, RUN_INFO)
    message = str(refused.value)
    assert f"{seeds} (contents changed" in message and f"{benchmark} (contents changed" in message
    assert str(template) not in message and "--allow-changed-inputs" in message
    assert json.loads((out / "manifest.json").read_text())["runs"] == 2  # the refusal wrote nothing

    allowed = DatasetWriter(out, recipe, RUN_INFO, allow_changed_inputs=True).close(complete=False)
    changes = {c["path"]: c for c in allowed["input_changes"]}
    assert sorted(changes) == sorted([str(seeds), str(benchmark)])
    assert changes[str(seeds)]["before"]["sha256"] == before
    assert changes[str(seeds)]["after"]["sha256"] == inputs.sha256_file(seeds) != before
    assert allowed["inputs"][str(seeds)]["sha256"] == inputs.sha256_file(seeds)
    assert DatasetWriter(out, recipe, RUN_INFO).close(complete=False)["runs"] == 4  # the new state holds


def test_unchanged_size_and_mtime_are_not_rehashed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl", [{"instruction": "Say hi."}])
    recipe = recipe_from_dict(instruction_recipe(seeds))
    recorded = inputs.fingerprint(recipe)
    hashed: list[str] = []
    real = inputs.sha256_file
    monkeypatch.setattr(inputs, "sha256_file", lambda path: hashed.append(str(path)) or real(path))
    assert inputs.fingerprint(recipe, recorded) == recorded
    assert hashed == []
    stat = seeds.stat()
    os.utime(seeds, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    again = inputs.fingerprint(recipe, recorded)
    assert hashed == [str(seeds)]
    assert again[str(seeds)]["sha256"] == recorded[str(seeds)]["sha256"]


@pytest.mark.slow
def test_cli_resume_over_edited_seeds_exits_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl", [{"instruction": "Say hi."}])
    recipe = instruction_recipe(seeds)
    out = tmp_path / "out"
    DatasetWriter(out, recipe_from_dict(recipe), RUN_INFO).close(complete=False)
    write_seeds(seeds, [{"instruction": "Say bye."}])
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(json.dumps(recipe))  # JSON is YAML
    assert main(["run", str(recipe_path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{seeds} (contents changed" in err and "Traceback" not in err


# -- item 3: --limit N means N -----------------------------------------------------------------


def test_a_step_is_cut_at_prompt_granularity() -> None:
    kept = pa.RecordBatch.from_pylist(
        [{"prompt_id": p, "sample_index": i} for p, i in [("a", 0), ("b", 1), ("b", 3), ("d", 1)]]
    )
    rejected = pa.RecordBatch.from_pylist(
        [
            {"prompt_id": p, "sample_index": i}
            for p, i in [("a", 1), ("c", 0), ("d", 0), ("b", 0), ("b", 2), ("b", 4), ("q", None)]
        ]
    )
    step = _within(StepResult(kept, rejected, 1.0, 1.0), room=2)
    # a fits whole; b (2 accepted) gets the one slot left: it keeps its samples below its second
    # accepted one (sample 3), rejected ones included, and leaves 3 and 4 to a later run; d is dropped
    # with its rejected row, so a later run generates it; c has nothing accepted and stays done, as
    # does q (quarantined: no sample).
    assert step.kept.to_pylist() == [
        {"prompt_id": "a", "sample_index": 0},
        {"prompt_id": "b", "sample_index": 1},
    ]
    assert [(r["prompt_id"], r["sample_index"]) for r in step.rejected.to_pylist()] == [
        ("a", 1),
        ("c", 0),
        ("b", 0),
        ("b", 2),
        ("q", None),
    ]
    full = _within(StepResult(kept, rejected, 1.0, 1.0), room=1)
    assert [r["prompt_id"] for r in full.kept.to_pylist()] == ["a"]
    assert [r["prompt_id"] for r in full.rejected.to_pylist()] == ["a", "c", "q"]  # b and d are left to do


def test_progress_counts_a_prompt_done_only_when_each_sample_is_committed() -> None:
    progress = _Progress(3, {"whole": {0, 1, 2}, "cut": {0, 1}, "quarantined": {None}})
    assert progress.done("whole") and progress.done("quarantined")
    assert not progress.done("cut") and not progress.done("untouched")
    assert progress.committed("cut") == {0, 1} and progress.committed("untouched") == frozenset()
    progress.add(pa.RecordBatch.from_pylist([{"prompt_id": "cut", "sample_index": 2}]))
    assert progress.done("cut")


# Prompt p1's sample 2 repeats its sample 0; p2's sample 2 repeats its sample 1; p3's are distinct.
SCRIPT = {
    "p1": [
        "the quick brown fox jumps over the lazy dog near the river bank",
        "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu",
        "the quick brown fox jumps over the lazy dog near the river bank",
    ],
    "p2": [
        "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod",
        "sphinx of black quartz judge my vow and pack my box with jugs",
        "sphinx of black quartz judge my vow and pack my box with jugs",
    ],
    "p3": [
        "one small step for a man one giant leap for all mankind today",
        "to be or not to be that is the question whether tis nobler",
        "all that glitters is not gold often have you heard that told",
    ],
}


def rows_of(out: Path, folder: str) -> set[tuple]:
    columns = ("id", "prompt_id", "sample_index", "response", "reason", "duplicate_of")
    return {tuple(row.get(c) for c in columns) for row in committed(out, folder)}


@pytest.mark.parametrize("keep", ["all", "first"])
@pytest.mark.parametrize("limit", [1, 3, 5])
def test_limit_then_resume_keeps_every_sample_once_with_dedup(tmp_path: Path, limit: int, keep: str) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl", [{"instruction": f"Write {key}."} for key in SCRIPT])
    recipe = instruction_recipe(
        seeds,
        generation={"batch_size": 3, "samples_per_prompt": 3, "keep": keep},
        dedup={"enabled": True},
        filters={"min_words": 1},
    )
    clean, limited = tmp_path / "clean", tmp_path / "limited"
    with Pipeline.from_recipe(recipe, teachers=[ScriptedTeacher(SCRIPT)]) as pipeline:
        expected = pipeline.run(clean, progress=False)
    # p1 and p2 each have one near-duplicate sample rejected (keep=all), or two samples not first.
    assert expected["funnel"]["accepted"] == (7 if keep == "all" else 3)

    with Pipeline.from_recipe(recipe, teachers=[ScriptedTeacher(SCRIPT)]) as pipeline:
        first = pipeline.run(limited, limit=limit, progress=False)
    assert first["funnel"]["accepted"] == min(limit, expected["funnel"]["accepted"])
    samples = Counter(r["seed_row"] for r in committed(limited) + committed(limited, "rejected"))
    left = sorted({"p1", "p2", "p3"} - {f"p{row}" for row, count in samples.items() if count == 3})
    assert bool(left) == (limit < expected["funnel"]["accepted"])  # with keep=all, 1 and 3 cut a prompt
    teacher = ScriptedTeacher(SCRIPT)
    with Pipeline.from_recipe(recipe, teachers=[teacher]) as pipeline:
        resumed = pipeline.run(limited, progress=False)
    assert resumed["complete"] is True
    assert rows_of(limited, "data") == rows_of(clean, "data")
    assert rows_of(limited, "rejected") == rows_of(clean, "rejected")
    ids = [r["id"] for r in committed(limited) + committed(limited, "rejected")]
    assert len(ids) == len(set(ids)) == 9
    assert resumed["funnel"] == expected["funnel"] and resumed["tokens"] == expected["tokens"]
    # The resume generated only what was left: the prompt that was cut, if any, and those after it.
    assert teacher.asked == left


@pytest.mark.slow
def test_limit_cutting_a_prompt_then_resume_equals_a_clean_run(tmp_path: Path, hf_teacher) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl", [{"instruction": text} for text in QUICK_INSTRUCTIONS[:3]])
    recipe = instruction_recipe(seeds, generation={"batch_size": 2, "samples_per_prompt": 2})
    clean, limited = tmp_path / "clean", tmp_path / "limited"
    with Pipeline.from_recipe(recipe, teachers=[hf_teacher]) as pipeline:
        expected = pipeline.run(clean, progress=False)
    clean_rows = {(r["prompt_id"], r["sample_index"], r["response"]) for r in committed(clean)}
    assert len(clean_rows) == 6  # greedy: both samples of a prompt are the same text, both accepted

    with Pipeline.from_recipe(recipe, teachers=[hf_teacher]) as pipeline:
        manifest = pipeline.run(limited, limit=3, progress=False)
    # The second prompt is cut after its sample 0: it is not done, and counts among the seeds left.
    assert manifest["funnel"]["accepted"] == 3 and manifest["stopped"] == {"limit": 3, "seeds_left": 2}
    cut = [r for r in committed(limited) if r["seed_row"] == 2]
    assert [r["sample_index"] for r in cut] == [0]

    with Pipeline.from_recipe(recipe, teachers=[hf_teacher]) as pipeline:
        resumed = pipeline.run(limited, progress=False)
    rows = committed(limited)
    assert resumed["complete"] is True and resumed["stopped"] is None
    assert {(r["prompt_id"], r["sample_index"], r["response"]) for r in rows} == clean_rows
    assert len({r["id"] for r in rows}) == len(rows) == 6
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in committed(clean))
    assert resumed["funnel"] == expected["funnel"] and resumed["tokens"] == expected["tokens"]


@pytest.mark.slow
def test_limit_gives_exactly_n_and_a_resume_completes_without_doubles(
    tmp_path: Path, hf_teacher, capsys: pytest.CaptureFixture[str]
) -> None:
    seeds = write_seeds(
        tmp_path / "seeds.jsonl",
        [{"instruction": text} for text in [*QUICK_INSTRUCTIONS, "Name a primary colour."]],
    )
    recipe = instruction_recipe(seeds)
    clean, limited = tmp_path / "clean", tmp_path / "limited"
    with Pipeline.from_recipe(recipe, teachers=[hf_teacher]) as pipeline:
        pipeline.run(clean, progress=False)
    clean_rows = sorted(committed(clean), key=lambda r: r["id"])
    assert len(clean_rows) == 5  # every prompt accepted: no filter can drop one here

    with Pipeline.from_recipe(recipe, teachers=[hf_teacher]) as pipeline:
        manifest = pipeline.run(limited, limit=3, progress=False)
    assert manifest["funnel"]["accepted"] == 3 and len(committed(limited)) == 3
    assert manifest["complete"] is False and manifest["stopped"] == {"limit": 3, "seeds_left": 2}
    assert "stopped at --limit 3 with 2 seed rows left" in inspect_line(limited, capsys)

    # Rerunning with the limit reached adds nothing, and generates nothing.
    with Pipeline.from_recipe(recipe, teachers=[hf_teacher]) as pipeline:
        again = pipeline.run(limited, limit=3, progress=False)
    assert again["funnel"] == manifest["funnel"] and again["tokens"] == manifest["tokens"]
    assert again["stopped"] == {"limit": 3, "seeds_left": 2}

    with Pipeline.from_recipe(recipe, teachers=[hf_teacher]) as pipeline:
        resumed = pipeline.run(limited, progress=False)
    resumed_rows = sorted(committed(limited), key=lambda r: r["id"])
    assert resumed["complete"] is True and resumed["stopped"] is None
    assert len({r["prompt_id"] for r in resumed_rows}) == len(resumed_rows) == 5
    assert [r["id"] for r in resumed_rows] == [r["id"] for r in clean_rows]  # greedy: the same rows
    assert "complete: every seed row was processed" in inspect_line(limited, capsys)

    # A limit on a finished run adds nothing and leaves it complete.
    with Pipeline.from_recipe(recipe, teachers=[hf_teacher]) as pipeline:
        finished = pipeline.run(limited, limit=2, progress=False)
    assert finished["complete"] is True and finished["funnel"] == resumed["funnel"]
    assert len(committed(limited)) == 5


def test_inspect_says_interrupted_when_a_run_stopped_short(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl", [{"instruction": "Say hi."}])
    out = tmp_path / "out"
    DatasetWriter(out, recipe_from_dict(instruction_recipe(seeds)), RUN_INFO).close(complete=False)
    assert inspect_line(out, capsys).endswith(
        "interrupted before every seed row was processed (rerun `synthkiln run` to resume)"
    )


# -- item 8: bad input stops with a message, or is quarantined ---------------------------------


def test_a_slot_missing_from_every_seed_row_is_a_recipe_error(tmp_path: Path) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl", [{"topic": f"topic {i}"} for i in range(12)])
    recipe = instruction_recipe(seeds, task={"kind": "domain", "template": "Write about {{ topik }}."})
    with pytest.raises(RecipeError) as failed:
        Pipeline.from_recipe(recipe).run(tmp_path / "out", progress=False)
    message = str(failed.value)
    assert message.startswith(f"{seeds}: each of the first 8 seed rows fails the same way")
    assert "'topik' is undefined" in message and "did you mean 'topic'?" in message
    assert not (tmp_path / "out").exists()  # stopped before the directory was made

    few = write_seeds(tmp_path / "few.jsonl", [{"question": "a"}, {"question": "b"}])
    with pytest.raises(
        RecipeError, match=r"first 2 seed rows .* field 'instruction' is missing.*\['question'\]"
    ):
        list(Pipeline.from_recipe(instruction_recipe(few)).stream())


def test_one_good_row_among_failing_ones_is_not_a_recipe_error(tmp_path: Path) -> None:
    rows = [{"question": "x"}] * 9 + [{"instruction": "Say hi."}]
    seeds = write_seeds(tmp_path / "seeds.jsonl", rows[:3] + rows[9:] + rows[3:9])
    Pipeline.from_recipe(instruction_recipe(seeds))._check_seeds()  # row 4 renders: the recipe fits


def test_empty_seed_file_exits_2_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seeds = tmp_path / "empty.jsonl"
    seeds.write_text("\n\n")
    with pytest.raises(SeedsError, match=r"empty\.jsonl: no seed rows"):
        Pipeline.from_recipe(instruction_recipe(seeds)).run(tmp_path / "out", progress=False)
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(json.dumps(instruction_recipe(seeds)))
    assert main(["run", str(recipe_path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"error: {seeds}: no seed rows" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_prompt_longer_than_the_context_never_reaches_the_model(tmp_path: Path, hf_teacher) -> None:
    huge = " ".join(["lorem"] * 900_000)  # a 5.4 MB line, ~900k tokens against SmolLM2's 8192
    seeds = write_seeds(
        tmp_path / "seeds.jsonl",
        [
            {"instruction": QUICK_INSTRUCTIONS[0]},
            {"instruction": huge},
            {"instruction": QUICK_INSTRUCTIONS[1]},
        ],
    )
    assert hf_teacher.context_length == 8192
    with Pipeline.from_recipe(instruction_recipe(seeds), teachers=[hf_teacher]) as pipeline:
        manifest = pipeline.run(tmp_path / "out", progress=False)
    assert sorted(r["seed_row"] for r in committed(tmp_path / "out")) == [1, 3]
    rejected = committed(tmp_path / "out", "rejected")
    assert len(rejected) == 1
    assert (rejected[0]["stage"], rejected[0]["reason"]) == ("seeds", "prompt-too-long")
    assert rejected[0]["detail"].startswith("seeds.jsonl line 2: the prompt takes ")
    assert "does not fit the 8192-token context of teacher 'transformers'" in rejected[0]["detail"]
    assert manifest["funnel"]["samples"] == 2 and manifest["funnel"]["seeds_quarantined"] == 1


def test_openai_teacher_estimates_from_characters_and_never_sends_a_huge_prompt(tmp_path: Path) -> None:
    sent: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(len(request.content))
        message = {"role": "assistant", "content": "A short answer."}
        usage = {"prompt_tokens": 10, "completion_tokens": 4}
        return httpx.Response(
            200, json={"choices": [{"message": message, "finish_reason": "stop"}], "usage": usage}
        )

    seeds = write_seeds(
        tmp_path / "seeds.jsonl", [{"instruction": "x" * 5_000_000}, {"instruction": QUICK_INSTRUCTIONS[0]}]
    )
    recipe = instruction_recipe(seeds)
    recipe["teachers"] = [{"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"}]
    pipeline = Pipeline.from_recipe(recipe)
    teacher = OpenAITeacher(pipeline.recipe.teachers[0], transport=httpx.MockTransport(answer))
    assert teacher.context_length == 32768 and not teacher.counts_tokens_exactly
    with Pipeline.from_recipe(recipe, teachers=[teacher]) as pipeline:
        pipeline.run(tmp_path / "out", progress=False)
    assert len(sent) == 1 and sent[0] < 10_000  # only the short prompt went out
    rejected = committed(tmp_path / "out", "rejected")
    assert [(r["seed_row"], r["reason"]) for r in rejected] == [(1, "prompt-too-long")]
    assert re.match(
        r"seeds.jsonl line 1: the prompt takes an estimated 625\d{3} tokens", rejected[0]["detail"]
    )
    assert "32768-token context of teacher 'openai'" in rejected[0]["detail"]


# -- the directory is claimed first; inputs hashed once, by one helper; unreadable inputs named --


def scripted_recipe(tmp_path: Path) -> dict:
    seeds = write_seeds(tmp_path / "seeds.jsonl", [{"instruction": f"Write {key}."} for key in SCRIPT])
    return instruction_recipe(seeds, filters={"min_words": 1})


def test_a_refused_directory_is_refused_before_the_teachers_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: list[object] = []
    monkeypatch.setattr(
        pipeline_module, "build_teachers", lambda configs: loaded.extend(configs) or [ScriptedTeacher(SCRIPT)]
    )
    recipe = scripted_recipe(tmp_path)
    foreign = tmp_path / "hf-dataset"
    (foreign / "data").mkdir(parents=True)
    (foreign / "data" / "train-00000.parquet").write_bytes(b"theirs")
    with pytest.raises(OutputError), Pipeline.from_recipe(recipe) as pipeline:
        pipeline.run(foreign, progress=False)
    other = tmp_path / "other"
    DatasetWriter(other, recipe_from_dict({**recipe, "name": "another"}), RUN_INFO).close(complete=False)
    with pytest.raises(OutputError, match="another recipe"), Pipeline.from_recipe(recipe) as pipeline:
        pipeline.run(other, progress=False)
    locked = tmp_path / "locked"
    holder = DatasetWriter(locked, recipe_from_dict(recipe), RUN_INFO)
    try:
        with pytest.raises(OutputError), Pipeline.from_recipe(recipe) as pipeline:
            pipeline.run(locked, progress=False)
    finally:
        holder.close(complete=False)
    assert loaded == []  # no refusal waited for a model to load
    with Pipeline.from_recipe(recipe) as pipeline:
        manifest = pipeline.run(locked, progress=False)
    assert len(loaded) == 1 and manifest["teachers"][0]["model"] == "scripted-model"


def test_the_directory_is_released_when_sizing_the_progress_bar_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(self: Pipeline) -> int:
        raise RuntimeError("counting the seeds failed")

    monkeypatch.setattr(Pipeline, "_prompt_estimate", fail)
    recipe = scripted_recipe(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), Pipeline.from_recipe(recipe, teachers=[ScriptedTeacher(SCRIPT)]) as p:
        p.run(out, progress=False)
    assert not (out / ".synthkiln.lock").exists()
    DatasetWriter(out, recipe_from_dict(recipe), RUN_INFO).close(complete=False)  # not locked


def test_the_seeds_are_hashed_once_for_a_new_run_and_not_at_all_on_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = scripted_recipe(tmp_path)
    seeds = recipe["seeds"]["path"]
    hashed: list[str] = []
    real = inputs.sha256_file

    def counting(path: str | Path) -> str:
        hashed.append(str(path))
        return real(path)

    monkeypatch.setattr(inputs, "sha256_file", counting)
    monkeypatch.setattr(seeds_module, "sha256_file", counting)
    out = tmp_path / "out"
    with Pipeline.from_recipe(recipe, teachers=[ScriptedTeacher(SCRIPT)]) as pipeline:
        first = pipeline.run(out, limit=1, progress=False)
    assert hashed == [seeds]
    assert first["seeds"]["sha256"] == first["inputs"][seeds]["sha256"] == real(seeds)
    with Pipeline.from_recipe(recipe, teachers=[ScriptedTeacher(SCRIPT)]) as pipeline:
        resumed = pipeline.run(out, progress=False)
    assert hashed == [seeds]  # size and mtime unchanged: the recorded hash is reused
    assert resumed["seeds"]["sha256"] == first["seeds"]["sha256"]


def test_an_input_that_cannot_be_read_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "bench.jsonl"
    folder.mkdir()
    with pytest.raises(SynthkilnError, match=rf"^{re.escape(str(folder))}: cannot read .*: Is a directory$"):
        inputs.sha256_file(folder)
    template = tmp_path / "ask.jinja"
    template.mkdir()
    recipe = scripted_recipe(tmp_path)
    templated = recipe_from_dict({**recipe, "task": {"kind": "instruction", "template_file": str(template)}})
    with pytest.raises(SynthkilnError, match=rf"^{re.escape(str(template))}: cannot read"):
        DatasetWriter(tmp_path / "out", templated, RUN_INFO)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

    recipe["decontaminate"] = {"benchmarks": [{"name": "own", "path": str(folder)}]}
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(json.dumps(recipe))
    assert main(["run", str(recipe_path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"benchmark 'own': {folder}: cannot read" in err and "Traceback" not in err

    unreadable = write_seeds(tmp_path / "secret.jsonl", [{"question": "q"}])

    def denied(path: str | Path, mode: str = "r") -> object:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(inputs, "open", denied, raising=False)
    with pytest.raises(SynthkilnError, match=rf"{re.escape(str(unreadable))}: .*Permission denied"):
        inputs.sha256_file(unreadable)


def test_seeds_from_a_hugging_face_dataset_are_part_of_the_identity(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    write_seeds(dataset / "train.jsonl", [{"instruction": "Say hi."}])
    recipe = recipe_from_dict({**scripted_recipe(tmp_path), "seeds": {"hf_dataset": str(dataset)}})
    key = f"hf:{dataset}:train"
    out = tmp_path / "out"
    first = DatasetWriter(out, recipe, RUN_INFO).close(complete=False)
    assert list(first["inputs"]) == [key] and first["inputs"][key]["revision"]
    assert describe_seeds(recipe.seeds, first["inputs"])["revision"] == first["inputs"][key]["revision"]
    assert DatasetWriter(out, recipe, RUN_INFO).close(complete=False)["runs"] == 2  # unchanged: resumes
    write_seeds(dataset / "train.jsonl", [{"instruction": "Say bye."}, {"instruction": "Say why."}])
    with pytest.raises(OutputError, match=rf"{re.escape(key)} \(contents changed: revision "):
        DatasetWriter(out, recipe, RUN_INFO)
