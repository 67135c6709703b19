"""Any OpenAI-compatible chat completions endpoint: async, bounded concurrency, retries with backoff.

Each sample is its own request with its own seed (`n` requests of n=1 rather than one of n=n), so
token counts are exact per sample and rows reproduce on servers that honour `seed` (vLLM does).
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import httpx

from synthkiln.engine.config import OpenAITeacherConfig, SamplingConfig
from synthkiln.engine.errors import TeacherError
from synthkiln.engine.teachers import Completion, GenerationRequest, Teacher

_RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_MAX_BACKOFF_S = 30.0


class OpenAITeacher(Teacher):
    backend = "openai"

    def __init__(
        self, config: OpenAITeacherConfig, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        super().__init__(config.label, config.model)
        self._config = config
        self._url = config.base_url.rstrip("/") + "/chat/completions"
        key = os.environ.get(config.api_key_env)
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._transport = transport  # tests inject HTTP failures of a remote server here
        self.context_length = config.context_length
        self.backoff_base_s = 0.5

    def close(self) -> None:
        """Nothing to release: each `generate` call opens and closes its own HTTP client."""

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "base_url": self._config.base_url}

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig) -> list[list[Completion]]:
        return asyncio.run(self.agenerate(requests, sampling))

    async def agenerate(
        self, requests: list[GenerationRequest], sampling: SamplingConfig
    ) -> list[list[Completion]]:
        limit = asyncio.Semaphore(self._config.concurrency)
        timeout = httpx.Timeout(self._config.timeout_s)
        async with httpx.AsyncClient(
            timeout=timeout, headers=self._headers, transport=self._transport
        ) as client:

            async def one(request: GenerationRequest, index: int) -> Completion:
                async with limit:
                    return await self._complete(client, request, index, sampling)

            per_sample = [one(r, j) for r in requests for j in range(r.n)]
            flat = await asyncio.gather(*per_sample)
        results, position = [], 0
        for request in requests:
            results.append(list(flat[position : position + request.n]))
            position += request.n
        return results

    async def _complete(
        self, client: httpx.AsyncClient, request: GenerationRequest, index: int, sampling: SamplingConfig
    ) -> Completion:
        body: dict[str, Any] = {
            "model": self._config.model,
            "messages": request.messages,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "seed": request.seed + index,
            "n": 1,
        }
        if sampling.temperature > 0:
            body["top_p"] = sampling.top_p
        if sampling.stop:
            body["stop"] = sampling.stop
        last_problem = ""
        for attempt in range(self._config.max_retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff(attempt, last_problem))
            try:
                response = await client.post(self._url, json=body)
            except httpx.TransportError as exc:
                last_problem = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code in _RETRY_STATUSES:
                last_problem = f"HTTP {response.status_code}"
                retry_after = response.headers.get("retry-after", "")
                if retry_after.replace(".", "", 1).isdigit():
                    last_problem += f" retry-after={retry_after}"
                continue
            if response.status_code != 200:
                raise TeacherError(
                    f"teacher '{self.name}': {self._url} answered HTTP {response.status_code}: "
                    f"{response.text[:300]}"
                )
            return self._parse(response.json())
        raise TeacherError(
            f"teacher '{self.name}': {self._url} failed after {self._config.max_retries + 1} attempts "
            f"(last: {last_problem})"
        )

    def _backoff(self, attempt: int, last_problem: str) -> float:
        if "retry-after=" in last_problem:
            return min(float(last_problem.rsplit("=", 1)[1]), _MAX_BACKOFF_S)
        delay = min(self.backoff_base_s * 2 ** (attempt - 1), _MAX_BACKOFF_S)
        return delay * random.uniform(0.5, 1.0)  # jitter spreads retries of concurrent requests

    def _parse(self, payload: dict[str, Any]) -> Completion:
        try:
            choice = payload["choices"][0]
            usage = payload.get("usage") or {}
            return Completion(
                text=choice["message"]["content"] or "",
                finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
            )
        except (KeyError, IndexError, TypeError) as exc:
            raise TeacherError(
                f"teacher '{self.name}': unexpected response from {self._url}: {exc!r}"
            ) from None
