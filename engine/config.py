"""Recipes: validated pydantic models with defaults and field docs, loaded from TOML or YAML.

Paths inside a recipe file are relative to that file; paths given with ``--set`` are relative to the
current directory, like any other command-line path.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from synthkiln.engine.errors import RecipeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SeedsConfig(_Strict):
    """Where seed rows (human prompts, problems or documents) come from."""

    path: str | None = Field(None, description="Local JSONL, JSONL.gz or Parquet file of seed rows.")
    hf_dataset: str | None = Field(
        None, description="Hugging Face dataset name, used when `path` is unset (needs network and `[hf]`)."
    )
    hf_config: str | None = Field(None, description="Configuration name of the Hugging Face dataset.")
    split: str = Field("train", description="Split of the Hugging Face dataset.")
    limit: int | None = Field(None, ge=1, description="Read only the first N seed rows.")

    @model_validator(mode="after")
    def _one_source(self) -> SeedsConfig:
        if self.path is None and self.hf_dataset is None:
            raise ValueError("set `path` (a local file) or `hf_dataset`")
        return self


class _TaskBase(_Strict):
    template: str | None = Field(
        None, description="Jinja template (inline) for the user message, replacing the built-in one."
    )
    template_file: str | None = Field(
        None, description="File holding the Jinja template for the user message."
    )
    system: str | None = Field(None, description="System message sent before the user message.")
    domain: str | None = Field(None, description="Domain label recorded on every row.")
    personas: list[str] = Field(
        default_factory=list, description="Personas rotated over prompts for coverage."
    )
    formats: list[str] = Field(default_factory=list, description="Answer formats rotated over prompts.")
    difficulties: list[str] = Field(
        default_factory=list, description="Difficulty levels rotated over prompts."
    )
    prompts_per_seed: int = Field(1, ge=1, description="Prompts rendered per seed row (rotation steps).")
    carry_fields: list[str] = Field(
        default_factory=list,
        description="Seed fields copied onto every row (`seed_fields`), e.g. tests a verifier runs.",
    )

    @model_validator(mode="after")
    def _one_template(self) -> _TaskBase:
        if self.template is not None and self.template_file is not None:
            raise ValueError("set `template` or `template_file`, not both")
        return self


class InstructionTask(_TaskBase):
    """Seed instruction (or topic) -> question/answer pair or multi-turn conversation."""

    kind: Literal["instruction"]
    instruction_field: str = Field("instruction", description="Seed field holding the instruction or topic.")
    from_topic: bool = Field(
        False, description="Treat the seed field as a topic: the teacher writes the questions too."
    )
    turns: int = Field(1, ge=1, le=8, description="User/assistant exchanges per conversation.")


class ReasoningTask(_TaskBase):
    """Problem -> step-by-step solution checked backwards, with an extracted final answer."""

    kind: Literal["reasoning"]
    question_field: str = Field("question", description="Seed field holding the problem.")
    answer_field: str | None = Field(
        "answer", description="Seed field holding the ground truth (a `#### 42` tail is understood)."
    )


class AugmentationTask(_TaskBase):
    """Human document -> one variant per entry of `variants`."""

    kind: Literal["augmentation"]
    text_field: str = Field("text", description="Seed field holding the document.")
    variants: list[Literal["paraphrase", "reformat", "translate", "extend"]] = Field(
        default_factory=lambda: ["paraphrase"], min_length=1, description="Variants written per document."
    )
    language: str = Field("French", description="Target language of the `translate` variant.")


class DomainTask(_TaskBase):
    """User template with slots filled from seed fields, plus constraints the answer must follow."""

    kind: Literal["domain"]
    constraints: list[str] = Field(default_factory=list, description="Constraints appended to the prompt.")

    @model_validator(mode="after")
    def _needs_template(self) -> DomainTask:
        if self.template is None and self.template_file is None:
            raise ValueError("a domain task needs `template` or `template_file` (there is no built-in one)")
        return self


TaskConfig = Annotated[
    InstructionTask | ReasoningTask | AugmentationTask | DomainTask, Field(discriminator="kind")
]


class _TeacherBase(_Strict):
    name: str | None = Field(None, description="Name recorded on rows; defaults to the backend name.")
    weight: float = Field(
        1.0, gt=0, description="Share of prompts sent to this teacher, relative to the others."
    )

    @property
    def label(self) -> str:
        return self.name or self.backend  # type: ignore[attr-defined]


class TransformersTeacherConfig(_TeacherBase):
    """Local generation with Hugging Face transformers (CPU or GPU)."""

    backend: Literal["transformers"]
    model: str = Field(
        "embedded:smollm2", description="Model directory, hub id, or `embedded:smollm2` (the shipped model)."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="`auto`: float32 on CPU, bfloat16 on GPU."
    )
    batch_size: int = Field(8, ge=1, description="Prompts per forward batch.")


class VLLMTeacherConfig(_TeacherBase):
    """Offline vLLM engine on this node."""

    backend: Literal["vllm"]
    model: str = Field(
        "embedded:smollm2", description="Safetensors model directory, hub id or `embedded:...`."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="Weights dtype.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one model is sharded over.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Share of GPU memory vLLM may take.")
    max_model_len: int | None = Field(None, ge=16, description="Context length cap (saves KV-cache memory).")
    enforce_eager: bool = Field(False, description="Disable CUDA graphs (always on for the CPU build).")
    replicas: int = Field(
        1,
        ge=1,
        description="Engines behind this teacher (data parallel on one node), each its own process on "
        "its own `tensor_parallel_size` GPUs (on CPU hosts, its own share of the cores).",
    )


class OpenAITeacherConfig(_TeacherBase):
    """Any OpenAI-compatible chat completions server (vllm serve, llama.cpp server, hosted APIs)."""

    backend: Literal["openai"]
    model: str = Field(description="Model name the server knows.")
    base_url: str = Field(description="API root, e.g. http://127.0.0.1:8000/v1.")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Environment variable holding the API key, if any."
    )
    concurrency: int = Field(8, ge=1, description="Requests in flight at once.")
    timeout_s: float = Field(120.0, gt=0, description="Timeout of one request, in seconds.")
    max_retries: int = Field(5, ge=0, description="Retries on 429, 5xx and connection errors, with backoff.")
    context_length: int = Field(
        32768,
        ge=16,
        description="Context of the served model in tokens: prompts estimated (from their characters) "
        "not to fit with `max_tokens` are quarantined instead of sent.",
    )


TeacherConfig = Annotated[
    TransformersTeacherConfig | VLLMTeacherConfig | OpenAITeacherConfig, Field(discriminator="backend")
]


class SamplingConfig(_Strict):
    """Sampling settings shared by all teachers. `temperature = 0` decodes greedily."""

    temperature: float = Field(0.7, ge=0, description="0 decodes greedily (reproducible rows).")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass.")
    max_tokens: int = Field(512, ge=1, description="Most tokens generated per sample.")
    stop: list[str] = Field(default_factory=list, description="Strings that end a sample.")


class GenerationConfig(_Strict):
    """How many samples to draw and which to keep."""

    samples_per_prompt: int = Field(1, ge=1, description="Samples drawn per prompt.")
    keep: Literal["all", "first"] = Field(
        "all",
        description="`all`: every sample passing all stages; `first`: the first passing one per prompt.",
    )
    batch_size: int = Field(
        16,
        ge=1,
        description="Prompts per window: the stages see finished rows this many prompts at a time, in "
        "seed order. Teachers do not wait for a window: they stream (see `max_in_flight`).",
    )
    max_in_flight: int | None = Field(
        None,
        ge=1,
        description="Requests (prompts) each teacher holds at once; default: what fills its engine "
        "(vLLM: max_num_seqs per replica over samples_per_prompt; transformers: two batches; "
        "OpenAI-compatible: its concurrency).",
    )


class FiltersConfig(_Strict):
    """Cheap filters run before any verifier."""

    min_words: int = Field(1, ge=0, description="Reject responses with fewer words.")
    max_words: int | None = Field(None, ge=1, description="Reject responses with more words.")
    refusal: bool = Field(True, description="Reject refusals (\"I'm sorry, but I can't...\").")
    unterminated: bool = Field(True, description="Reject samples cut off by `max_tokens`.")


class DedupConfig(_Strict):
    """Streaming near-duplicate removal: each sample against everything accepted so far."""

    enabled: bool = Field(True, description="Reject near-duplicates of accepted samples.")
    threshold: float = Field(
        0.8, gt=0, lt=1, description="Estimated Jaccard similarity that counts as duplicate."
    )
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations per signature.")
    ngram: int = Field(5, ge=1, description="Words per shingle.")
    text_field: str = Field("response", description="Text column compared.")
    backend: Literal["auto", "numba", "triton"] = Field("auto", description="Signature kernel.")
    against: list[str] = Field(
        default_factory=list,
        description="Existing corpora (files or dataset directories) that count as seen.",
    )


class ConcentrationConfig(_Strict):
    """Largest shares of accepted rows one value may take before the run flags it (with examples)."""

    opening: float = Field(0.2, gt=0, le=1, description="Rows sharing one first-5-word opening.")
    ngram: float = Field(0.05, gt=0, le=1, description="Occurrences of one word bigram among all bigrams.")
    cluster: float = Field(0.3, gt=0, le=1, description="Sampled rows in one embedding cluster.")
    format: float = Field(0.6, gt=0, le=1, description="Rows of one answer format (when formats are listed).")
    persona: float = Field(0.6, gt=0, le=1, description="Rows of one persona (when personas are listed).")
    min_rows: int = Field(50, ge=1, description="Accepted rows before any share is flagged.")


STEERED_DIMENSIONS = ("persona", "format", "difficulty")


def steered_values(task: _TaskBase, dimension: str) -> list[str]:
    """The values the task lists for a steered dimension (persona -> personas, ...)."""
    return {"persona": task.personas, "format": task.formats, "difficulty": task.difficulties}[dimension]


class SteeringConfig(_Strict):
    """Feedback from committed rows to the prompts rendered later (`engine/controller.py`)."""

    enabled: bool = Field(False, description="Re-weight persona/format/difficulty and move the temperature.")
    lag: int = Field(
        4,
        ge=0,
        description="Windows between what is measured and the policy it sets: window w follows the "
        "windows before w - lag, so the teachers keep streaming meanwhile (lag x batch_size should exceed "
        "twice the requests in flight).",
    )
    span: int = Field(
        4, ge=1, description="Windows per decision: measured over the last span, at most one change per span."
    )
    targets: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Target shares of accepted rows per persona, format and difficulty value; default: "
        "uniform over the values listed in the task.",
    )
    temperature: tuple[float, float] | None = Field(
        None, description="Bounds the temperature moves within; default: [sampling.temperature, + 0.4]."
    )
    temperature_step: float = Field(0.1, gt=0, description="Change of temperature per decision.")
    raise_above: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Raise the temperature when this share of samples is rejected as near-duplicate or "
        "low-novelty.",
    )
    pass_rate_drop: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Lower it when the verification pass rate falls this far below its first measure.",
    )
    min_samples: int = Field(32, ge=1, description="Samples measured before the first re-weighting.")

    @model_validator(mode="after")
    def _known_dimensions(self) -> SteeringConfig:
        unknown = sorted(set(self.targets) - set(STEERED_DIMENSIONS))
        if unknown:
            raise ValueError(f"targets: unknown dimension(s) {unknown}; steered: {list(STEERED_DIMENSIONS)}")
        for dimension, shares in self.targets.items():
            if any(share < 0 for share in shares.values()) or sum(shares.values()) <= 0:
                raise ValueError(f"targets.{dimension}: shares must be >= 0 with a positive sum")
        if self.temperature is not None and not 0 <= self.temperature[0] <= self.temperature[1]:
            raise ValueError("temperature: bounds must be [low, high] with 0 <= low <= high")
        return self


class DiversityConfig(_Strict):
    """Diversity measured on accepted rows as they are committed (manifest `diversity`), novelty
    rejection, and concentration flags."""

    enabled: bool = Field(True, description="Measure diversity per shard and cumulatively.")
    min_novelty: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Reject a row (`low-novelty`) whose share of n-grams never seen in accepted rows is "
        "below this; off by default.",
    )
    novelty_ngram: int = Field(3, ge=1, description="Words per n-gram for novelty.")
    sample_size: int = Field(
        2000, ge=10, description="Reservoir of accepted rows the embedding metrics are computed on."
    )
    embeddings: bool | Literal["auto"] = Field(
        "auto",
        description="Compute the MiniLM metrics (spread, Vendi, clusters); auto: where a GPU is present (on "
        "a CPU, MiniLM embeds ~10-90 rows/s, a cost comparable to generating with a small model).",
    )
    max_share: ConcentrationConfig = Field(default_factory=ConcentrationConfig)
    steering: SteeringConfig = Field(default_factory=SteeringConfig)
    stop_below: float | None = Field(
        None,
        gt=0,
        description="Stop the run when accepted rows bring fewer novel n-grams (`novelty_ngram`) than this "
        "per 1,000 rows, over the last `stop_rows` accepted rows; off by default.",
    )
    stop_rows: int = Field(1000, ge=1, description="Accepted rows `stop_below` is measured over.")


class BenchmarkConfig(_Strict):
    """An evaluation set to keep out of the data: a local file, or a Hugging Face dataset when online."""

    name: str = Field(description="Benchmark name; a built-in one (gsm8k, humaneval, ...) brings its fields.")
    path: str | None = Field(
        None, description="Local JSONL, JSONL.gz or Parquet file; unset: the built-in Hugging Face source."
    )
    fields: list[str] | None = Field(
        None, description="Text fields to protect; default: the built-in mapping, else every string field."
    )
    id_field: str | None = Field(
        None, description="Field naming each item; default: built-in, else row number."
    )
    hf_dataset: str | None = Field(None, description="Hugging Face dataset name (when `path` is unset).")
    hf_config: str | None = Field(None, description="Configuration of the Hugging Face dataset.")
    split: str | None = Field(None, description="Split of the Hugging Face dataset.")


class DecontaminateConfig(_Strict):
    """Reject rows (and seed prompts) that contain benchmark items: exact n-grams + MinHash containment."""

    benchmarks: list[BenchmarkConfig] = Field(
        default_factory=list, description="Benchmarks to decontaminate against; none: the stage is off."
    )
    text_field: str = Field("response", description="Text column checked in generated rows.")
    seeds: bool = Field(True, description="Also check rendered prompts before generation.")
    ngram: int = Field(13, ge=4, le=50, description="Words per n-gram of the exact method (8-13 usual).")
    max_item_frequency: int = Field(
        10, ge=1, description="Ignore n-grams found in more benchmark items than this (too common)."
    )
    min_coverage: float | None = Field(
        None, gt=0, le=1,
        description="Exact method: require this fraction of an item's n-grams (unset: any n-gram matches).",
    )  # fmt: skip
    min_item_words: int = Field(
        5, ge=1, description="Items with fewer words are too short to check (counted, not indexed)."
    )
    fuzzy: bool = Field(True, description="Also run MinHash containment (catches edits that break n-grams).")
    fuzzy_ngram: int = Field(4, ge=1, le=12, description="Words per shingle of the fuzzy method.")
    sketch_size: int = Field(32, ge=4, le=64, description="Bottom-k MinHash sketch size per item.")
    fuzzy_threshold: float = Field(
        0.5, gt=0, le=1, description="Fraction of an item's sketch found within one window of the text."
    )
    unicode: bool = Field(False, description="NFKC + Unicode lowercase before comparing (slower).")
    backend: Literal["auto", "numba", "triton"] = Field(
        "auto", description="Probe kernel (auto: Triton on CUDA)."
    )


class VerifierConfig(BaseModel):
    """One verifier by name, with its options (see README); options are checked when the stage is built.
    `judge` and `knowledge-base` take `teacher` (a teacher table; default: the recipe's first)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: Literal[
        "python-tests",
        "stdio-tests",
        "math",
        "json-schema",
        "regex",
        "length",
        "judge",
        "reward-model",
        "knowledge-base",
    ] = Field(description="Verifier name.")


class VerifyConfig(_Strict):
    """Sandboxed verification of generated rows; a row is kept when every verifier passes."""

    verifiers: list[VerifierConfig] = Field(
        default_factory=list, description="Verifiers; none: the stage is off."
    )
    sandbox: Literal["bubblewrap", "rlimits-only"] = Field(
        "bubblewrap", description="Isolation; 'rlimits-only' (weaker) only where bubblewrap cannot run."
    )
    workers: int | None = Field(None, ge=1, description="Concurrent sandboxed jobs (default: one per core).")
    wall_seconds: float = Field(10.0, gt=0, description="Wall-clock limit per job.")
    memory_mb: int = Field(1024, ge=64, description="Address-space limit per job.")


class MixConfig(_Strict):
    """Human data mixed into the run's output at a share that holds after every loss (`engine/corpus/mix.py`)."""

    human: list[str] = Field(description="Human data: Parquet or JSONL files, or directories.")
    ratio: float = Field(
        ge=0, le=0.5, description="Synthetic share of the mix (a majority is refused: use `synthkiln mix`)."
    )
    size: int = Field(
        ge=1, description="Rows in the mix; the run generates until round(ratio x size) rows are accepted."
    )
    out: str | None = Field(None, description="The mix's directory; default: the run's directory + `-mix`.")
    text_field: str = Field("text", description="Human plain-text rows' field.")
    messages_field: str = Field("messages", description="Human chat rows' field.")
    prompt_field: str = Field("prompt", description="Human exchange rows' prompt field.")
    response_field: str = Field("response", description="Human exchange rows' answer field.")


class BiasConfig(_Strict):
    """The bias audit (`engine/bias.py`): lexicon terms per 10,000 words in the seeds, accepted and
    rejected rows; groups the generation amplified; rejection and refusal rates per persona."""

    enabled: bool = Field(True, description="Count the lexicon's terms at each commit (manifest `bias`).")
    lexicon_file: str | None = Field(
        None, description="JSON {dimension: {group: [terms]}} replacing the documented default lexicon."
    )
    amplification: float = Field(
        2.0, gt=1, description="Flag a group this many times as frequent in accepted rows as in the seeds."
    )
    min_count: int = Field(5, ge=1, description="Occurrences in accepted rows before a group can be flagged.")


class GuardsConfig(_Strict):
    """Guards against model collapse: recursive self-training refused, one teacher's dominance flagged."""

    max_lineage_depth: int = Field(
        1,
        ge=1,
        description="Deepest lineage a row may have (human seed 0, each generation from a synthetic seed "
        "adds one): 1 refuses synthetic seed rows.",
    )
    max_teacher_share: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Flag a teacher that writes more than this share of accepted rows (recipes with "
        "several teachers).",
    )


class CostConfig(_Strict):
    """Prices that turn the run's device seconds and tokens into money (manifest `cost`, card, summary)."""

    gpu_hour_usd: float | None = Field(
        None, ge=0, description="Price of one device-hour (GPU) for local teachers (vLLM, transformers)."
    )
    input_usd_per_million: float | None = Field(
        None, ge=0, description="API teachers (OpenAI-compatible): price per million prompt tokens."
    )
    output_usd_per_million: float | None = Field(
        None, ge=0, description="API teachers: price per million completion tokens."
    )


class OutputConfig(_Strict):
    """Where and how the dataset directory is written."""

    dir: str | None = Field(None, description="Dataset directory; defaults to `out/<name>`.")
    shard_rows: int = Field(1000, ge=1, description="Commit a shard once this many rows are pending.")
    commit_seconds: float = Field(60.0, gt=0, description="Commit pending rows at least this often.")


class RayConfig(_Strict):
    """Where `executor = "ray"` runs: the cluster, and how teachers are placed on it."""

    address: str | None = Field(
        None, description="A running cluster (host:port, or auto); default RAY_ADDRESS, else a local Ray."
    )
    actors_per_teacher: int | None = Field(
        None,
        ge=1,
        description="Engine actors per teacher (default: a vLLM teacher's replicas, else one); each "
        "takes the GPUs of one tensor-parallel group.",
    )


class Recipe(_Strict):
    """A whole synthkiln run: seeds -> task -> teachers -> stages -> dataset directory."""

    name: str = Field(description="Dataset name (card title, default output directory).")
    seed: int = Field(0, description="Base of every per-request sampling seed.")
    seeds: SeedsConfig
    task: TaskConfig
    teachers: list[TeacherConfig] = Field(
        default_factory=lambda: [TransformersTeacherConfig(backend="transformers")],
        min_length=1,
        description="One or more teachers; prompts are split among them by weight.",
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    diversity: DiversityConfig = Field(default_factory=DiversityConfig)
    guards: GuardsConfig = Field(default_factory=GuardsConfig)
    bias: BiasConfig = Field(default_factory=BiasConfig)
    mix: MixConfig | None = Field(None, description="Mix the accepted rows with human data at a share.")
    cost: CostConfig = Field(default_factory=CostConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    executor: Literal["local", "ray"] = Field(
        "local", description="Where teachers and verifiers run: this machine, or a Ray cluster."
    )
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _unique_teacher_names(self) -> Recipe:
        labels = [t.label for t in self.teachers]
        if len(set(labels)) != len(labels):
            raise ValueError(f"teacher names must be unique, got {labels}; set `name` on each teacher")
        return self

    @model_validator(mode="after")
    def _targets_name_listed_values(self) -> Recipe:
        for dimension, shares in self.diversity.steering.targets.items():
            listed = steered_values(self.task, dimension)
            unknown = sorted(set(shares) - set(listed))
            if unknown:
                raise ValueError(
                    f"diversity.steering.targets.{dimension}: {unknown} not in the task's listed values {listed}"
                )
        return self

    @property
    def output_dir(self) -> Path:
        return Path(self.output.dir or f"out/{self.name}")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def content_hash(self) -> str:
        """Hash of everything that decides the rows: not where they go, how hard the engines are
        driven (requests in flight, replicas) or what is measured, which a resumed run may change."""
        content = self.to_dict()
        content.pop("output")
        content.pop("guards")  # they refuse or flag a run, they do not change its rows
        content.pop("cost")
        content.pop("bias")  # measured, decides nothing
        content.pop("executor")  # the same rows wherever they are made
        content.pop("ray")
        if content["mix"] is None:  # a mix decides how many rows the run makes
            content.pop("mix")
        content["generation"].pop("max_in_flight")
        for teacher in content["teachers"]:
            teacher.pop("replicas", None)
        # Measuring diversity decides nothing; novelty rejection does (when it is on).
        diversity = content.pop("diversity")
        if diversity["min_novelty"] is not None:
            content["novelty"] = {
                "min_novelty": diversity["min_novelty"],
                "ngram": diversity["novelty_ngram"],
            }
        # Steering and early stopping decide which prompts are rendered and how they are sampled.
        if diversity["steering"]["enabled"]:
            content["steering"] = diversity["steering"]
        if diversity["stop_below"] is not None:
            content["stop"] = {
                "below": diversity["stop_below"],
                "rows": diversity["stop_rows"],
                "ngram": diversity["novelty_ngram"],
                "lag": diversity["steering"]["lag"],  # when the stop is decided
                "span": diversity["steering"]["span"],
            }
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


_RELATIVE_TO_RECIPE = (
    ("seeds", "path"),
    ("task", "template_file"),
    ("dedup", "against"),
    ("output", "dir"),
    ("bias", "lexicon_file"),
    ("mix", "out"),
    ("mix", "human"),
)


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a TOML or YAML recipe, apply ``key.path=value`` overrides, and validate it."""
    path = Path(path)
    data = _read_mapping(path)
    for keys in _RELATIVE_TO_RECIPE:
        _resolve_path(data, keys, path.parent)
    benchmarks = (data.get("decontaminate") or {}).get("benchmarks")
    for benchmark in benchmarks if isinstance(benchmarks, list) else []:
        if isinstance(benchmark, dict) and isinstance(benchmark.get("path"), str):
            benchmark["path"] = _relative_to(path.parent, benchmark["path"])
    overridden: set[tuple[str | int, ...]] = set()
    for override in overrides:
        overridden.add(apply_override(data, override))
    return validate_recipe(data, source=str(path), overridden=overridden)


def validate_recipe(
    data: dict[str, Any], source: str = "<recipe>", overridden: set[tuple[str | int, ...]] | None = None
) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        lines = [_describe_error(err, data, overridden or set()) for err in exc.errors()]
        raise RecipeError(f"{source}: invalid recipe:\n  " + "\n  ".join(lines)) from None


def apply_override(data: dict[str, Any], override: str) -> tuple[str | int, ...]:
    """Set ``a.b.0.c=value`` in ``data``; the value is read as TOML (``3``, ``true``, ``["x"]``) or kept as text."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {override!r}: expected KEY=VALUE, e.g. --set sampling.temperature=0")
    parts: list[str | int] = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        nxt = parts[depth + 1]
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                where = ".".join(map(str, parts[: depth + 1]))
                raise RecipeError(f"--set {key}: no list item at '{where}'")
            node = node[part]
            continue
        if not isinstance(node, dict):
            raise RecipeError(f"--set {key}: '{part}' is not inside a table")
        if part not in node:
            node[part] = [] if isinstance(nxt, int) else {}
        node = node[part]
    last = parts[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last > len(node):
            raise RecipeError(f"--set {key}: no list item {last}")
        if last == len(node):
            node.append(value)
        else:
            node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise RecipeError(f"--set {key}: '{parts[-2]}' is not a table")
    return tuple(parts)


def dump_recipe(recipe: Recipe, fmt: Literal["toml", "yaml", "json"] = "toml") -> str:
    """Every key of the recipe, defaults included; an unset optional key is null in YAML and JSON and
    a `# key = null` comment in TOML, which has no null (the text stays a valid recipe)."""
    data = recipe.to_dict()
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False)
    return "\n".join(_toml_table(data, ())).lstrip("\n") + "\n"


def _toml_table(table: dict[str, Any], path: tuple[str, ...]) -> list[str]:
    """Lines of one TOML table: its values (null ones commented), then its sub-tables and arrays of
    tables. tomli_w formats each value, so quoting and escaping are its own."""
    import tomli_w

    lines: list[str] = []
    nested: list[tuple[str, Any]] = []
    for key, value in table.items():
        if isinstance(value, dict) or (
            value and isinstance(value, list) and all(isinstance(v, dict) for v in value)
        ):
            nested.append((key, value))
        elif value is None:
            lines.append(f"# {_toml_key(key)} = null")
        else:
            lines.append(tomli_w.dumps({key: value}).rstrip("\n"))
    for key, value in nested:
        inner = (*path, _toml_key(key))
        for item in [value] if isinstance(value, dict) else value:
            header = f"[{'.'.join(inner)}]" if isinstance(value, dict) else f"[[{'.'.join(inner)}]]"
            lines += ["", header, *_toml_table(item, inner)]
    return lines


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() and key.isascii() else json.dumps(key)


def _read_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise RecipeError(f"{path}: unknown recipe format '{suffix}' (use .toml, .yaml or .yml)")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise RecipeError(f"{path}: cannot parse: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a table/mapping at the top level")
    return data


def _resolve_path(data: dict[str, Any], keys: tuple[str, ...], base: Path) -> None:
    node: Any = data
    for key in keys[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return
    value = node.get(keys[-1])
    if isinstance(value, str):
        node[keys[-1]] = _relative_to(base, value)
    elif isinstance(value, list):
        node[keys[-1]] = [_relative_to(base, v) if isinstance(v, str) else v for v in value]


def _relative_to(base: Path, value: str) -> str:
    path = Path(value).expanduser()
    return value if path.is_absolute() else str((base / path).resolve())


def _describe_error(err: dict[str, Any], data: dict[str, Any], overridden: set[tuple[str | int, ...]]) -> str:
    key_path, parent_model = _walk(err["loc"], data)
    dotted = ".".join(map(str, key_path)) or "<top level>"
    origin = " (from --set)" if tuple(key_path) in overridden else ""
    if err["type"] == "extra_forbidden":
        message = f"unknown key '{dotted}'{origin}"
        if parent_model is not None:
            typed, fields = str(key_path[-1]), list(parent_model.model_fields)
            close = [f for f in fields if f.startswith(typed)] or difflib.get_close_matches(
                typed, fields, n=1
            )
            if close:
                message += f"; did you mean '{close[0]}'?"
        return message
    if err["type"] == "missing":
        return f"missing key '{dotted}'"
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    return f"'{dotted}'{origin}: {err['msg']}{shown}"


def _walk(loc: tuple[Any, ...], data: Any) -> tuple[list[str | int], type[BaseModel] | None]:
    """Map a pydantic error location onto the user's key path and the model expected there.

    Discriminated unions insert their tag (e.g. ``reasoning``) into the location; the user never wrote
    it, so parts that do not exist in the data are skipped, except the last (a missing/extra key).
    """
    key_path: list[str | int] = []
    node, model = data, Recipe
    parent_model: type[BaseModel] | None = Recipe
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        present = (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        )
        if not present and not last:
            model = _union_member(model, part)
            continue
        key_path.append(part)
        parent_model = model if isinstance(model, type) and issubclass(model, BaseModel) else None
        if present:
            node = node[part]
            model = _field_model(model, part)
    return key_path, parent_model


def _field_model(model: Any, part: Any) -> Any:
    if isinstance(part, int):
        return model  # a list item keeps the list's item type
    if isinstance(model, type) and issubclass(model, BaseModel) and part in model.model_fields:
        annotation = model.model_fields[part].annotation
        if get_origin(annotation) is list:
            return get_args(annotation)[0]
        return annotation
    return None


def _union_member(model: Any, tag: Any) -> Any:
    if get_origin(model) is Annotated:
        model = get_args(model)[0]
    for member in get_args(model):
        fields = getattr(member, "model_fields", {})
        for discriminator in ("kind", "backend"):
            if discriminator in fields and tag in get_args(fields[discriminator].annotation):
                return member
    return model


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """Build a recipe in Python (launchers); same validation and messages as a file."""
    return validate_recipe(copy.deepcopy(data))
