"""Pipeline generation throughput against the raw backend, same prompts and sampling, in one run.

The raw side calls the backend the way its own docs show (transformers `generate` on padded batches;
vLLM's offline `LLM.chat`); the pipeline side is `Pipeline.run` writing a real dataset directory,
filters and Parquet included. Both count generated tokens; the ratio is pipeline / raw (target >= 0.9).

    python benchmarks/bench_generate.py --backend transformers
    .cache/vllm-venv/bin/python benchmarks/bench_generate.py --backend vllm
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

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


def raw_vllm(model_dir: str, prompts: list[str], max_tokens: int) -> tuple[int, float]:
    from vllm import LLM, SamplingParams

    # The CPU build's documented settings, the same ones the vllm teacher sets.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{(os.cpu_count() or 1) - 1}")
    llm = LLM(model=model_dir, dtype="float32", enforce_eager=True, max_model_len=2048)
    llm.chat([{"role": "user", "content": "warm up"}], SamplingParams(max_tokens=4), use_tqdm=False)
    start = time.perf_counter()
    outputs = llm.chat(
        [[{"role": "user", "content": p}] for p in prompts],
        SamplingParams(temperature=0, max_tokens=max_tokens),
        use_tqdm=False,
    )
    elapsed = time.perf_counter() - start
    llm.llm_engine.engine_core.shutdown()
    return sum(len(o.outputs[0].token_ids) for o in outputs), elapsed


def pipeline_run(
    backend: str, model_dir: str, prompts: list[str], max_tokens: int, batch_size: int
) -> tuple[int, float]:
    from synthkiln.engine.config import SamplingConfig
    from synthkiln.engine.pipeline import Pipeline
    from synthkiln.engine.teachers import GenerationRequest

    with tempfile.TemporaryDirectory() as scratch:
        seeds = Path(scratch) / "seeds.jsonl"
        seeds.write_text("".join(json.dumps({"instruction": p}) + "\n" for p in prompts))
        recipe = {
            "name": "bench",
            "seeds": {"path": str(seeds)},
            "task": {"kind": "instruction", "template": "{{ instruction }}"},
            "teachers": [{"backend": backend, "model": model_dir, "dtype": "float32"}],
            "sampling": {"temperature": 0, "max_tokens": max_tokens},
            "generation": {"batch_size": batch_size if backend == "transformers" else len(prompts)},
            "filters": {"unterminated": False},
        }
        if backend == "transformers":
            recipe["teachers"][0]["batch_size"] = batch_size
        else:
            recipe["teachers"][0]["max_model_len"] = 2048
        with Pipeline.from_recipe(recipe) as pipeline:
            # Load and warm the model outside the timed region, as the raw side does.
            warm_up = [GenerationRequest([{"role": "user", "content": "warm up"}])]
            pipeline.teachers[0].generate(warm_up, SamplingConfig(max_tokens=4))
            start = time.perf_counter()
            manifest = pipeline.run(Path(scratch) / "out", progress=False)
            elapsed = time.perf_counter() - start
    return manifest["tokens"]["completion"], elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["transformers", "vllm"], required=True)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each side; best kept")
    args = parser.parse_args()

    from synthkiln.engine.models import prepare_embedded

    model_dir = str(prepare_embedded("smollm2"))
    raw_runs, pipeline_runs = [], []
    for _ in range(args.repeats):  # alternate so that machine noise hits both sides alike
        if args.backend == "transformers":
            raw_runs.append(raw_transformers(model_dir, PROMPTS, args.max_tokens, args.batch_size))
        else:
            raw_runs.append(raw_vllm(model_dir, PROMPTS, args.max_tokens))
        pipeline_runs.append(pipeline_run(args.backend, model_dir, PROMPTS, args.max_tokens, args.batch_size))
    raw_tokens, raw_s = max(raw_runs, key=lambda r: r[0] / r[1])
    pipe_tokens, pipe_s = max(pipeline_runs, key=lambda r: r[0] / r[1])
    result = {
        "benchmark": "generate",
        "backend": args.backend,
        "model": "SmolLM2-135M-Instruct (float32, greedy)",
        "prompts": len(PROMPTS),
        "max_tokens": args.max_tokens,
        "batch_size": args.batch_size,
        "raw": {
            "tokens": raw_tokens,
            "seconds": round(raw_s, 3),
            "tokens_per_s": round(raw_tokens / raw_s, 1),
        },
        "pipeline": {
            "tokens": pipe_tokens,
            "seconds": round(pipe_s, 3),
            "tokens_per_s": round(pipe_tokens / pipe_s, 1),
        },
        "ratio_pipeline_over_raw": round((pipe_tokens / pipe_s) / (raw_tokens / raw_s), 3),
        "target_ratio": 0.9,
    }
    suffix = "gpu" if "gpu" in machine_info() else "cpu"
    save_report(f"generate_{args.backend}_{suffix}", result)


if __name__ == "__main__":
    main()
