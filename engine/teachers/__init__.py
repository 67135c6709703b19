"""Teachers: requests in, completions out (text, token counts, finish reason), continuously.

Every backend implements :class:`Teacher`; the pipeline never knows which one it talks to. A teacher
streams: `submit` hands it a request at any time, `poll` advances generation and returns the requests
that finished, in whatever order they finish, so the caller can keep the engine full (vLLM's
continuous batching) instead of waiting for the slowest sample of a fixed batch. `generate` is the
blocking convenience over the two (tests, judges, warm-up).

A teacher is driven by one thread at a time; sharing one between threads goes through the
pipeline's driver (see `engine/drive.py`).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any

from synthkiln.engine.config import SamplingConfig, TeacherConfig
from synthkiln.engine.errors import TeacherError


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt, sampled `n` times. `seed` makes the samples reproducible whatever the batching."""

    messages: list[dict[str, str]]
    n: int = 1
    seed: int = 0
    key: str = ""  # names the request in its `Finished`; unique among the requests in flight


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" (end of sequence or a stop string) or "length" (hit max_tokens)
    prompt_tokens: int
    completion_tokens: int


class EngineDied(TeacherError):
    """The teacher's engine stopped (a crashed or killed engine process); `restart` may bring it back."""


@dataclass(frozen=True)
class Finished:
    """A request that left the teacher: its `n` completions in order, or why the backend refused it.

    `refused` is for this request alone (a prompt over the context, HTTP 400, a content filter): the
    caller quarantines the prompt and goes on. A failure of the teacher itself (a dead engine, a bad
    API key) is raised as a TeacherError instead.
    """

    key: str
    completions: list[Completion]
    refused: str | None = None


# Backends without a tokenizer here estimate a prompt's tokens from its characters. English BPE text
# averages ~4 characters a token and code ~3; dividing by 8 undercounts typical text by about half, so
# what is stopped is far past the context (the 5 MB seed line), not a prompt near its edge.
_CHARS_PER_TOKEN_BOUND = 8


class Teacher(ABC):
    """A model that answers chat requests. Closing it releases the model (and GPU memory)."""

    backend: str
    devices: int = 1  # accelerators (or CPU sockets) busy while it generates; scales device-seconds
    # Tokens a prompt plus its sample may take; None: unknown, prompts are not checked.
    context_length: int | None = None
    counts_tokens_exactly = False  # False: `prompt_tokens` is the estimate from characters

    def __init__(self, name: str, model: str) -> None:
        self.name = name
        self.model = model

    @property
    @abstractmethod
    def default_in_flight(self) -> int:
        """Requests worth keeping in flight to fill the engine (from its own limits)."""

    @property
    @abstractmethod
    def in_flight(self) -> int:
        """Requests submitted and not yet returned by `poll`."""

    @abstractmethod
    def submit(self, request: GenerationRequest, sampling: SamplingConfig) -> None:
        """Start a request; its `key` must not be in flight already."""

    @abstractmethod
    def poll(self) -> list[Finished]:
        """Advance generation and return the requests finished since the last call.

        With requests in flight it blocks for about one engine step (or until one finishes); with
        none it returns `[]` at once.
        """

    def abort(self) -> None:
        """Drop every request in flight (their results are not wanted); here by finishing them."""
        while self.in_flight:
            self.poll()

    def restart(self) -> None:
        """Bring a dead engine back, its requests in flight submitted again; backends whose failures
        are per request (HTTP) have nothing to restart."""
        raise TeacherError(f"teacher '{self.name}' cannot be restarted")

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig) -> list[list[Completion]]:
        """Return, for each request, its `n` completions in order (blocking; a refusal raises)."""
        keys = [f"generate-{index}" for index in range(len(requests))]
        for key, request in zip(keys, requests, strict=True):
            self.submit(replace(request, key=key), sampling)
        finished: dict[str, Finished] = {}
        try:
            while len(finished) < len(keys):
                for result in self.poll():
                    finished[result.key] = result
        except BaseException:
            self.abort()  # the others would stay in flight under keys a later call reuses
            raise
        refused = [result for result in finished.values() if result.refused is not None]
        if refused:
            raise TeacherError(f"teacher '{self.name}' refused a request: {refused[0].refused}")
        return [finished[key].completions for key in keys]

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Tokens the prompt takes once templated; here estimated from its characters."""
        return sum(len(m["content"]) for m in messages) // _CHARS_PER_TOKEN_BOUND

    def prompts_tokens(self, prompts: list[list[dict[str, str]]]) -> list[int]:
        """`prompt_tokens` of each prompt (one call for a window: a remote teacher answers it in one
        round trip rather than one per prompt)."""
        return [self.prompt_tokens(messages) for messages in prompts]

    @abstractmethod
    def close(self) -> None:
        """Release the model. Safe to call twice."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "backend": self.backend, "model": self.model}

    def __enter__(self) -> Teacher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sample_seed(base_seed: int, prompt_id: str) -> int:
    """Per-request seed derived from the recipe seed and the prompt's content hash (fits int32)."""
    digest = hashlib.sha256(f"{base_seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def build_teachers(configs: list[TeacherConfig]) -> list[Teacher]:
    """The teachers of a recipe. vLLM engines are placed on GPUs first (see `plan_gpus`), so a layout
    that does not fit is refused before any model loads; on error, those already loaded are closed."""
    from synthkiln.engine.teachers.vllm_teacher import gpu_count, plan_gpus

    layout: list[list[list[int]] | None] = [None] * len(configs)
    if any(config.backend == "vllm" for config in configs):
        count = gpu_count()
        if count is not None:
            layout = plan_gpus(configs, count)
    teachers: list[Teacher] = []
    try:
        for config, gpus in zip(configs, layout, strict=True):
            teachers.append(build_teacher(config, gpus))
    except BaseException:
        for teacher in teachers:
            teacher.close()
        raise
    return teachers


def build_teacher(config: TeacherConfig, gpus: list[list[int]] | None = None) -> Teacher:
    """Instantiate the backend named by `config.backend` (imports it only then); `gpus` places a vLLM
    teacher's replicas."""
    if config.backend == "transformers":
        from synthkiln.engine.teachers.transformers_teacher import TransformersTeacher

        return TransformersTeacher(config)
    if config.backend == "vllm":
        from synthkiln.engine.teachers.vllm_teacher import VLLMTeacher

        return VLLMTeacher(config, gpus)
    from synthkiln.engine.teachers.openai_teacher import OpenAITeacher

    return OpenAITeacher(config)
