"""A teacher served by a pool of Ray actors: `executor = "ray"`.

Each actor holds one real teacher (a vLLM engine on the GPUs of one tensor-parallel group, a
transformers model, an API client) behind its own driver thread, so the engine streams: every request
is one actor call, up to the engine's own in-flight limit per actor, and the actor's driver keeps the
engine full (continuous batching) as calls arrive. Here, the proxy is an ordinary :class:`Teacher`:
`submit` sends a request to the least busy actor, `poll` returns the calls that finished. The pipeline,
its single writer and the steering controller stay in this process and do not know the difference.

Requests carry their own seed, so an actor that dies is restarted by Ray and its calls retried with the
same result; nothing reaches the writer twice (a call returns once) and nothing committed is lost. When
Ray gives up (restarts exhausted), the run stops with its commits intact and resumes like a local one.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from synthkiln.engine.config import SamplingConfig, TeacherConfig
from synthkiln.engine.errors import TeacherError
from synthkiln.engine.executor import HIDE_UNASKED_GPUS
from synthkiln.engine.teachers import Finished, GenerationRequest, Teacher

_POLL_S = 0.05  # a poll waits this long for a call to finish, about one engine step
_START_S = 900  # an engine actor that is not up by then (no room on the cluster, a model that hangs)
ACTOR_RESTARTS = 3  # Ray restarts a dead engine actor this often, retrying its calls each time


class TeacherActor:
    """One teacher and its driver thread, inside a Ray actor (threaded: calls run side by side)."""

    def __init__(self, config: TeacherConfig) -> None:
        from synthkiln.engine.generation import TeacherDriver
        from synthkiln.engine.teachers import build_teacher

        self.teacher = build_teacher(config)
        self.driver = TeacherDriver(self.teacher)
        self._aborts = 0  # calls that began before the latest abort return at once

    def info(self) -> dict[str, Any]:
        teacher = self.teacher
        return {
            "in_flight": teacher.default_in_flight,
            "context_length": teacher.context_length,
            "counts_tokens_exactly": teacher.counts_tokens_exactly,
            "devices": teacher.devices,
            "describe": teacher.describe(),
            "pid": os.getpid(),
        }

    def prompts_tokens(self, prompts: list[list[dict[str, str]]]) -> list[int]:
        return self.teacher.prompts_tokens(prompts)

    def complete(self, request: GenerationRequest, sampling: SamplingConfig) -> Finished:
        from synthkiln.engine.generation import Job

        aborts = self._aborts
        future: Future[Finished] = Future()
        self.driver.put(Job(request, sampling, future.set_result))
        while True:
            try:
                return future.result(timeout=0.2)
            except FutureTimeout:
                self.driver.check()  # the engine's failure, raised to the caller
                if self._aborts != aborts:
                    return Finished(request.key, [], refused="aborted")

    def abort(self) -> None:
        """Drop the requests in flight: the engine stops generating what nobody waits for."""
        self._aborts += 1
        self.driver.cancel()


class RayTeacher(Teacher):
    """The proxy of a teacher's actor pool (see the module docstring); Ray must be initialised."""

    def __init__(self, config: TeacherConfig, actors: int, gpus_per_actor: float) -> None:
        import ray

        super().__init__(config.label, config.model)
        self._ray = ray
        self.backend = config.backend
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus_per_actor * actors > gpus:
            raise TeacherError(
                f"teacher '{config.label}': {actors} actor(s) of {gpus_per_actor:g} GPU(s) need "
                f"{gpus_per_actor * actors:g} GPUs; the Ray cluster has {gpus:g}"
            )
        single = config.model_copy(update={"replicas": 1}) if hasattr(config, "replicas") else config
        # An actor that asked for no GPU is shown none (a transformers teacher would otherwise pick a
        # GPU nobody scheduled, and its dtype with it); Ray pins a 1-CPU actor to one thread
        # (OMP_NUM_THREADS=1), and a model on CPU wants the node's cores.
        env = {} if gpus_per_actor else {**HIDE_UNASKED_GPUS, "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
        actor_class = ray.remote(TeacherActor).options(
            num_cpus=1,
            num_gpus=gpus_per_actor,
            max_restarts=ACTOR_RESTARTS,
            max_task_retries=ACTOR_RESTARTS,
            max_concurrency=1024,
            runtime_env={"env_vars": env},
        )
        self._actors = [actor_class.remote(single) for _ in range(actors)]
        try:
            infos = ray.get([actor.info.remote() for actor in self._actors], timeout=_START_S)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as exc:
            self.close()
            raise TeacherError(
                f"teacher '{config.label}': its Ray actors did not start: {actor_failure(exc)}"
            ) from None
        first = infos[0]
        self._describe = {**first["describe"], "executor": "ray", "actors": actors}
        self.context_length = first["context_length"]
        self.counts_tokens_exactly = first["counts_tokens_exactly"]
        self.devices = sum(info["devices"] for info in infos)
        self._per_actor = first["in_flight"]
        self._pending: dict[Any, int] = {}  # call -> the actor it went to
        self._load = [0] * actors

    @property
    def default_in_flight(self) -> int:
        return self._per_actor * len(self._actors)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def actor_pids(self) -> list[int]:
        """The actors' process ids (what a test kills)."""
        return [info["pid"] for info in self._ray.get([a.info.remote() for a in self._actors])]

    def submit(self, request: GenerationRequest, sampling: SamplingConfig) -> None:
        actor = min(range(len(self._actors)), key=self._load.__getitem__)
        call = self._actors[actor].complete.remote(request, sampling)
        self._pending[call] = actor
        self._load[actor] += 1

    def poll(self) -> list[Finished]:
        if not self._pending:
            return []
        ray = self._ray
        ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=_POLL_S)
        if ready:
            ready, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=0)
        finished = []
        for call in ready:
            actor = self._pending.pop(call)
            self._load[actor] -= 1
            try:
                finished.append(ray.get(call))
            except ray.exceptions.RayTaskError as exc:  # the engine's own failure, as the actor saw it
                raise TeacherError(f"teacher '{self.name}': {getattr(exc, 'cause', None) or exc}") from None
            except ray.exceptions.RayError as exc:  # the actor died past its restarts, lost objects...
                raise self._lost(exc) from None
        return finished

    def _lost(self, exc: Exception) -> TeacherError:
        return TeacherError(
            f"teacher '{self.name}': its Ray actor failed ({actor_failure(exc)}); the run stops here "
            "(everything committed is kept: run the same command again to resume)"
        )

    def abort(self) -> None:
        """Drop the calls in flight: each actor's engine drops its requests, the calls return (their
        results unread) and the load counts go back to zero."""
        ray = self._ray
        try:  # an actor being restarted answers once it is up; one past its restarts, never
            ray.get([actor.abort.remote() for actor in self._actors], timeout=_START_S)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as exc:
            raise self._lost(exc) from None
        ray.wait(list(self._pending), num_returns=len(self._pending), timeout=60)
        self._pending.clear()
        self._load = [0] * len(self._actors)

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return self.prompts_tokens([messages])[0]

    def prompts_tokens(self, prompts: list[list[dict[str, str]]]) -> list[int]:
        """Counted by the actors, a contiguous part of `prompts` each: one round trip per part."""
        if not prompts:
            return []
        size = -(-len(prompts) // len(self._actors))
        calls = [
            actor.prompts_tokens.remote(prompts[start : start + size])
            for actor, start in zip(self._actors, range(0, len(prompts), size), strict=False)
        ]
        try:
            return [tokens for part in self._ray.get(calls) for tokens in part]
        except self._ray.exceptions.RayError as exc:
            raise self._lost(exc) from None

    def describe(self) -> dict[str, Any]:
        return self._describe

    def close(self) -> None:
        for actor in getattr(self, "_actors", []):
            self._ray.kill(actor, no_restart=True)
        self._actors = []


def actor_failure(exc: Exception) -> str:
    """Why an actor call failed, in a line: the teacher's own error where it raised one (Ray puts it
    last, after its traceback), else Ray's first line."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    raised, _, message = lines[-1].partition(": ")
    if raised.startswith("synthkiln.") and message:
        return message
    return lines[0]


def build_ray_teachers(configs: list[TeacherConfig], actors_per_teacher: int | None) -> list[Teacher]:
    """Each teacher as a pool of actors: a vLLM teacher's `replicas` become actors of one tensor-parallel
    group each (`num_gpus` = its size), placed by Ray across the cluster's GPUs."""
    import ray

    on_gpus = ray.cluster_resources().get("GPU", 0) > 0  # vLLM's CPU build runs on a CPU-only cluster
    teachers: list[Teacher] = []
    try:
        for config in configs:
            replicas = getattr(config, "replicas", 1)
            gpus = (
                float(getattr(config, "tensor_parallel_size", 1))
                if config.backend == "vllm" and on_gpus
                else 0.0
            )
            teachers.append(RayTeacher(config, actors_per_teacher or replicas, gpus))
    except BaseException:
        for teacher in teachers:
            teacher.close()
        raise
    return teachers
