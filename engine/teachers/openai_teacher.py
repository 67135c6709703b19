"""Any OpenAI-compatible chat completions endpoint: async, bounded concurrency, retries with backoff.

Each sample is its own request with its own seed (`n` requests of n=1 rather than one of n=n), so
token counts are exact per sample and rows reproduce on servers that honour `seed` (vLLM does).

The HTTP calls run on a private asyncio loop in a daemon thread, started with the first request, so
the caller's thread never needs a loop: `submit` schedules a request there and `poll` collects the
requests whose samples have all come back, in the order they finish.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
import threading
from typing import Any

import httpx

from synthkiln.engine.config import OpenAITeacherConfig, SamplingConfig
from synthkiln.engine.errors import TeacherError
from synthkiln.engine.teachers import Completion, Finished, GenerationRequest, Teacher

_RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# The server turned down this request's content (a prompt over the context, a malformed message):
# another prompt may well pass, so the prompt is refused rather than the teacher failed.
_REFUSED_STATUSES = frozenset({400, 413, 422})
_MAX_BACKOFF_S = 30.0
# How long `poll` waits for a request to finish before handing control back to its caller.
_POLL_S = 0.1


class _Refused(Exception):
    """The server refused one sample for its content; the message says why."""


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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        # Owned by the loop's thread: created there by `_open`, used only by coroutines on it.
        self._client: httpx.AsyncClient | None = None
        self._limit: asyncio.Semaphore | None = None
        self._pending: dict[str, concurrent.futures.Future[Finished]] = {}

    @property
    def default_in_flight(self) -> int:
        # Twice the connections, so a finished sample's slot is taken at once while the caller is
        # busy with what came back.
        return 2 * self._config.concurrency

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def submit(self, request: GenerationRequest, sampling: SamplingConfig) -> None:
        if request.key in self._pending:
            raise ValueError(f"request key {request.key!r} is already in flight")
        self._pending[request.key] = asyncio.run_coroutine_threadsafe(
            self._request(request, sampling), self._start()
        )

    def poll(self) -> list[Finished]:
        """Wait up to 0.1 s for a request to finish; return every finished one. A teacher-wide
        failure of any request (HTTP 401, retries exhausted) is raised here as a TeacherError."""
        if not self._pending:
            return []
        concurrent.futures.wait(
            self._pending.values(), timeout=_POLL_S, return_when=concurrent.futures.FIRST_COMPLETED
        )
        done = [key for key, future in self._pending.items() if future.done()]
        for key in done:
            error = self._pending[key].exception()
            if error is not None:
                del self._pending[key]
                raise error
        return [self._pending.pop(key).result() for key in done]

    def abort(self) -> None:
        """Cancel every request in flight: their HTTP calls are dropped and their slots freed."""
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()

    def close(self) -> None:
        """Cancel what is in flight, close the HTTP client and stop the loop's thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self.abort()
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
        self._loop = self._thread = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "base_url": self._config.base_url}

    def _start(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name=f"teacher-{self.name}", daemon=True)
            thread.start()
            asyncio.run_coroutine_threadsafe(self._open(), loop).result()
            self._loop, self._thread = loop, thread
        return self._loop

    async def _open(self) -> None:
        concurrency = self._config.concurrency
        self._limit = asyncio.Semaphore(concurrency)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self._config.timeout_s),
            headers=self._headers,
            transport=self._transport,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    async def _shutdown(self) -> None:
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _request(self, request: GenerationRequest, sampling: SamplingConfig) -> Finished:
        samples = [asyncio.create_task(self._sample(request, j, sampling)) for j in range(request.n)]
        try:
            await asyncio.wait(samples, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            # One failed sample settles the request: its siblings' answers are not wanted.
            for sample in samples:
                sample.cancel()
        failures = [s.exception() for s in samples if s.done() and not s.cancelled() and s.exception()]
        for failure in failures:
            if not isinstance(failure, _Refused):
                raise failure
        if failures:
            return Finished(request.key, [], refused=str(failures[0]))
        return Finished(request.key, [sample.result() for sample in samples])

    async def _sample(self, request: GenerationRequest, index: int, sampling: SamplingConfig) -> Completion:
        assert self._limit is not None and self._client is not None  # set by `_open` before any request
        async with self._limit:
            return await self._complete(self._client, request, index, sampling)

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
            if response.status_code in _REFUSED_STATUSES:
                raise _Refused(f"HTTP {response.status_code}: {response.text[:300]}")
            if response.status_code != 200:
                raise TeacherError(
                    f"teacher '{self.name}': {self._url} answered HTTP {response.status_code}: "
                    f"{response.text[:300]}"
                )
            return self._parse(response)
        raise TeacherError(
            f"teacher '{self.name}': {self._url} failed after {self._config.max_retries + 1} attempts "
            f"(last: {last_problem})"
        )

    def _backoff(self, attempt: int, last_problem: str) -> float:
        if "retry-after=" in last_problem:
            return min(float(last_problem.rsplit("=", 1)[1]), _MAX_BACKOFF_S)
        delay = min(self.backoff_base_s * 2 ** (attempt - 1), _MAX_BACKOFF_S)
        return delay * random.uniform(0.5, 1.0)  # jitter spreads retries of concurrent requests

    def _parse(self, response: httpx.Response) -> Completion:
        try:
            payload = response.json()
            choice = payload["choices"][0]
            usage = payload.get("usage") or {}
            finish_reason = choice.get("finish_reason")
            text = choice["message"]["content"] or ""
            completion = Completion(
                text=text,
                finish_reason="length" if finish_reason == "length" else "stop",
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
            )
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise TeacherError(
                f"teacher '{self.name}': unexpected response from {self._url}: {exc!r}"
            ) from None
        if finish_reason == "content_filter":
            raise _Refused(f"content filter: the server withheld the reply (partial text: {text[:100]!r})")
        return completion
