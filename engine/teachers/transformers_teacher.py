"""Local generation with Hugging Face transformers: the embedded default, CPU or GPU."""

from __future__ import annotations

from typing import Any

from synthkiln.engine.config import SamplingConfig, TransformersTeacherConfig
from synthkiln.engine.errors import TeacherError
from synthkiln.engine.models import display_name, resolve_model
from synthkiln.engine.teachers import Completion, GenerationRequest, Teacher


class TransformersTeacher(Teacher):
    backend = "transformers"

    def __init__(self, config: TransformersTeacherConfig) -> None:
        super().__init__(config.label, display_name(config.model))
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_model(config.model)
        self._device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = config.dtype
        if dtype == "auto":
            dtype = "bfloat16" if self._device == "cuda" else "float32"
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
            self._model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        except OSError as exc:
            raise TeacherError(
                f"teacher '{config.label}': cannot load model '{config.model}': {exc}"
            ) from None
        self._model.to(self._device).eval()
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._dtype = dtype
        self._batch_size = config.batch_size
        self._torch = torch
        self.context_length = _context_length(self._model.config, self._tokenizer)
        self.counts_tokens_exactly = True

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "dtype": self._dtype, "device": self._device}

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig) -> list[list[Completion]]:
        if self._model is None:
            raise TeacherError(f"teacher '{self.name}' is closed")
        results: list[list[Completion]] = []
        for start in range(0, len(requests), self._batch_size):
            results.extend(self._generate_batch(requests[start : start + self._batch_size], sampling))
        return results

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Tokens of the templated prompt, counted as `generate` will encode it."""
        return len(self._tokenizer(self._chat_text(messages), add_special_tokens=False)["input_ids"])

    def _chat_text(self, messages: list[dict[str, str]]) -> str:
        return self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _generate_batch(
        self, requests: list[GenerationRequest], sampling: SamplingConfig
    ) -> list[list[Completion]]:
        torch = self._torch
        tokenizer = self._tokenizer
        texts = [self._chat_text(r.messages) for r in requests]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            self._device
        )
        n = requests[0].n
        greedy = sampling.temperature == 0
        # Greedy samples of one prompt are identical: decode once, copy n times.
        drawn = 1 if greedy else n
        options: dict[str, Any] = {"max_new_tokens": sampling.max_tokens, "num_return_sequences": drawn}
        if not greedy:
            options.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
            # One generator drives the whole batch, so the batch's first seed stands for all of it;
            # batches are fixed windows of prompts, which keeps reruns reproducible.
            torch.manual_seed(requests[0].seed)
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if sampling.stop:
            options.update(stop_strings=sampling.stop, tokenizer=tokenizer)
        with torch.inference_mode():
            output = self._model.generate(**inputs, pad_token_id=tokenizer.pad_token_id, **options)
        prompt_width = inputs["input_ids"].shape[1]
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        eos_ids = self._eos_ids()
        results: list[list[Completion]] = []
        for i, request in enumerate(requests):
            if request.n != n:
                raise ValueError("all requests of one batch must ask for the same n")
            samples = []
            for j in range(n):
                tokens = output[i * drawn + j % drawn, prompt_width:].tolist()
                samples.append(self._completion(tokens, eos_ids, int(prompt_lengths[i]), sampling))
            results.append(samples)
        return results

    def _completion(
        self, tokens: list[int], eos_ids: set[int], prompt_tokens: int, sampling: SamplingConfig
    ) -> Completion:
        finish_reason = "length"
        for position, token in enumerate(tokens):
            if token in eos_ids:
                tokens, finish_reason = tokens[: position + 1], "stop"
                break
        text = self._tokenizer.decode(tokens, skip_special_tokens=True)
        for stop in sampling.stop:
            cut = text.find(stop)
            if cut >= 0:
                text, finish_reason = text[:cut], "stop"
        return Completion(text, finish_reason, prompt_tokens, len(tokens))

    def _eos_ids(self) -> set[int]:
        eos = self._model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        if self._tokenizer.eos_token_id is not None:
            ids.add(self._tokenizer.eos_token_id)
        return ids

    def close(self) -> None:
        if getattr(self, "_model", None) is None:
            return
        self._model = None
        if self._device == "cuda":
            self._torch.cuda.empty_cache()


def _context_length(config: Any, tokenizer: Any) -> int | None:
    """The model's trained context: its position embeddings, else the tokenizer's declared maximum
    (tokenizers without one declare a huge sentinel, ~1e30, which means unknown)."""
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        return positions
    declared = getattr(tokenizer, "model_max_length", None)
    return declared if isinstance(declared, int) and 0 < declared < 10**9 else None
