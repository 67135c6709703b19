"""vLLM's CPU build runs the vllm backend for real, in its own venv (built by `make vllm-venv`)."""

from __future__ import annotations

import json
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
{extra}
[sampling]
temperature = 0
max_tokens = 24
[filters]
unterminated = false
"""


def test_two_vllm_replicas_greedy_fp32_equal_transformers(tmp_path: Path, vllm_python: str) -> None:
    """Two engines of the CPU build (a core each) behind one teacher give a single model's rows."""
    seeds = REPO / "examples" / "seeds" / "quickstart.jsonl"
    outputs = {}
    for backend, python in (("transformers", None), ("vllm", vllm_python)):
        extra = "replicas = 2" if backend == "vllm" else ""
        recipe = write_recipe(
            tmp_path, RECIPE.format(seeds=seeds, backend=backend, extra=extra), f"{backend}.toml"
        )
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
    manifest = json.loads((tmp_path / "vllm" / "manifest.json").read_text())
    assert manifest["teachers"][0]["replicas"] == 2


STREAMING = """
import json, sys, psutil
from synthkiln.engine import Pipeline
from synthkiln.engine.config import SamplingConfig, VLLMTeacherConfig
from synthkiln.engine.teachers import EngineDied, GenerationRequest, build_teachers
if __name__ == "__main__":
    recipe, out = json.loads(sys.argv[1]), sys.argv[2]
    (teacher,) = build_teachers([VLLMTeacherConfig(backend="vllm", dtype="float32", max_model_len=1024)])
    with Pipeline.from_recipe(recipe, teachers=[teacher]) as pipeline:
        manifest = pipeline.run(out, progress=False)
    report = {"manifest": manifest}
    # Streaming: a short request submitted after a long one leaves first.
    sampling = SamplingConfig(temperature=0, max_tokens=48)
    teacher.submit(GenerationRequest([{"role": "user", "content": "Write a long story."}], key="long"), sampling)
    teacher.submit(GenerationRequest([{"role": "user", "content": "Say yes."}], key="short"),
                   SamplingConfig(temperature=0, max_tokens=2))
    order = []
    while teacher.in_flight:
        order += [f.key for f in teacher.poll()]
    report["order"] = order
    # A killed engine process: poll says the engine died; restart brings it back with its requests.
    alone = teacher.generate([GenerationRequest([{"role": "user", "content": "Name a colour."}])], sampling)
    teacher.submit(GenerationRequest([{"role": "user", "content": "Name a colour."}], key="again"), sampling)
    engines = [c for c in psutil.Process().children(recursive=True) if "EngineCore" in " ".join(c.cmdline()) + c.name()]
    report["engines"] = len(engines)
    for engine in engines:
        engine.kill()
    try:
        while teacher.in_flight:
            teacher.poll()
        report["died"] = False
    except EngineDied as exc:
        report["died"] = str(exc)
        teacher.restart()
        finished = []
        while teacher.in_flight:
            finished += teacher.poll()
        report["after_restart"] = [(f.key, f.completions[0].text) for f in finished]
    report["alone"] = alone[0][0].text
    teacher.close()
    print(json.dumps(report, default=str))
"""


def test_vllm_streams_seeded_sampled_prompts_and_restarts_a_killed_engine(
    tmp_path: Path, vllm_python: str
) -> None:
    shapes = ["Answer with one word: is {} a colour?", "Write a detailed paragraph about {}."]
    topics = [f"topic {i}" for i in range(32)]
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": s.format(t)}) + "\n" for s in shapes for t in topics))
    recipe = {
        "name": "streaming-vllm",
        "seeds": {"path": str(seeds)},
        "task": {"kind": "instruction"},
        "teachers": [{"backend": "vllm", "dtype": "float32", "max_model_len": 1024}],
        "sampling": {"temperature": 0.8, "max_tokens": 64},
        "filters": {"unterminated": False, "min_words": 1},
        "dedup": {"enabled": False},
    }
    done = subprocess.run(
        [vllm_python, "-c", STREAMING, json.dumps(recipe), str(tmp_path / "out")],
        capture_output=True, text=True, cwd=REPO, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    manifest = report["manifest"]
    # 64 seeded sampled prompts in flight at once: no chunked-prefill crash, every prompt generated.
    assert manifest["complete"] is True and manifest["funnel"]["prompts"] == 64
    vllm = manifest["pipeline"]["teachers"]["vllm"]
    assert vllm["requests"] == 64 and vllm["max_in_flight"] == 256
    assert vllm["mean_in_flight"] > 8  # streamed many at once, not a window of them
    assert report["order"] == ["short", "long"]
    assert report["engines"] == 1 and report["died"], report
    assert report["after_restart"] == [["again", report["alone"]]]


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
