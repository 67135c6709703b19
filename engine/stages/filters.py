"""The cheap filters that run before any verifier, the reference-answer check and keep-first."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from synthkiln.engine.schema import VERDICT
from synthkiln.engine.stages.base import FilterStage, Stage, set_column
from synthkiln.verifiers.answers import answers_match


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
