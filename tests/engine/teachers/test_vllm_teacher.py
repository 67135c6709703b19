"""vLLM's CPU build runs the vllm backend for real, in its own venv (built by `make vllm-venv`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, synthkiln_command, write_recipe

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

RECIPE = """
name = "vllm-vs-transformers"
[seeds]
path = "{seeds}"
[task]
kind = "instruction"
[[teachers]]
name = "teacher"
backend = "{backend}"
dtype = "float32"
[sampling]
temperature = 0
max_tokens = 24
[filters]
unterminated = false
"""


def test_vllm_greedy_fp32_equals_transformers(tmp_path: Path, vllm_python: str) -> None:
    seeds = REPO / "examples" / "seeds" / "quickstart.jsonl"
    outputs = {}
    for backend, python in (("transformers", None), ("vllm", vllm_python)):
        recipe = write_recipe(tmp_path, RECIPE.format(seeds=seeds, backend=backend), f"{backend}.toml")
        command = synthkiln_command(python) if python else synthkiln_command()
        subprocess.run(
            [*command, "run", str(recipe), "--out", str(tmp_path / backend), "--quiet"],
            check=True,
            cwd=REPO,
            capture_output=True,
            timeout=600,
        )
        rows = pq.read_table(tmp_path / backend / "data").to_pylist()
        outputs[backend] = {
            r["prompt_id"]: (r["response"], r["completion_tokens"], r["prompt_tokens"]) for r in rows
        }
    assert len(outputs["vllm"]) == len(seeds.read_text().splitlines())
    assert outputs["vllm"] == outputs["transformers"]


def test_vllm_teacher_closes_its_engine(vllm_python: str) -> None:
    script = """
import os, psutil
from synthkiln.engine.config import VLLMTeacherConfig, SamplingConfig
from synthkiln.engine.teachers import GenerationRequest, build_teacher
if __name__ == "__main__":
    teacher = build_teacher(VLLMTeacherConfig(backend="vllm", dtype="float32", max_model_len=512))
    out = teacher.generate([GenerationRequest([{"role": "user", "content": "Hi"}], n=2, seed=1)],
                           SamplingConfig(temperature=0.8, max_tokens=8))
    assert len(out[0]) == 2 and all(c.completion_tokens > 0 for c in out[0])
    # The context check counts a prompt as the engine does, against the engine's max_model_len.
    assert teacher.context_length == 512
    assert teacher.prompt_tokens([{"role": "user", "content": "Hi"}]) == out[0][0].prompt_tokens
    # Python's multiprocessing resource tracker lives until exit by design; the engine must not.
    children = [c for c in psutil.Process().children(recursive=True)
                if "resource_tracker" not in " ".join(c.cmdline())]
    assert children, "the engine core runs in a child process"
    teacher.close()
    gone, alive = psutil.wait_procs(children, timeout=30)
    print("alive after close:", len(alive))
"""
    done = subprocess.run([vllm_python, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "alive after close: 0" in done.stdout
