"""The openai backend against a real `vllm serve` (CPU build) on loopback, plus remote HTTP failures."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from synthkiln.engine.config import OpenAITeacherConfig, SamplingConfig
from synthkiln.engine.errors import TeacherError
from synthkiln.engine.pipeline import Pipeline
from synthkiln.engine.teachers import GenerationRequest
from synthkiln.engine.teachers.openai_teacher import OpenAITeacher
from tests.conftest import QUICK_INSTRUCTIONS, REPO


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(vllm_python: str, embedded_model_dir: Path, tmp_path_factory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": f"0-{(os.cpu_count() or 1) - 1}",
    }
    with open(log, "wb") as sink:
        server = subprocess.Popen(
            [
                vllm_python,
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                str(embedded_model_dir),
                "--served-model-name",
                "smollm2",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--enforce-eager",
                "--dtype",
                "float32",
                "--max-model-len",
                "2048",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                pytest.fail(f"vllm serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve not ready after 300 s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield base_url
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)


@pytest.mark.slow
@pytest.mark.vllm
def test_openai_backend_against_vllm_serve(vllm_server: str, hf_teacher) -> None:
    teacher = OpenAITeacher(
        OpenAITeacherConfig(backend="openai", model="smollm2", base_url=vllm_server, concurrency=3)
    )
    requests = [GenerationRequest([{"role": "user", "content": t}], n=2, seed=5) for t in QUICK_INSTRUCTIONS]
    greedy = SamplingConfig(temperature=0, max_tokens=16)
    served = teacher.generate(requests, greedy)
    assert [len(samples) for samples in served] == [2] * len(requests)
    local = hf_teacher.generate(requests, greedy)
    for remote_samples, local_samples in zip(served, local, strict=True):
        for remote, mine in zip(remote_samples, local_samples, strict=True):
            assert remote.text == mine.text  # same model, fp32, greedy
            assert (remote.completion_tokens, remote.prompt_tokens) == (
                mine.completion_tokens,
                mine.prompt_tokens,
            )
            assert remote.finish_reason == mine.finish_reason == "length"
    hot = SamplingConfig(temperature=1.0, max_tokens=16)
    assert teacher.generate(requests[:1], hot) == teacher.generate(requests[:1], hot)  # per-request seeds


@pytest.mark.slow
@pytest.mark.vllm
def test_pipeline_mixes_local_and_served_teachers(
    vllm_server: str, tmp_path: Path, embedded_model_dir: Path
) -> None:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        "".join(
            json.dumps({"instruction": f"Give one word that rhymes with {w}."}) + "\n"
            for w in ["cat", "dog", "sun", "tree", "ball", "rain", "star", "cake"]
        )
    )
    recipe = {
        "name": "mixed",
        "seeds": {"path": str(seeds)},
        "task": {"kind": "instruction"},
        "teachers": [
            {"backend": "transformers", "name": "local", "model": str(embedded_model_dir)},
            {"backend": "openai", "name": "served", "model": "smollm2", "base_url": vllm_server},
        ],
        "sampling": {"temperature": 0, "max_tokens": 8},
        "filters": {"unterminated": False},
    }
    with Pipeline.from_recipe(recipe) as pipeline:
        manifest = pipeline.run(tmp_path / "out", progress=False)
    rows = pq.read_table(tmp_path / "out" / "data").to_pylist()
    assert {r["teacher"] for r in rows} == {"local", "served"}
    assert {r["model"] for r in rows if r["teacher"] == "served"} == {"smollm2"}
    assert manifest["teachers"][1]["base_url"] == vllm_server


def scripted(statuses: list[int], seen: list[int]) -> httpx.MockTransport:
    """A remote server that answers with the given statuses in turn (outside our control, so faked)."""

    def answer(request: httpx.Request) -> httpx.Response:
        status = statuses[min(len(seen), len(statuses) - 1)]
        seen.append(status)
        if status != 200:
            return httpx.Response(status, json={"error": "scripted"}, headers={"retry-after": "0"})
        body = {
            "choices": [{"message": {"content": "fine"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 1},
        }
        return httpx.Response(200, json=body)

    return httpx.MockTransport(answer)


def teacher_with(transport: httpx.MockTransport, retries: int = 3) -> OpenAITeacher:
    config = OpenAITeacherConfig(
        backend="openai", model="m", base_url="https://api.example/v1", max_retries=retries
    )
    teacher = OpenAITeacher(config, transport=transport)
    teacher.backoff_base_s = 0.001
    return teacher


REQUEST = [GenerationRequest([{"role": "user", "content": "hi"}])]


def test_retries_429_and_5xx_then_succeeds() -> None:
    seen: list[int] = []
    result = teacher_with(scripted([429, 503, 200], seen)).generate(REQUEST, SamplingConfig(max_tokens=4))
    assert seen == [429, 503, 200]
    assert result[0][0].text == "fine" and result[0][0].prompt_tokens == 7


def test_gives_up_after_max_retries_and_does_not_retry_client_errors() -> None:
    seen: list[int] = []
    with pytest.raises(TeacherError, match=r"failed after 3 attempts \(last: HTTP 500"):
        teacher_with(scripted([500], seen), retries=2).generate(REQUEST, SamplingConfig(max_tokens=4))
    assert len(seen) == 3
    seen.clear()
    with pytest.raises(TeacherError, match="answered HTTP 401"):
        teacher_with(scripted([401], seen)).generate(REQUEST, SamplingConfig(max_tokens=4))
    assert seen == [401]
