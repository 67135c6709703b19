"""Shared fixtures: the real embedded model, real benchmark data, and the vLLM CPU venv."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_BENCHMARKS = REPO.parent / "shared" / "benchmarks"


def write_recipe(directory: Path, text: str, name: str = "recipe.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def synthkiln_command(python: str = sys.executable) -> list[str]:
    return [python, "-m", "synthkiln.engine.cli"]


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    directory = SHARED_BENCHMARKS / "gsm8k"
    if not (directory / "train.jsonl").is_file():
        pytest.skip(f"GSM8K data not found at {directory} (expected ../shared/benchmarks/gsm8k)")
    return directory


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
