"""Every shipped recipe validates, and the GSM8K one runs on the local copy of GSM8K."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synthkiln.engine.config import load_recipe
from synthkiln.engine.seeds import read_seeds
from synthkiln.engine.tasks import build_task
from tests.conftest import REPO, shared_benchmark, synthkiln_command

EXAMPLES = sorted((REPO / "examples").glob("*.toml"))


def test_the_examples_exist() -> None:
    assert {p.stem for p in EXAMPLES} >= {"quickstart", "gsm8k_reasoning", "augmentation", "domain", "code"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_validates_and_renders_its_seeds(path: Path, gsm8k_dir: Path) -> None:
    overrides = (
        [
            f"seeds.path={gsm8k_dir / 'train.jsonl'}",
            f"decontaminate.benchmarks.0.path={gsm8k_dir / 'test.jsonl'}",
        ]
        if path.stem == "gsm8k_reasoning"
        else []
    )
    recipe = load_recipe(path, overrides)
    task = build_task(recipe.task)
    for ordinal, seed in enumerate(read_seeds(recipe.seeds)):
        assert seed.error is None
        assert task.prompts(seed, ordinal)
        if ordinal == 5:
            break


@pytest.mark.slow
def test_gsm8k_reasoning_runs_on_local_gsm8k(tmp_path: Path, gsm8k_dir: Path) -> None:
    out = tmp_path / "gsm8k"
    subprocess.run(
        [
            *synthkiln_command(),
            "run",
            str(REPO / "examples" / "gsm8k_reasoning.toml"),
            "--out",
            str(out),
            "--quiet",
            "--set",
            f"seeds.path={gsm8k_dir / 'train.jsonl'}",
            "--set",
            f"decontaminate.benchmarks.0.path={gsm8k_dir / 'test.jsonl'}",
            "--set",
            "seeds.limit=3",
            "--set",
            "sampling.max_tokens=48",
            "--set",
            "generation.samples_per_prompt=2",
        ],
        check=True,
        cwd=REPO,
        capture_output=True,
        timeout=600,
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["funnel"]["prompts"] == 3 and manifest["funnel"]["samples"] == 6
    assert manifest["seeds"]["sha256"]
    every = [*pq.read_table(out / "rejected").to_pylist()]
    if manifest["funnel"]["accepted"]:
        every += pq.read_table(out / "data").to_pylist()
    assert all(row["reference"] for row in every)
    assert manifest["verifiers"] == ["reference-answer"]
    assert [b["name"] for b in manifest["decontaminated_against"]] == ["gsm8k"]


@pytest.mark.slow
def test_code_example_keeps_code_that_passes_its_tests(
    tmp_path: Path, humaneval_problems: list[dict]
) -> None:
    out = tmp_path / "code"
    humaneval = shared_benchmark("humaneval/HumanEval.jsonl.gz")
    subprocess.run(
        [*synthkiln_command(), "run", str(REPO / "examples" / "code.toml"), "--out", str(out), "--quiet",
         "--set", f"decontaminate.benchmarks.0.path={humaneval}", "--set", "seeds.limit=4",
         "--set", "sampling.max_tokens=96", "--set", "generation.samples_per_prompt=2"],
        check=True, cwd=REPO, capture_output=True, timeout=600,
    )  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verifiers"] == ["python-tests"] and manifest["sandbox"]["sandbox"] == "bubblewrap"
    assert [b["name"] for b in manifest["decontaminated_against"]] == ["humaneval"]
    kept = pq.read_table(out / "data").to_pylist()
    assert kept and all(row["verified"] for row in kept)
    assert len({row["prompt_id"] for row in kept}) == len(kept)  # keep = "first": one per prompt
