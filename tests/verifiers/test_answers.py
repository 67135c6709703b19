from __future__ import annotations

import json

import pytest

from synthkiln.verifiers.answers import answers_match, extract_final_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the total is \\boxed{\\frac{1}{2}} indeed", "\\frac{1}{2}"),
        ("Natalia sold 48+24 = 72 clips.\n#### 72", "72"),
        ("We add them.\nThe answer is: 1,250.", "1,250"),
        ("the answer is **18** dollars", "18 dollars"),
        ("First 3 apples, then 4 more, 7 in all", "7"),
        ("no digits here", None),
    ],
)
def test_extract_final_answer(text: str, expected: str | None) -> None:
    assert extract_final_answer(text) == expected


@pytest.mark.parametrize(
    ("answer", "reference", "same"),
    [
        ("1,000", "1000", True),
        ("$18", "18", True),
        ("18 dollars", "18", True),
        ("0.5", "1/2", True),
        ("72.0", "72", True),
        ("71", "72", False),
        ("Paris", "paris.", True),
        ("1/0", "1", False),
        (None, "3", False),
    ],
)
def test_answers_match(answer: str | None, reference: str, same: bool) -> None:
    assert answers_match(answer, reference) is same


def test_gsm8k_test_answers_extract_and_match_themselves(gsm8k_dir) -> None:
    lines = (gsm8k_dir / "test.jsonl").read_text().splitlines()
    for line in lines[:300]:
        solution = json.loads(line)["answer"]
        reference = solution.rsplit("####", 1)[1].strip()
        extracted = extract_final_answer(solution)
        assert answers_match(extracted, reference), (solution, extracted)
        assert not answers_match(extracted, str(int(reference.replace(",", "")) + 1))
