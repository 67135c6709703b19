"""A run's integrity: resumes refuse changed inputs, `--limit N` means N, and recipe errors, prompts
too long for the teacher and limit reruns end the way the user can act on."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synthkiln.engine import Pipeline, inputs
from synthkiln.engine.cli import main
from synthkiln.engine.config import recipe_from_dict
from synthkiln.engine.errors import OutputError, RecipeError, SeedsError
from synthkiln.engine.output.writer import DatasetWriter
from synthkiln.engine.pipeline import StepResult, _within
from synthkiln.engine.teachers.openai_teacher import OpenAITeacher
from tests.conftest import QUICK_INSTRUCTIONS

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
        [{"prompt_id": p, "sample_index": i} for p, i in [("a", 0), ("b", 0), ("b", 1), ("d", 1)]]
    )
    rejected = pa.RecordBatch.from_pylist(
        [{"prompt_id": p, "sample_index": i} for p, i in [("a", 1), ("c", 0), ("d", 0), ("b", 2)]]
    )
    step = _within(StepResult(kept, rejected, 1.0, 1.0), room=2)
    # a fits whole; b (2 accepted) gets the one slot left and keeps its rejected row; d is dropped with
    # its rejected row, so a later run generates it; c has nothing accepted and stays done.
    assert step.kept.to_pylist() == [
        {"prompt_id": "a", "sample_index": 0},
        {"prompt_id": "b", "sample_index": 0},
    ]
    assert [r["prompt_id"] for r in step.rejected.to_pylist()] == ["a", "c", "b"]
    full = _within(StepResult(kept, rejected, 1.0, 1.0), room=1)
    assert [r["prompt_id"] for r in full.kept.to_pylist()] == ["a"]
    assert [r["prompt_id"] for r in full.rejected.to_pylist()] == ["a", "c"]  # b and d are left to do


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
