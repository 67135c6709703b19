"""Shared fixtures: the real embedded model, real benchmark data, and the vLLM CPU venv."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_BENCHMARKS = REPO.parent / "shared" / "benchmarks"


def shared_benchmark(relative: str) -> Path:
    """`../shared/benchmarks/<relative>`. Where it is absent the test is skipped, except under `CI=true`,
    where it fails: CI must run the tests that need real benchmark data, not skip them silently."""
    path = SHARED_BENCHMARKS / relative
    if not path.exists():
        message = f"{relative} not found in {SHARED_BENCHMARKS} (expected ../shared/benchmarks/{relative})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI=true: the tests that need it must run", pytrace=False)
        pytest.skip(message)
    return path


def write_recipe(directory: Path, text: str, name: str = "recipe.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def synthkiln_command(python: str = sys.executable) -> list[str]:
    return [python, "-m", "synthkiln.engine.cli"]


def run_triton_script(script: str, *args: str) -> dict:
    """Run `script` in a fresh interpreter: Triton's interpreter on CPU (TRITON_INTERPRET must be set
    before triton is imported), natively where CUDA is present. Returns its last stdout line as JSON."""
    import json
    import subprocess

    env = dict(os.environ)
    try:
        import torch

        if not torch.cuda.is_available():
            env["TRITON_INTERPRET"] = "1"
    except ImportError:
        env["TRITON_INTERPRET"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def humaneval_problems() -> list[dict]:
    import gzip
    import json

    with gzip.open(shared_benchmark("humaneval/HumanEval.jsonl.gz"), "rt") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    shared_benchmark("gsm8k/test.jsonl")
    return shared_benchmark("gsm8k/train.jsonl").parent


@pytest.fixture(scope="session")
def vllm_python() -> str:
    python = os.environ.get("SYNTHKILN_VLLM_PYTHON")
    if not python or not Path(python).is_file():
        pytest.skip(
            "vLLM CPU venv not configured: run the tests with `make test` (sets SYNTHKILN_VLLM_PYTHON)"
        )
    return python


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    from synthkiln.engine.models import prepare_embedded

    return prepare_embedded("smollm2")


@pytest.fixture(scope="session")
def hf_teacher(embedded_model_dir: Path) -> Iterator:
    from synthkiln.engine.config import TransformersTeacherConfig
    from synthkiln.engine.teachers.transformers_teacher import TransformersTeacher

    teacher = TransformersTeacher(TransformersTeacherConfig(backend="transformers", dtype="float32"))
    yield teacher
    teacher.close()


QUICK_INSTRUCTIONS = [
    "Explain what a hash table is in two sentences.",
    "Name two benefits of regular exercise.",
    "How do you convert Celsius to Fahrenheit?",
    "Write a haiku about autumn leaves.",
]
