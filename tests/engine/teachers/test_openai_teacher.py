"""The openai backend against a real `vllm serve` (CPU build) on loopback, plus remote HTTP failures."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from synthkiln.engine.config import OpenAITeacherConfig, SamplingConfig
from synthkiln.engine.errors import TeacherError
from synthkiln.engine.pipeline import Pipeline
from synthkiln.engine.teachers import Finished, GenerationRequest
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
    config = OpenAITeacherConfig(backend="openai", model="smollm2", base_url=vllm_server, concurrency=3)
    requests = [GenerationRequest([{"role": "user", "content": t}], n=2, seed=5) for t in QUICK_INSTRUCTIONS]
    greedy = SamplingConfig(temperature=0, max_tokens=16)
    hot = SamplingConfig(temperature=1.0, max_tokens=16)
    with OpenAITeacher(config) as teacher:
        served = teacher.generate(requests, greedy)
        # Per-request seeds: the same samples on a rerun.
        assert teacher.generate(requests[:1], hot) == teacher.generate(requests[:1], hot)
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


@pytest.mark.slow
@pytest.mark.vllm
def test_a_prompt_the_server_refuses_is_quarantined_while_the_run_goes_on(
    vllm_server: str, tmp_path: Path
) -> None:
    # ~5,000 tokens: past the server's 2,048-token context, yet under our estimate's bound of the
    # teacher's declared 32,768, so it reaches the server, which answers HTTP 400.
    oversized = "Summarise this: " + "the quick brown fox jumps over the lazy dog " * 550
    instructions = [*QUICK_INSTRUCTIONS[:2], oversized, *QUICK_INSTRUCTIONS[2:4]]
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": text}) + "\n" for text in instructions))
    recipe = {
        "name": "refused",
        "seeds": {"path": str(seeds)},
        "task": {"kind": "instruction"},
        "teachers": [{"backend": "openai", "name": "served", "model": "smollm2", "base_url": vllm_server}],
        "sampling": {"temperature": 0, "max_tokens": 8},
        "filters": {"unterminated": False, "min_words": 1},
    }
    with Pipeline.from_recipe(recipe) as pipeline:
        manifest = pipeline.run(tmp_path / "out", progress=False)
    assert manifest["complete"] is True
    assert len(pq.read_table(tmp_path / "out" / "data")) == 4
    (refused,) = pq.read_table(tmp_path / "out" / "rejected").to_pylist()
    assert refused["reason"] == "teacher-refused"
    assert refused["detail"].startswith("seeds.jsonl line 3: teacher 'served': HTTP 400")
    assert "maximum context length" in refused["detail"]
    assert manifest["pipeline"]["teachers"]["served"]["refused"] == 1


def reply(text: str = "fine", finish_reason: str = "stop") -> httpx.Response:
    body = {
        "choices": [{"message": {"content": text}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 1},
    }
    return httpx.Response(200, json=body)


def scripted(statuses: list[int], seen: list[int]) -> httpx.MockTransport:
    """A remote server that answers with the given statuses in turn (outside our control, so faked)."""

    def answer(request: httpx.Request) -> httpx.Response:
        status = statuses[min(len(seen), len(statuses) - 1)]
        seen.append(status)
        if status != 200:
            return httpx.Response(status, json={"error": "scripted"}, headers={"retry-after": "0"})
        return reply()

    return httpx.MockTransport(answer)


def teacher_with(transport: httpx.MockTransport, retries: int = 3) -> OpenAITeacher:
    config = OpenAITeacherConfig(
        backend="openai", model="m", base_url="https://api.example/v1", max_retries=retries
    )
    teacher = OpenAITeacher(config, transport=transport)
    teacher.backoff_base_s = 0.001
    return teacher


def prompt(request: httpx.Request) -> str:
    return json.loads(request.content)["messages"][0]["content"]


def ask(content: str, n: int = 1) -> GenerationRequest:
    return GenerationRequest([{"role": "user", "content": content}], n=n, key=content)


def poll_all(teacher: OpenAITeacher) -> dict[str, Finished]:
    finished: dict[str, Finished] = {}
    while teacher.in_flight:
        finished.update((f.key, f) for f in teacher.poll())
    return finished


def poll_until_some(teacher: OpenAITeacher) -> list[Finished]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        finished = teacher.poll()
        if finished:
            return finished
    raise AssertionError("nothing finished in 30 s")


REQUEST = [GenerationRequest([{"role": "user", "content": "hi"}])]
SAMPLING = SamplingConfig(max_tokens=4)


def test_retries_429_and_5xx_then_succeeds() -> None:
    seen: list[int] = []
    with teacher_with(scripted([429, 503, 200], seen)) as teacher:
        result = teacher.generate(REQUEST, SAMPLING)
    assert seen == [429, 503, 200]
    assert result[0][0].text == "fine" and result[0][0].prompt_tokens == 7


def test_gives_up_after_max_retries() -> None:
    seen: list[int] = []
    with (
        teacher_with(scripted([500], seen), retries=2) as teacher,
        pytest.raises(TeacherError, match=r"failed after 3 attempts \(last: HTTP 500"),
    ):
        teacher.generate(REQUEST, SAMPLING)
    assert len(seen) == 3


@pytest.mark.parametrize("status", [401, 403, 404])
def test_does_not_retry_a_misconfigured_teacher(status: int) -> None:
    seen: list[int] = []
    with (
        teacher_with(scripted([status], seen)) as teacher,
        pytest.raises(TeacherError, match=f"answered HTTP {status}"),
    ):
        teacher.generate(REQUEST, SAMPLING)
    assert seen == [status]


@pytest.mark.parametrize(
    ("refusal", "reason"),
    [
        (
            lambda: httpx.Response(400, text="prompt is longer than the maximum context length"),
            "HTTP 400: prompt is longer",
        ),
        (lambda: httpx.Response(422, json={"detail": "bad message"}), "HTTP 422: .*bad message"),
        (lambda: reply("I cannot", finish_reason="content_filter"), "content filter"),
    ],
)
def test_a_refused_request_finishes_refused_and_the_others_complete(
    refusal: Callable[[], httpx.Response], reason: str
) -> None:
    calls: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(prompt(request))
        return refusal() if prompt(request) == "bad" else reply(prompt(request))

    with teacher_with(httpx.MockTransport(answer)) as teacher:
        for request in [ask("one"), ask("bad", n=2), ask("two", n=2)]:
            teacher.submit(request, SAMPLING)
        finished = poll_all(teacher)
        assert finished["bad"].completions == [] and re.match(reason, finished["bad"].refused or "")
        assert [c.text for c in finished["one"].completions] == ["one"]
        assert [c.text for c in finished["two"].completions] == ["two", "two"]
        assert finished["one"].refused is None and finished["two"].refused is None
        assert calls.count("bad") <= 2  # refusals are not retried
        with pytest.raises(TeacherError, match="refused a request: " + reason):
            teacher.generate([ask("bad")], SAMPLING)


def test_requests_come_back_as_they_finish_and_submit_works_while_others_run() -> None:
    release = threading.Event()  # the slow request answers only once the test lets it

    async def answer(request: httpx.Request) -> httpx.Response:
        while prompt(request) == "slow" and not release.is_set():
            await asyncio.sleep(0.01)
        return reply(prompt(request))

    with teacher_with(httpx.MockTransport(answer)) as teacher:
        assert teacher.poll() == [] and teacher.default_in_flight == 16  # twice the concurrency of 8
        teacher.submit(ask("slow"), SAMPLING)
        teacher.submit(ask("fast"), SAMPLING)
        assert teacher.in_flight == 2
        assert [f.key for f in poll_until_some(teacher)] == ["fast"]
        teacher.submit(ask("later", n=3), SAMPLING)
        later = poll_until_some(teacher)
        assert [f.key for f in later] == ["later"] and len(later[0].completions) == 3
        waited = time.monotonic()
        assert teacher.poll() == [] and teacher.in_flight == 1
        assert time.monotonic() - waited < 1  # a poll hands control back while requests run
        release.set()
        assert [(f.key, f.completions[0].text) for f in poll_until_some(teacher)] == [("slow", "slow")]
        assert teacher.in_flight == 0 and teacher.poll() == []


def test_abort_and_close_cancel_what_is_in_flight_and_stop_the_loop() -> None:
    started, cancelled = threading.Event(), threading.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return reply()

    teacher = teacher_with(httpx.MockTransport(hang))
    teacher.submit(ask("a"), SAMPLING)
    assert started.wait(10)
    teacher.abort()
    assert cancelled.wait(10)  # the HTTP call itself was dropped, not just forgotten
    assert teacher.in_flight == 0 and teacher.poll() == []
    teacher.submit(ask("a"), SAMPLING)  # its key is free again
    loops = [t for t in threading.enumerate() if t.name == f"teacher-{teacher.name}"]
    teacher.close()
    teacher.close()
    assert len(loops) == 1 and not loops[0].is_alive()
