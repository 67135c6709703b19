"""Final-answer extraction and plain comparison of short answers.

Only regular expressions and exact number parsing run here (no `eval`, no sympy): this text is
untrusted model output. Symbolic comparison is the math verifier's job, inside the sandbox.
"""

from __future__ import annotations

import re
from fractions import Fraction

_ANSWER_IS = re.compile(r"answer is\s*:?\s*(.+)", re.IGNORECASE)
_HASHES = re.compile(r"####\s*(.+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_NUMERIC = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?")


def extract_final_answer(text: str) -> str | None:
    r"""The final answer of a solution: last `\boxed{}`, else `#### x`, else "the answer is x", else the last number."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    for pattern in (_HASHES, _ANSWER_IS):
        matches = pattern.findall(text)
        if matches:
            answer = matches[-1].strip().splitlines()[0].strip()
            return answer.replace("*", "").rstrip(".").strip() or None
    numbers = _NUMBER.findall(text)
    return numbers[-1].rstrip(".") if numbers else None


def answers_match(answer: str | None, reference: str | None) -> bool:
    """Equal as exact numbers when both read as numbers (`1,000` = `1000.0` = `$1000`), else as text."""
    if answer is None or reference is None:
        return False
    a, b = _as_number(answer), _as_number(reference)
    if a is not None and b is not None:
        return a == b
    return _canonical_text(answer) == _canonical_text(reference)


def _as_number(text: str) -> Fraction | None:
    cleaned = text.strip().replace(",", "").replace("$", "").replace("%", "").strip()
    # A trailing unit word ("18 dollars", "5 cm") does not change the number.
    head = cleaned.split()[0] if cleaned.split() else ""
    candidate = head.rstrip(".")
    if _NUMERIC.fullmatch(candidate) is None:
        return None
    try:
        return Fraction(candidate)
    except ZeroDivisionError:
        return None


def _canonical_text(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".").split())


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None
