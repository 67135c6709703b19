from __future__ import annotations

import asyncio
import json
import re
import threading
from pathlib import Path

import pytest

from synthkiln.verifiers import Limits, VerifierPool
from synthkiln.verifiers.checks import JsonSchema, Length, MathAnswer, PythonTests, Regex, StdioTests


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(workers=2) as pool:
        yield pool


def as_row(problem: dict, body: str | None = None) -> dict:
    code = problem["prompt"] + (problem["canonical_solution"] if body is None else body)
    return {"code": code, "tests": problem["test"], "entry_point": problem["entry_point"]}


def test_every_humaneval_canonical_solution_passes(pool, humaneval_problems) -> None:
    verdicts = pool.check_batch(PythonTests(), [as_row(p) for p in humaneval_problems])
    failing = [
        (p["task_id"], v.detail) for p, v in zip(humaneval_problems, verdicts, strict=True) if not v.passed
    ]
    assert failing == []
    assert all(v.sandbox == "bubblewrap" and v.seconds > 0 for v in verdicts)


def test_every_humaneval_solution_returning_none_fails(pool, humaneval_problems) -> None:
    verdicts = pool.check_batch(PythonTests(), [as_row(p, "    return None\n") for p in humaneval_problems])
    passing = [p["task_id"] for p, v in zip(humaneval_problems, verdicts, strict=True) if v.passed]
    assert passing == []
    assert all(v.status == "failed" for v in verdicts)


FORGERIES = {
    "os._exit(0)": "import os\nos._exit(0)",
    "sys.exit(0)": "import sys\nsys.exit(0)",
    "atexit hook": "import atexit, sys\natexit.register(lambda: print('PASSED'))\nsys.exit(0)",
    "prints PASSED": "print('PASSED')\nprint('{\"passed\": true}')\nraise AssertionError('real failure')",
    "excepthook": "import sys\nsys.excepthook = lambda *a: None\nraise AssertionError('hidden')",
    "writes a report": "import os, sys, json\nos.write(int(sys.argv[2]), json.dumps({'passed': True}).encode())\nos._exit(0)",
}


@pytest.mark.parametrize("name", FORGERIES)
def test_forged_success_fails(pool, name: str) -> None:
    verdict = pool.check_batch(
        PythonTests(), [{"code": FORGERIES[name], "tests": "assert False, 'never reached'"}]
    )[0]
    assert verdict.status == "failed", verdict


def test_oversized_code_is_blocked_unrun(pool) -> None:
    verdict = pool.check_batch(PythonTests(), [{"code": "x = 1\n" * 200_000, "tests": "pass"}])[0]
    assert verdict.status == "blocked" and verdict.sandbox is None


def test_objects_equal_to_everything_fail(pool) -> None:
    code = "class Anything:\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Anything()"
    tests = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4"
    verdict = pool.check_batch(PythonTests(), [{"code": code, "tests": tests, "entry_point": "add"}])[0]
    assert verdict.status == "failed" and verdict.detail.startswith("AssertionError at tests.py:2")
    honest = "def add(a, b):\n    return a + b"
    assert pool.check_batch(PythonTests(), [{"code": honest, "tests": tests, "entry_point": "add"}])[0].passed


def test_stdio_cases_are_compared_outside(pool) -> None:
    cases = [
        {"input": "3\n", "output": "6\n"},
        {"input": "10", "output": "20"},
        {"input": "x", "output": "?"},
    ]
    program = "n = input()\nprint(int(n) * 2 if n.isdigit() else '?')"
    verdict = pool.check_batch(StdioTests(), [{"program": program, "cases": cases}])[0]
    assert verdict.passed and len(verdict.tests) == 3
    wrong = pool.check_batch(StdioTests(), [{"program": "print(6)", "cases": json.dumps(cases)}])[0]
    assert wrong.status == "failed" and [t["passed"] for t in wrong.tests] == [True, False, False]
    slow = StdioTests(case_seconds=0.5)
    hung = pool.check_batch(slow, [{"program": "while True: pass", "cases": cases[:1]}])[0]
    assert hung.status == "failed" and hung.tests[0]["timeout"]


def test_gsm8k_answers_verify_against_themselves(pool, gsm8k_dir: Path) -> None:
    rows = [json.loads(line) for line in (gsm8k_dir / "test.jsonl").read_text().splitlines()]
    references = [r["answer"].rsplit("####", 1)[1].strip() for r in rows]
    same = [{"response": r["answer"], "reference": ref} for r, ref in zip(rows, references, strict=True)]
    assert all(v.passed for v in pool.check_batch(MathAnswer(), same))
    changed = [
        {
            "response": re.sub(
                r"####\s*(.+)$", lambda m: f"#### {m.group(1).replace(',', '')}1", r["answer"]
            ),
            "reference": ref,
        }
        for r, ref in zip(rows, references, strict=True)
    ]
    assert not any(v.passed for v in pool.check_batch(MathAnswer(), changed))


@pytest.mark.parametrize(
    ("response", "reference", "passed"),
    [
        (r"so \boxed{\frac{1}{2}}", "0.5", True),
        ("The answer is 3/4.", r"\frac{3}{4}", True),
        ("It costs $1,250 in total.", "1250", True),
        (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", True),
        ("#### 72", "73", False),
        ("no number at all", "5", False),
    ],
)
def test_math_forms(pool, response: str, reference: str, passed: bool) -> None:
    assert (
        pool.check_batch(MathAnswer(), [{"response": response, "reference": reference}])[0].passed is passed
    )


def test_math_timeouts_from_a_thread_and_from_asyncio() -> None:
    with VerifierPool(workers=1, limits=Limits(wall_seconds=0.05)) as pool:
        row = {"response": r"\boxed{2}", "reference": "2"}
        from_thread: list = []
        worker = threading.Thread(target=lambda: from_thread.extend(pool.check_batch(MathAnswer(), [row])))
        worker.start()
        worker.join(timeout=30)
        from_loop = asyncio.run(pool.check(MathAnswer(), row))
    assert from_thread[0].status == "timeout" and from_loop.status == "timeout"


def test_async_checks_run_concurrently(pool) -> None:
    async def many() -> list:
        rows = [{"code": f"x = {i}", "tests": f"assert x == {i}"} for i in range(8)]
        return await asyncio.gather(*(pool.check(PythonTests(), row) for row in rows))

    assert all(v.passed for v in asyncio.run(many()))


def test_schema_regex_and_length() -> None:
    schema = JsonSchema(
        {"type": "object", "required": ["name", "age"], "properties": {"age": {"type": "integer"}}}
    )
    assert schema.job({"response": '```json\n{"name": "Ada", "age": 36}\n```'}).passed
    wrong = schema.job({"response": '{"name": "Ada", "age": "old"}'})
    assert wrong.status == "failed" and wrong.detail.startswith("age:")
    assert "not JSON" in schema.job({"response": "{name: Ada}"}).detail
    deep = schema.job({"response": "[" * 100000})  # nesting past the decoder's recursion limit
    assert deep.status == "failed" and deep.detail.startswith("not JSON")
    assert Regex(r"^\d{3}-\d{4}$").job({"response": "555-1234"}).passed
    assert not Regex(r"^\d{3}-\d{4}$").job({"response": "call 555-1234"}).passed
    assert Length(2, 3).job({"response": "two words"}).passed
    assert Length(2, 3).job({"response": "far too many words here"}).detail.startswith("5 words")
