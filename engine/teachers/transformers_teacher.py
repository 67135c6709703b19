"""Local generation with Hugging Face transformers: the embedded default, CPU or GPU.

transformers' `generate` runs a fixed batch to its end: a row that finishes early keeps its slot
(padded) until the batch's longest sample is done, and a new request cannot take it. So this teacher
streams batch by batch: `poll` generates the next `batch_size` queued requests together and returns
them all at once; keeping a second batch queued (`default_in_flight`) means the next `poll` never
waits on the caller.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from synthkiln.engine.config import SamplingConfig, TransformersTeacherConfig
from synthkiln.engine.errors import TeacherError
from synthkiln.engine.models import display_name, resolve_model
from synthkiln.engine.teachers import Completion, Finished, GenerationRequest, Teacher


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
        # The pipeline counts prompt tokens on its feeder thread while the driver's thread encodes a
        # batch: a fast tokenizer used from two threads at once fails ("Already borrowed").
        self._tokenizer_lock = threading.Lock()
        self._torch = torch
        self._queue: list[tuple[GenerationRequest, SamplingConfig]] = []
        self.context_length = _context_length(self._model.config, self._tokenizer)
        self.counts_tokens_exactly = True

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "dtype": self._dtype, "device": self._device}

    @property
    def default_in_flight(self) -> int:
        return 2 * self._batch_size

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def submit(self, request: GenerationRequest, sampling: SamplingConfig) -> None:
        if self._model is None:
            raise TeacherError(f"teacher '{self.name}' is closed")
        if any(queued.key == request.key for queued, _ in self._queue):
            raise ValueError(f"request key {request.key!r} is already in flight")
        self._queue.append((request, sampling))

    def poll(self) -> list[Finished]:
        """Generate the oldest `batch_size` queued requests (those sharing the oldest one's sampling
        settings, which one `generate` call needs) and return them, all finished."""
        if not self._queue:
            return []
        if self._model is None:
            raise TeacherError(f"teacher '{self.name}' is closed")
        sampling = self._queue[0][1]
        batch: list[GenerationRequest] = []
        waiting: list[tuple[GenerationRequest, SamplingConfig]] = []
        for request, settings in self._queue:
            if settings == sampling and len(batch) < self._batch_size:
                batch.append(request)
            else:
                waiting.append((request, settings))
        self._queue = waiting
        return self._generate_batch(batch, sampling)

    def abort(self) -> None:
        """Drop the queued requests: nothing runs between `poll` calls, so that is all in flight."""
        self._queue = []

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Tokens of the templated prompt, counted as `generate` will encode it."""
        with self._tokenizer_lock:
            return len(self._tokenizer(self._chat_text(messages), add_special_tokens=False)["input_ids"])

    def _chat_text(self, messages: list[dict[str, str]]) -> str:
        return self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _generate_batch(self, requests: list[GenerationRequest], sampling: SamplingConfig) -> list[Finished]:
        torch = self._torch
        tokenizer = self._tokenizer
        greedy = sampling.temperature == 0
        # One row per sample, so requests of different `n` share the batch. Greedy samples of one
        # prompt are identical: decode one row, copy it n times.
        rows = [(i, j) for i, r in enumerate(requests) for j in range(1 if greedy else r.n)]
        with self._tokenizer_lock:
            texts = [self._chat_text(requests[i].messages) for i, _ in rows]
            inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
                self._device
            )
        options: dict[str, Any] = {
            "max_new_tokens": sampling.max_tokens,
            "do_sample": False,
            "temperature": None,
            "top_p": None,
            "top_k": None,
        }
        if not greedy:
            seeds = [_row_seed(requests[i].seed, j) for i, j in rows]
            options["logits_processor"] = [_SeededSampler(torch, seeds, sampling.temperature, sampling.top_p)]
        if sampling.stop:
            options.update(stop_strings=sampling.stop, tokenizer=tokenizer)
        with torch.inference_mode():
            output = self._model.generate(**inputs, pad_token_id=tokenizer.pad_token_id, **options)
        prompt_width = inputs["input_ids"].shape[1]
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        eos_ids = self._eos_ids()
        samples: list[list[Completion]] = [[] for _ in requests]
        with self._tokenizer_lock:
            for row, (i, _) in enumerate(rows):
                tokens = output[row, prompt_width:].tolist()
                samples[i].append(self._completion(tokens, eos_ids, int(prompt_lengths[row]), sampling))
        if greedy:
            samples = [s * r.n for s, r in zip(samples, requests, strict=True)]
        return [Finished(r.key, s) for r, s in zip(requests, samples, strict=True)]

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
        self._queue = []
        if self._device == "cuda":
            self._torch.cuda.empty_cache()


def _row_seed(seed: int, sample: int) -> int:
    """The seed of sample `sample` of a request: independent streams for the samples of one prompt."""
    digest = hashlib.sha256(f"{seed}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


# Candidates looked at before sorting the whole vocabulary: at usual temperatures the nucleus of a
# language model's next token lies within them, and sorting ~50k logits a row dominates a CPU step.
_NUCLEUS_PROBE = 256


class _SeededSampler:
    """A logits processor that draws each row's next token with temperature and top-p from that row's
    own generator, and returns logits that force it, so greedy decoding emits it.

    transformers' own sampling draws the whole batch from the global RNG, which makes a sample depend
    on its batch mates. Here row r's k-th token depends only on its seed and its own logits. The
    uniform draws come from CPU generators, so a seed draws the same numbers on CPU and GPU.
    """

    def __init__(self, torch: Any, seeds: list[int], temperature: float, top_p: float) -> None:
        self._torch = torch
        self._generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self._temperature = temperature
        self._top_p = top_p

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        torch = self._torch
        uniform = torch.cat([torch.rand(1, generator=g) for g in self._generators]).to(scores.device)
        uniform = uniform[:, None]
        probs = torch.softmax(scores / self._temperature, dim=-1)
        if self._top_p >= 1:
            token = self._inverse_cdf(probs, uniform)
        else:
            # Rows whose nucleus fits in the probe draw from it; only the others sort everything.
            # Either way a row's candidates and their order depend on its own logits alone.
            top, top_ids = probs.topk(min(_NUCLEUS_PROBE, probs.shape[-1]), dim=-1)
            wide = top.sum(dim=-1) < self._top_p
            token = torch.empty_like(uniform, dtype=torch.long)
            token[~wide] = self._nucleus(top[~wide], top_ids[~wide], uniform[~wide])
            ordered, order = probs[wide].sort(dim=-1, descending=True)
            token[wide] = self._nucleus(ordered, order, uniform[wide])
        return torch.full_like(scores, float("-inf")).scatter_(-1, token, 0.0)

    def _nucleus(self, ordered: Any, order: Any, uniform: Any) -> Any:
        """Token ids drawn from candidates sorted by falling probability, keeping the most likely
        until `top_p` of the mass is covered (the first always)."""
        ordered = ordered.masked_fill(ordered.cumsum(dim=-1) - ordered >= self._top_p, 0.0)
        return order.gather(-1, self._inverse_cdf(ordered, uniform))

    def _inverse_cdf(self, weights: Any, uniform: Any) -> Any:
        """Per row, the index where `uniform` (in [0, 1)) falls in the cumulative weights."""
        torch = self._torch
        cdf = weights.cumsum(dim=-1)
        index = torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True).clamp(max=weights.shape[-1] - 1)
        # Rounding can put the draw at the top of the cdf, past the last token of non-zero weight:
        # take the heaviest one rather than force an impossible token.
        return torch.where(weights.gather(-1, index) > 0, index, weights.argmax(dim=-1, keepdim=True))


def _context_length(config: Any, tokenizer: Any) -> int | None:
    """The model's trained context: its position embeddings, else the tokenizer's declared maximum
    (tokenizers without one declare a huge sentinel, ~1e30, which means unknown)."""
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        return positions
    declared = getattr(tokenizer, "model_max_length", None)
    return declared if isinstance(declared, int) and 0 < declared < 10**9 else None
