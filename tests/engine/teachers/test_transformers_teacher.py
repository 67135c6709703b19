from __future__ import annotations

from dataclasses import replace

import pytest

from synthkiln.engine.config import SamplingConfig, TransformersTeacherConfig
from synthkiln.engine.teachers import GenerationRequest
from synthkiln.engine.teachers.transformers_teacher import TransformersTeacher
from tests.conftest import QUICK_INSTRUCTIONS

pytestmark = pytest.mark.slow


def requests(n: int = 1, seed: int = 0) -> list[GenerationRequest]:
    return [
        GenerationRequest([{"role": "user", "content": text}], n=n, seed=seed) for text in QUICK_INSTRUCTIONS
    ]


def test_generates_text_with_token_counts_and_finish_reasons(hf_teacher) -> None:
    short = hf_teacher.generate(requests(), SamplingConfig(temperature=0, max_tokens=5))
    assert [len(samples) for samples in short] == [1] * len(QUICK_INSTRUCTIONS)
    for (completion,) in short:
        assert completion.text.strip()
        assert completion.finish_reason == "length" and completion.completion_tokens == 5
        assert completion.prompt_tokens > 10
    # "Say only yes" ends well before 64 tokens: an end-of-sequence stop with fewer tokens.
    (yes,) = hf_teacher.generate(
        [GenerationRequest([{"role": "user", "content": "Reply with just the word: yes"}])],
        SamplingConfig(temperature=0, max_tokens=64),
    )[0]
    assert yes.finish_reason == "stop" and yes.completion_tokens < 64


def test_greedy_is_batch_independent_and_sampling_follows_seeds(hf_teacher) -> None:
    greedy = SamplingConfig(temperature=0, max_tokens=12)
    batched = [s[0].text for s in hf_teacher.generate(requests(), greedy)]
    alone = [hf_teacher.generate([r], greedy)[0][0].text for r in requests()]
    assert batched == alone
    hot = SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=12)
    first = hf_teacher.generate(requests(n=3, seed=11)[:1], hot)[0]
    again = hf_teacher.generate(requests(n=3, seed=11)[:1], hot)[0]
    other = hf_teacher.generate(requests(n=3, seed=12)[:1], hot)[0]
    assert [c.text for c in first] == [c.text for c in again]
    assert len({c.text for c in first + other}) > 1


def test_a_sample_is_the_same_alone_and_in_any_batch(hf_teacher) -> None:
    warm = SamplingConfig(temperature=0.8, top_p=0.95, max_tokens=12)
    target = GenerationRequest([{"role": "user", "content": QUICK_INSTRUCTIONS[3]}], n=2, seed=7)
    alone = hf_teacher.generate([target], warm)[0]
    # Batch mates before it, with other seeds and other `n`: each sample draws from its own seed.
    mates = [replace(r, n=n, seed=100 + n) for r, n in zip(requests()[:3], [1, 3, 2], strict=True)]
    batched = hf_teacher.generate([*mates, target], warm)
    assert [len(samples) for samples in batched] == [1, 3, 2, 2]
    assert [c.text for c in batched[-1]] == [c.text for c in alone]
    assert alone[0].text != alone[1].text  # the samples of one prompt draw from distinct streams
    other = hf_teacher.generate([replace(target, seed=8)], warm)[0]
    assert [c.text for c in other] != [c.text for c in alone]


def test_poll_returns_a_batch_of_submitted_requests_by_key(embedded_model_dir) -> None:
    config = TransformersTeacherConfig(
        backend="transformers", model=str(embedded_model_dir), dtype="float32", batch_size=2
    )
    greedy = SamplingConfig(temperature=0, max_tokens=4)
    with TransformersTeacher(config) as teacher:
        assert teacher.default_in_flight == 4 and teacher.poll() == []
        for index, request in enumerate(requests(n=2)[:3]):
            teacher.submit(replace(request, key=f"r{index}"), greedy)
        assert teacher.in_flight == 3
        first = teacher.poll()
        assert [f.key for f in first] == ["r0", "r1"] and teacher.in_flight == 1
        # Other sampling settings need their own `generate` call: r3 waits for the next batch.
        teacher.submit(replace(requests()[3], key="r3"), SamplingConfig(temperature=0, max_tokens=2))
        second = teacher.poll()
        assert [f.key for f in second] == ["r2"] and teacher.in_flight == 1
        third = teacher.poll()
        assert [f.key for f in third] == ["r3"] and teacher.in_flight == 0
        assert [len(f.completions) for f in first + second + third] == [2, 2, 2, 1]
        assert [f.completions[0].completion_tokens for f in first + second + third] == [4, 4, 4, 2]
        assert all(f.refused is None for f in first + second + third)
        assert teacher.poll() == []


def test_stop_strings_cut_the_text(hf_teacher) -> None:
    request = [GenerationRequest([{"role": "user", "content": "List three fruits, one per line."}])]
    full = hf_teacher.generate(request, SamplingConfig(temperature=0, max_tokens=40))[0][0].text
    assert "\n" in full.strip()
    cut = hf_teacher.generate(request, SamplingConfig(temperature=0, max_tokens=40, stop=["\n"]))[0][0]
    assert "\n" not in cut.text and cut.finish_reason == "stop"
    assert full.startswith(cut.text)


def test_prompt_tokens_count_as_generate_encodes_against_the_trained_context(hf_teacher) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": QUICK_INSTRUCTIONS[0]},
    ]
    [[sample]] = hf_teacher.generate(
        [GenerationRequest(messages)], SamplingConfig(temperature=0, max_tokens=1)
    )
    assert hf_teacher.prompt_tokens(messages) == sample.prompt_tokens > 10
    assert hf_teacher.counts_tokens_exactly and hf_teacher.context_length == 8192  # SmolLM2's positions
