"""A deterministic teacher for tests whose verdicts must be known: fixed answers, chosen finish order."""

from __future__ import annotations

import time
from collections.abc import Callable

from synthkiln.engine.config import SamplingConfig
from synthkiln.engine.teachers import Completion, Finished, GenerationRequest, Teacher


class ScriptedTeacher(Teacher):
    """Answers each prompt with fixed samples, picked by a word of the prompt: runs are reproducible
    whatever the batching, and the samples can be near-duplicates of each other on purpose. A script
    may instead be a function of the prompt's last message and the sampling settings.

    A request takes `polls[word]` polls to finish (1 by default), so prompts can finish out of the
    order they were submitted in; `finished` records their words in the order they left. A poll with requests in
    flight takes `poll_seconds`, as an engine step would.
    """

    backend = "scripted"

    def __init__(
        self,
        script: dict[str, list[str]] | Callable[[str, SamplingConfig], list[str]],
        polls: dict[str, int] | None = None,
        capacity: int = 8,
        name: str = "scripted",
        poll_seconds: float = 0.0,
    ):
        super().__init__(name, "scripted-model")
        self.script, self.polls, self.capacity, self.poll_seconds = (
            script,
            polls or {},
            capacity,
            poll_seconds,
        )
        self.asked: list[str] = []
        self.temperatures: list[float] = []  # each request's, in the order they were submitted
        self.finished: list[str] = []
        self.finished_at: list[float] = []  # time.monotonic() of each, in the same order
        self._running: dict[str, tuple[int, list[Completion]]] = {}
        self._words: dict[str, str] = {}

    @property
    def default_in_flight(self) -> int:
        return self.capacity

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def submit(self, request: GenerationRequest, sampling: SamplingConfig) -> None:
        content = request.messages[-1]["content"]
        if callable(self.script):
            word, texts = content, self.script(content, sampling)
        else:
            word = next(k for k in self.script if k in content)
            texts = self.script[word]
        self.asked.append(word)
        self.temperatures.append(sampling.temperature)
        samples = [Completion(text, "stop", 7, len(text.split())) for text in texts[: request.n]]
        self._running[request.key] = (self.polls.get(word, 1), samples)
        self._words[request.key] = word

    def poll(self) -> list[Finished]:
        if self._running:
            time.sleep(self.poll_seconds)  # an engine step
        done = []
        for key, (left, samples) in list(self._running.items()):
            if left <= 1:
                del self._running[key]
                done.append(Finished(key, samples))
            else:
                self._running[key] = (left - 1, samples)
        self.finished.extend(self._words[f.key] for f in done)
        self.finished_at.extend(time.monotonic() for _ in done)
        return done

    def close(self) -> None:
        pass
