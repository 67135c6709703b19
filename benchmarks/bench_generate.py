"""Pipeline generation throughput against the raw backend, same prompts and sampling, in one run.

Two cases:

- `defaults` (vLLM): at least 192 prompts whose answers differ widely in length (one word to an
  essay), sampled (temperature 0.8, max_tokens 256, a seed per request), the pipeline at recipe
  defaults (nothing about batching or requests in flight set) against raw `LLM.chat` over all
  prompts in one call. This is what a new user gets; target >= 0.95x.
- `small`: the original 32 short greedy prompts (64 tokens), transformers `generate` on batches of 8
  or vLLM `LLM.chat`, the pipeline's window set to match; target >= 0.9x.

The pipeline side is `Pipeline.run` writing a real dataset directory, stages and Parquet included.
Both sides count generated tokens; the ratio is pipeline / raw tokens per second.

    python benchmarks/bench_generate.py --backend transformers
    .cache/vllm-venv/bin/python benchmarks/bench_generate.py --backend vllm [--prompts 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from common import machine_info, save_report

PROMPTS = [
    f"{verb} {topic} in a short paragraph."
    for verb in ("Explain", "Describe", "Summarise", "Give an example of")
    for topic in (
        "photosynthesis",
        "a hash table",
        "the water cycle",
        "compound interest",
        "a binary search",
        "plate tectonics",
        "the French revolution",
        "vaccination",
    )
]
TOPICS = [
    "photosynthesis", "a hash table", "the water cycle", "compound interest", "a binary search",
    "plate tectonics", "the French revolution", "vaccination", "black holes", "inflation", "recursion",
    "the immune system", "supply and demand", "climate change", "the Roman empire", "neural networks",
]  # fmt: skip
# From one word to an essay: the lengths a real seed set mixes, which a fixed batch waits on.
SHAPES = [
    "Answer with one word: is {t} a scientific topic?",
    "Give a one-sentence definition of {t}.",
    "List three facts about {t}.",
    "Explain {t} to a ten-year-old.",
    "Write a detailed essay about {t}, with an introduction, three sections and a conclusion.",
    "Write a long story in which {t} plays a central role.",
]


def uneven_prompts(count: int) -> list[str]:
    prompts = [shape.format(t=topic) for shape in SHAPES for topic in TOPICS]
    repeats = [f"{p} (variant {i})" for i in range(count // len(prompts) + 1) for p in prompts]
    return repeats[:count]


def raw_transformers(
    model_dir: str, prompts: list[str], max_tokens: int, batch_size: int
) -> tuple[int, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    warm_up = tokenizer(["warm up"], return_tensors="pt")
    model.generate(**warm_up, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    generated = 0
    start = time.perf_counter()
    for offset in range(0, len(prompts), batch_size):
        chunk = prompts[offset : offset + batch_size]
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
            )
            for p in chunk
        ]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            output = model.generate(
                **inputs, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
            )
        new = output[:, inputs["input_ids"].shape[1] :]
        for row in new.tolist():
            generated += row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
    return generated, time.perf_counter() - start


def raw_vllm(model_dir: str, prompts: list[str], sampling: dict[str, Any]) -> tuple[int, float]:
    from vllm import LLM, SamplingParams

    from synthkiln.engine.teachers import sample_seed

    # The CPU build's documented settings, the same ones the vllm teacher sets (seeded requests need
    # chunked prefill off on the CPU build; see DESIGN.md).
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{(os.cpu_count() or 1) - 1}")
    llm = LLM(
        model=model_dir, dtype="float32", enforce_eager=True, max_model_len=2048, enable_chunked_prefill=False
    )
    llm.chat([{"role": "user", "content": "warm up"}], SamplingParams(max_tokens=4), use_tqdm=False)
    params = [
        SamplingParams(
            temperature=sampling["temperature"],
            top_p=sampling.get("top_p", 0.95) if sampling["temperature"] > 0 else 1.0,
            max_tokens=sampling["max_tokens"],
            seed=sample_seed(0, prompt),
        )
        for prompt in prompts
    ]
    start = time.perf_counter()
    outputs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    llm.llm_engine.engine_core.shutdown()
    return sum(len(o.outputs[0].token_ids) for o in outputs), elapsed


def pipeline_run(
    backend: str, model_dir: str, prompts: list[str], sampling: dict[str, Any], generation: dict[str, Any]
) -> tuple[int, float, dict[str, Any]]:
    from synthkiln.engine.config import SamplingConfig
    from synthkiln.engine.pipeline import Pipeline
    from synthkiln.engine.teachers import GenerationRequest

    with tempfile.TemporaryDirectory() as scratch:
        seeds = Path(scratch) / "seeds.jsonl"
        seeds.write_text("".join(json.dumps({"instruction": p}) + "\n" for p in prompts))
        teacher: dict[str, Any] = {"backend": backend, "model": model_dir, "dtype": "float32"}
        if backend == "transformers":
            teacher["batch_size"] = generation.get("batch_size", 8)
        else:
            teacher["max_model_len"] = 2048
        recipe = {
            "name": "bench",
            "seeds": {"path": str(seeds)},
            "task": {"kind": "instruction", "template": "{{ instruction }}"},
            "teachers": [teacher],
            "sampling": sampling,
            "generation": generation,
        }
        with Pipeline.from_recipe(recipe) as pipeline:
            # Load and warm the model outside the timed region, as the raw side does.
            warm_up = [GenerationRequest([{"role": "user", "content": "warm up"}])]
            pipeline.teachers[0].generate(warm_up, SamplingConfig(max_tokens=4))
            start = time.perf_counter()
            manifest = pipeline.run(Path(scratch) / "out", progress=False)
            elapsed = time.perf_counter() - start
    return manifest["tokens"]["completion"], elapsed, manifest["pipeline"]


def side(tokens: int, seconds: float) -> dict[str, Any]:
    return {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["transformers", "vllm"], required=True)
    parser.add_argument("--prompts", type=int, default=192, help="prompts of the defaults case (vLLM)")
    parser.add_argument("--batch-size", type=int, default=8, help="the small case's batch")
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs of each side; best kept")
    args = parser.parse_args()

    from synthkiln.engine.models import prepare_embedded

    model_dir = str(prepare_embedded("smollm2"))
    cases: dict[str, tuple[list[str], dict[str, Any], dict[str, Any], float]] = {
        "small": (
            PROMPTS,
            {"temperature": 0, "max_tokens": 64},
            {"batch_size": args.batch_size if args.backend == "transformers" else len(PROMPTS)},
            0.9,
        ),
    }
    if args.backend == "vllm":  # recipe defaults: no generation settings at all
        cases["defaults"] = (uneven_prompts(args.prompts), {"temperature": 0.8, "max_tokens": 256}, {}, 0.95)
    result: dict[str, Any] = {"benchmark": "generate", "backend": args.backend, "cases": {}}
    for name, (prompts, sampling, generation, target) in cases.items():
        raw_runs, pipeline_runs = [], []
        for _ in range(args.repeats):  # alternate so that machine noise hits both sides alike
            if args.backend == "transformers":
                raw_runs.append(raw_transformers(model_dir, prompts, sampling["max_tokens"], args.batch_size))
            else:
                raw_runs.append(raw_vllm(model_dir, prompts, sampling))
            pipeline_runs.append(pipeline_run(args.backend, model_dir, prompts, sampling, generation))
        raw_tokens, raw_s = max(raw_runs, key=lambda r: r[0] / r[1])
        pipe_tokens, pipe_s, occupancy = max(pipeline_runs, key=lambda r: r[0] / r[1])
        result["cases"][name] = {
            "model": "SmolLM2-135M-Instruct (float32)",
            "prompts": len(prompts),
            "sampling": sampling,
            "generation": generation or "recipe defaults",
            "raw": side(raw_tokens, raw_s),
            "pipeline": side(pipe_tokens, pipe_s),
            "pipeline_occupancy": occupancy,
            "ratio_pipeline_over_raw": round((pipe_tokens / pipe_s) / (raw_tokens / raw_s), 3),
            "target_ratio": target,
        }
    suffix = "gpu" if "gpu" in machine_info() else "cpu"
    save_report(f"generate_{args.backend}_{suffix}", result)


if __name__ == "__main__":
    main()
