from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synthkiln.engine import Pipeline
from synthkiln.engine.errors import SynthkilnError
from synthkiln.engine.stages import verify as verify_module
from synthkiln.engine.stages.verify import ServedTeachers, Verify, build_verifier
from synthkiln.verifiers import VerifierPool
from synthkiln.verifiers.answers import answers_match, extract_final_answer
from tests.conftest import QUICK_INSTRUCTIONS, REPO, synthkiln_command


@pytest.fixture(scope="module")
def humaneval_rows(humaneval_problems) -> list[dict]:
    problems = humaneval_problems[:24]
    rows = []
    for i, p in enumerate(problems):
        body = p["canonical_solution"] if i % 3 else "    return None\n"
        response = f"Here you go:\n```python\n{p['prompt']}{body}```\nDone."
        rows.append(
            {"id": p["task_id"], "response": response, "tests": p["test"], "entry_point": p["entry_point"]}
        )
    return rows


def test_stage_keeps_what_passes_and_records_every_verdict(humaneval_rows) -> None:
    verifiers = [
        build_verifier("python-tests", {"code_field": "response"}),
        build_verifier("length", {"min_words": 3, "field": "response"}),
    ]
    with VerifierPool(workers=2) as pool:
        stage = Verify(verifiers, pool)
        batch = pa.RecordBatch.from_pylist(humaneval_rows)
        kept, rejected = stage.process(batch)
    assert len(kept) == 16 and len(rejected) == 8
    assert set(rejected.column("reason").to_pylist()) == {"python-tests:failed"}
    assert all(kept.column("verified").to_pylist())
    verdicts = kept.column("verdicts").to_pylist()[0]
    assert [v["verifier"] for v in verdicts] == ["length", "python-tests"]  # cheapest first
    assert all(v["passed"] for v in verdicts)
    assert stage.verifiers == ("python-tests", "length") and stage.sandbox["sandbox"] == "bubblewrap"
    assert stage.stats.rejected == {"python-tests:failed": 8}


def test_bad_verifier_options_are_named() -> None:
    with pytest.raises(SynthkilnError, match=r"python-tests: unknown option\(s\) \['code'\]"):
        build_verifier("python-tests", {"code": "x"})
    with pytest.raises(SynthkilnError, match="unknown verifier 'lint'"):
        build_verifier("lint", {})
    with pytest.raises(SynthkilnError, match="regex: error"):
        build_verifier("regex", {"pattern": "(unclosed"})


@pytest.mark.slow
def test_pipeline_checks_maths_in_the_sandbox(tmp_path: Path, gsm8k_dir: Path, hf_teacher) -> None:
    recipe = {
        "name": "verify-maths",
        "seeds": {"path": str(gsm8k_dir / "train.jsonl"), "limit": 4},
        "task": {"kind": "reasoning"},
        "sampling": {"temperature": 0.8, "max_tokens": 64},
        "filters": {"unterminated": False},
        "generation": {"samples_per_prompt": 2, "batch_size": 4},
        "verify": {"verifiers": [{"name": "math"}], "workers": 2},
        "dedup": {"enabled": False},
    }
    with Pipeline.from_recipe(recipe, teachers=[hf_teacher]) as pipeline:
        # Verification alone (no regex reference check before it), so every sample reaches the sandbox.
        pipeline.stages = [s for s in pipeline.stages if s.name == "verify"]
        manifest = pipeline.run(tmp_path / "out", progress=False)
    assert manifest["verifiers"] == ["math"] and manifest["sandbox"]["sandbox"] == "bubblewrap"
    rows = pq.read_table(tmp_path / "out" / "rejected").to_pylist()
    if manifest["funnel"]["accepted"]:
        rows += pq.read_table(tmp_path / "out" / "data").to_pylist()
    assert len(rows) == 8
    for row in rows:
        math = [v for v in row["verdicts"] if v["verifier"] == "math"]
        assert len(math) == 1
        plainly_equal = answers_match(extract_final_answer(row["response"]), row["reference"])
        if plainly_equal:  # what plain number comparison accepts, the symbolic check must accept too
            assert math[0]["passed"] and row["verified"] is True
        assert math[0]["passed"] == (row.get("stage") is None)


def test_cli_verify_writes_verdicts(tmp_path: Path, humaneval_rows) -> None:
    source = tmp_path / "code.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in humaneval_rows))
    out = tmp_path / "out"
    done = subprocess.run(
        [*synthkiln_command(), "verify", str(source), "--out", str(out), "--verifier", "python-tests",
         "--code-field", "response", "--quiet"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "rows 24  passed 16  failed 8" in done.stdout
    rejected = pq.read_table(out / "rejected").to_pylist()
    assert {r["verdict"] for r in rejected} == {"failed"} and all(
        r["detail"].startswith("AssertionError") for r in rejected
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kept"] == 16 and manifest["rejected"] == {"python-tests:failed": 8}
    assert manifest["sandbox"]["sandbox"] == "bubblewrap"
    assert pq.read_table(out / "data").num_rows == 16
    missing = subprocess.run([*synthkiln_command(), "verify", str(source), "--out", str(out), "--verifier", "json-schema"],
                             capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert missing.returncode == 2 and "needs --schema-file" in missing.stderr


@pytest.mark.slow
def test_pipeline_runs_generated_code_against_carried_seed_tests(tmp_path: Path, hf_teacher) -> None:
    tasks = [
        (
            "add",
            "Write a Python function `add(a, b)` that returns the sum of a and b.",
            "assert f(2, 3) == 5",
        ),
        (
            "is_even",
            "Write a Python function `is_even(n)` that returns True when n is even.",
            "assert f(4) and not f(7)",
        ),
        (
            "shout",
            "Write a Python function `shout(text)` that returns text in upper case.",
            "assert f('hi') == 'HI'",
        ),
    ]
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(
        json.dumps({"instruction": text, "test": f"def check(f):\n    {test}\n", "entry_point": name}) + "\n"
        for name, text, test in tasks
    ))  # fmt: skip
    recipe = {
        "name": "code",
        "seeds": {"path": str(seeds)},
        "task": {"kind": "instruction", "carry_fields": ["test", "entry_point"]},
        "sampling": {"temperature": 0, "max_tokens": 64},
        "filters": {"unterminated": False},
        "verify": {
            "verifiers": [
                {
                    "name": "python-tests",
                    "code_field": "response",
                    "tests_field": "seed_fields.test",
                    "entry_point_field": "seed_fields.entry_point",
                }
            ]
        },
    }
    with Pipeline.from_recipe(recipe, teachers=[hf_teacher]) as pipeline:
        manifest = pipeline.run(tmp_path / "out", progress=False)
    rows = pq.read_table(tmp_path / "out" / "rejected").to_pylist() if manifest["funnel"]["rejected"] else []
    if manifest["funnel"]["accepted"]:
        rows += pq.read_table(tmp_path / "out" / "data").to_pylist()
    checked = [r for r in rows if r.get("stage") in (None, "verify")]
    assert len(checked) == 3 and manifest["verifiers"] == ["python-tests"]
    assert manifest["funnel"]["accepted"] >= 1  # greedy SmolLM2 writes these one-liners correctly
    for row in checked:
        carried = {entry["key"]: entry["value"] for entry in row["seed_fields"]}
        assert carried["entry_point"] in {name for name, _, _ in tasks}
        (verdict,) = [v for v in row["verdicts"] if v["verifier"] == "python-tests"]
        assert verdict["passed"] == (row.get("stage") is None) == bool(row["verified"])
        if not verdict["passed"]:
            assert row["reason"].startswith("python-tests:")


def test_a_judge_shares_the_engine_of_the_teacher_it_names(
    tmp_path: Path, hf_teacher, monkeypatch: pytest.MonkeyPatch
) -> None:
    def second_model(config: dict) -> None:
        raise AssertionError(f"a second model was loaded for the judge: {config}")

    monkeypatch.setattr(verify_module, "_teacher", second_model)
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": text}) + "\n" for text in QUICK_INSTRUCTIONS[:3]))
    recipe = {
        "name": "judged",
        "seeds": {"path": str(seeds)},
        "task": {"kind": "instruction"},
        "sampling": {"temperature": 0, "max_tokens": 12},
        "filters": {"unterminated": False, "refusal": False, "min_words": 1},
        "dedup": {"enabled": False},
        "verify": {"verifiers": [{"name": "judge", "teacher": "transformers", "threshold": 1}]},
    }
    with Pipeline.from_recipe(recipe, teachers=[hf_teacher]) as pipeline:
        manifest = pipeline.run(tmp_path / "out", progress=False)
    rows = [row for folder in ("data", "rejected") if (tmp_path / "out" / folder).exists()
            for row in pq.read_table(tmp_path / "out" / folder).to_pylist()]  # fmt: skip
    assert len(rows) == 3
    assert all([v["verifier"] for v in row["verdicts"]] == ["judge"] for row in rows)
    # Through the one driver: three prompts generated, then three judgements of them.
    assert manifest["pipeline"]["teachers"]["transformers"]["requests"] == 6


def test_a_judge_naming_a_teacher_the_recipe_lacks_is_refused() -> None:
    served = ServedTeachers(["teacher-a"], lambda label: None)
    with pytest.raises(
        SynthkilnError, match=r"teacher 'nope' is not one of the recipe's teachers \['teacher-a'\]"
    ):
        build_verifier("judge", {"teacher": "nope"}, served)
    with pytest.raises(SynthkilnError, match="there is no recipe here; give a teacher table"):
        build_verifier("judge", {"teacher": "teacher-a"})
