"""Teachers: requests in, completions out (text, token counts, finish reason, timing).

Every backend implements :class:`Teacher`; the pipeline never knows which one it talks to.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from synthkiln.engine.config import SamplingConfig, TeacherConfig


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt, sampled `n` times. `seed` makes the samples reproducible whatever the batching."""

    messages: list[dict[str, str]]
    n: int = 1
    seed: int = 0


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" (end of sequence or a stop string) or "length" (hit max_tokens)
    prompt_tokens: int
    completion_tokens: int


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

    @abstractmethod
    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig) -> list[list[Completion]]:
        """Return, for each request, its `n` completions in order."""

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Tokens the prompt takes once templated; here estimated from its characters."""
        return sum(len(m["content"]) for m in messages) // _CHARS_PER_TOKEN_BOUND

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


def build_teacher(config: TeacherConfig) -> Teacher:
    """Instantiate the backend named by `config.backend` (imports it only then)."""
    if config.backend == "transformers":
        from synthkiln.engine.teachers.transformers_teacher import TransformersTeacher

        return TransformersTeacher(config)
    if config.backend == "vllm":
        from synthkiln.engine.teachers.vllm_teacher import VLLMTeacher

        return VLLMTeacher(config)
    from synthkiln.engine.teachers.openai_teacher import OpenAITeacher

    return OpenAITeacher(config)
