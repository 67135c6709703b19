"""Stages: each takes an Arrow record batch and splits it into kept and rejected rows.

A stage does one thing and knows nothing of its neighbours; the pipeline wires them in order. This
module holds the interface and the cheap filters that run before any verifier. Rejected rows carry
the stage's name and a short machine-readable reason.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from synthkiln.engine.answers import answers_match
from synthkiln.engine.config import Recipe
from synthkiln.engine.schema import VERDICT


@dataclass
class StageStats:
    seen: int = 0
    kept: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


class Stage(ABC):
    """One step of curation. Subclasses set `name` and implement `process`."""

    name: str
    verifiers: tuple[str, ...] = ()  # what stages that prove rows right check with (listed on the card)
    fields: tuple[pa.Field, ...] = ()  # columns this stage adds to the rows it keeps or rejects
    restore_columns: tuple[str, ...] = ()  # committed columns a stateful stage rebuilds itself from
    benchmarks: tuple[dict, ...] = ()  # benchmarks this stage keeps out (listed on the dataset card)
    sandbox: dict | None = None  # the isolation a stage ran untrusted text under (in the manifest)

    def restore(self, committed: pa.Table) -> None:
        """Rebuild state from rows an earlier run committed (called before a resumed run starts)."""
        raise NotImplementedError(f"stage '{self.name}' lists restore_columns but does not restore")

    def __init__(self) -> None:
        self.stats = StageStats()

    def close(self) -> None:  # noqa: B027 (optional hook: most stages hold nothing)
        """Release what the stage holds (worker pools); called when the pipeline closes."""

    @abstractmethod
    def process(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        """Return (kept, rejected); rejected has the extra columns `stage`, `reason` and `detail`."""

    def split(
        self, batch: pa.RecordBatch, reasons: pa.Array, details: pa.Array | None = None
    ) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        """Partition `batch` by `reasons` (null: keep), with optional per-row `details`; count the outcome."""
        keep = pc.is_null(reasons)
        kept = batch.filter(keep)
        dropped = pc.invert(keep)
        rejected_reasons = reasons.filter(dropped)
        rejected = batch.filter(dropped)
        rejected = rejected.append_column("stage", pa.array([self.name] * len(rejected), pa.string()))
        rejected = rejected.append_column("reason", rejected_reasons.cast(pa.string()))
        rejected_details = (
            details.filter(dropped) if details is not None else pa.nulls(len(rejected), pa.string())
        )
        rejected = rejected.append_column("detail", rejected_details)
        self.stats.seen += len(batch)
        self.stats.kept += len(kept)
        self.stats.rejected.update(rejected_reasons.to_pylist())
        return kept, rejected


class FilterStage(Stage):
    """A stage that only decides: subclasses return one reason per row (null keeps the row)."""

    def process(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        return self.split(batch, self.reasons(batch))

    @abstractmethod
    def reasons(self, batch: pa.RecordBatch) -> pa.Array: ...


def _reason_where(mask: pa.Array, reason: str, otherwise: pa.Array | None = None) -> pa.Array:
    mask = pc.fill_null(mask, False)
    fallback = otherwise if otherwise is not None else pa.nulls(len(mask), pa.string())
    return pc.if_else(mask, pa.scalar(reason, pa.string()), fallback)


class EmptyResponse(FilterStage):
    name = "empty"

    def reasons(self, batch: pa.RecordBatch) -> pa.Array:
        response = batch.column("response")
        blank = pc.or_kleene(
            pc.is_null(response), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(response)), 0)
        )
        return _reason_where(blank, "empty")


class Unterminated(FilterStage):
    """Samples cut off by `max_tokens` end mid-sentence: their answer is unreliable."""

    name = "unterminated"

    def reasons(self, batch: pa.RecordBatch) -> pa.Array:
        return _reason_where(pc.equal(batch.column("finish_reason"), "length"), "hit-max-tokens")


class ResponseLength(FilterStage):
    name = "length"

    def __init__(self, min_words: int, max_words: int | None) -> None:
        super().__init__()
        self.min_words, self.max_words = min_words, max_words

    def reasons(self, batch: pa.RecordBatch) -> pa.Array:
        words = pc.count_substring_regex(pc.fill_null(batch.column("response"), ""), r"\S+")
        reasons = _reason_where(pc.less(words, self.min_words), "too-short")
        if self.max_words is not None:
            reasons = _reason_where(pc.greater(words, self.max_words), "too-long", reasons)
        return reasons


class Refusal(FilterStage):
    """Canned refusals and AI disclaimers teach a student to refuse; they are not training data."""

    name = "refusal"
    PATTERN = (
        r"(?i)(^\W*(i'?m sorry|i am sorry|sorry,? but|i apologi[sz]e|unfortunately,? i)"
        r"|\bi (can(no|')t|am (not able|unable) to|won'?t) (help|assist|provide|comply|fulfill|do that)"
        r"|\bas an ai( language model| assistant)?\b)"
    )

    def reasons(self, batch: pa.RecordBatch) -> pa.Array:
        found = pc.match_substring_regex(pc.fill_null(batch.column("response"), ""), self.PATTERN)
        return _reason_where(found, "refusal")


class ReferenceAnswer(Stage):
    """Rows whose seed carried a ground truth keep only a matching extracted answer, marked verified."""

    name = "reference"
    verifiers = ("reference-answer",)

    def process(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        answers = batch.column("answer").to_pylist()
        references = batch.column("reference").to_pylist()
        reasons, details, verified, verdicts = [], [], [], []
        for answer, reference, previous, old_verdicts in zip(
            answers,
            references,
            batch.column("verified").to_pylist(),
            batch.column("verdicts").to_pylist(),
            strict=True,
        ):
            if reference is None:
                reasons.append(None)
                details.append(None)
                verified.append(previous)
                verdicts.append(old_verdicts)
                continue
            passed = answers_match(answer, reference)
            reasons.append(None if passed else ("no-answer" if answer is None else "wrong-answer"))
            verified.append(passed if previous is None else previous and passed)
            detail = f"answer {answer!r} vs reference {reference!r}"
            details.append(detail)
            verdicts.append(
                [*(old_verdicts or []), {"verifier": "reference-answer", "passed": passed, "detail": detail}]
            )
        batch = set_column(batch, "verified", pa.array(verified, pa.bool_()))
        batch = set_column(batch, "verdicts", pa.array(verdicts, pa.list_(VERDICT)))
        return self.split(batch, pa.array(reasons, pa.string()), pa.array(details, pa.string()))


class FirstPerPrompt(FilterStage):
    """`generation.keep = "first"`: of a prompt's surviving samples, keep the lowest sample index.

    The pipeline hands a prompt's samples to the stages together, so a batch holds all of them.
    """

    name = "select"

    def reasons(self, batch: pa.RecordBatch) -> pa.Array:
        seen: set[str] = set()
        order = pc.sort_indices(batch, sort_keys=[("prompt_id", "ascending"), ("sample_index", "ascending")])
        chosen = [False] * len(batch)
        prompt_ids = batch.column("prompt_id").to_pylist()
        for index in order.to_pylist():
            if prompt_ids[index] not in seen:
                seen.add(prompt_ids[index])
                chosen[index] = True
        reasons = [None if keep else "not-first" for keep in chosen]
        return pa.array(reasons, pa.string())


def default_stages(recipe: Recipe) -> list[Stage]:
    """The stages a recipe asks for, cheapest first."""
    filters = recipe.filters
    stages: list[Stage] = [EmptyResponse()]
    if filters.unterminated:
        stages.append(Unterminated())
    stages.append(ResponseLength(filters.min_words, filters.max_words))
    if filters.refusal:
        stages.append(Refusal())
    if recipe.task.kind == "reasoning" and recipe.task.answer_field:
        stages.append(ReferenceAnswer())
    if recipe.decontaminate.benchmarks:
        from synthkiln.engine.decontam import ContaminationIndex, Decontaminate

        index = ContaminationIndex.for_config(recipe.decontaminate)
        stages.append(Decontaminate(index, recipe.decontaminate.text_field))
    if recipe.verify.verifiers:
        from synthkiln.engine.verify import Verify

        stages.append(Verify.from_config(recipe.verify, recipe.teachers[0].model_dump()))
    if recipe.generation.keep == "first":
        stages.append(FirstPerPrompt())
    if recipe.dedup.enabled:  # last: its index must hold exactly the accepted rows
        from synthkiln.engine.dedup import NearDuplicates

        dedup = recipe.dedup
        stages.append(NearDuplicates(dedup.threshold, dedup.num_perm, dedup.ngram, dedup.text_field, dedup.backend,
                                     dedup.against))  # fmt: skip
    return stages


def default_prompt_stages(recipe: Recipe) -> list[Stage]:
    """Stages run on rendered prompts (column `prompt`) before generation: the teacher never sees a
    benchmark item."""
    config = recipe.decontaminate
    if not (config.benchmarks and config.seeds):
        return []
    from synthkiln.engine.decontam import ContaminationIndex, Decontaminate

    return [Decontaminate(ContaminationIndex.for_config(config), text_field="prompt")]


def set_column(batch: pa.RecordBatch, name: str, values: pa.Array) -> pa.RecordBatch:
    """`batch` with column `name` replaced by `values` (appended when absent)."""
    index = batch.schema.get_field_index(name)
    if index < 0:
        return batch.append_column(pa.field(name, values.type), values)
    return batch.set_column(index, batch.schema.field(name), values)
