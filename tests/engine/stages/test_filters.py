from __future__ import annotations

import pyarrow as pa

from synthkiln.engine.schema import ROW_SCHEMA
from synthkiln.engine.stages.filters import (
    EmptyResponse,
    FirstPerPrompt,
    ReferenceAnswer,
    Refusal,
    ResponseLength,
    Unterminated,
)


def batch(rows: list[dict]) -> pa.RecordBatch:
    base = {"id": "x", "prompt_id": "p", "finish_reason": "stop", "verdicts": [], "sample_index": 0}
    return pa.RecordBatch.from_pylist([{**base, **r} for r in rows], ROW_SCHEMA)


def test_filters_split_and_count() -> None:
    rows = batch(
        [
            {"id": "a", "response": "A fine answer here."},
            {"id": "b", "response": "   "},
            {"id": "c", "response": None},
            {"id": "d", "response": "Cut off mid", "finish_reason": "length"},
            {"id": "e", "response": "I'm sorry, but I can't help with that."},
            {"id": "f", "response": "As an AI language model, I think yes."},
            {"id": "g", "response": "Sorrow is a theme of the poem."},
        ]
    )
    kept, rejected = EmptyResponse().process(rows)
    assert rejected.column("id").to_pylist() == ["b", "c"]
    assert set(rejected.column("stage").to_pylist()) == {"empty"}
    stage = Unterminated()
    kept, rejected = stage.process(kept)
    assert rejected.column("reason").to_pylist() == ["hit-max-tokens"]
    assert stage.stats.seen == 5 and stage.stats.kept == 4
    kept, rejected = Refusal().process(kept)
    assert rejected.column("id").to_pylist() == ["e", "f"]
    assert kept.column("id").to_pylist() == ["a", "g"]


def test_length_bounds() -> None:
    rows = batch(
        [
            {"id": "a", "response": "one"},
            {"id": "b", "response": "one two three"},
            {"id": "c", "response": "a " * 9},
        ]
    )
    stage = ResponseLength(min_words=2, max_words=5)
    kept, rejected = stage.process(rows)
    assert kept.column("id").to_pylist() == ["b"]
    assert rejected.column("reason").to_pylist() == ["too-short", "too-long"]
    assert stage.stats.rejected == {"too-short": 1, "too-long": 1}


def test_reference_answer_marks_verified() -> None:
    rows = batch(
        [
            {"id": "a", "answer": "1,000", "reference": "1000"},
            {"id": "b", "answer": "7", "reference": "8"},
            {"id": "c", "answer": None, "reference": "8"},
            {"id": "d", "answer": None, "reference": None},
        ]
    )
    kept, rejected = ReferenceAnswer().process(rows)
    assert kept.column("id").to_pylist() == ["a", "d"]
    assert kept.column("verified").to_pylist() == [True, None]
    assert kept.column("verdicts").to_pylist()[0][0]["verifier"] == "reference-answer"
    assert rejected.column("reason").to_pylist() == ["wrong-answer", "no-answer"]
    assert "'7' vs reference '8'" in rejected.column("detail").to_pylist()[0]


def test_first_per_prompt_keeps_lowest_surviving_sample() -> None:
    rows = batch(
        [
            {"id": "a2", "prompt_id": "a", "sample_index": 2},
            {"id": "b0", "prompt_id": "b", "sample_index": 0},
            {"id": "a1", "prompt_id": "a", "sample_index": 1},
        ]
    )
    kept, rejected = FirstPerPrompt().process(rows)
    assert sorted(kept.column("id").to_pylist()) == ["a1", "b0"]
    assert rejected.column("id").to_pylist() == ["a2"]
    assert rejected.column("reason").to_pylist() == ["not-first"]
