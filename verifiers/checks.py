"""Verifiers: each turns a row into a sandboxed job (or decides at once) and a job's report into a verdict.

Code and maths run in the sandbox (`python-tests`, `stdio-tests`, `math`: parsing maths is evaluation).
`json-schema`, `regex` and `length` run in the calling process: JSON decoding, a regular expression
from the recipe and a word count do not execute the text they judge.
"""

from __future__ import annotations

import json
import marshal
import re
import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from synthkiln.verifiers.answers import extract_final_answer
from synthkiln.verifiers.sandbox import Execution, readable

Status = Literal["passed", "failed", "timeout", "error", "blocked"]
HARNESS = Path(__file__).with_name("harness.py")
MAX_SOURCE_CHARS = 1 << 20  # larger code is `blocked`: never sent to the sandbox


@dataclass
class Verdict:
    verifier: str
    status: Status
    detail: str = ""
    seconds: float = 0.0
    output: str = ""  # the job's stdout/stderr, truncated
    tests: list[dict[str, Any]] = field(default_factory=list)  # per-test outcomes where there are several
    sandbox: str | None = None  # isolation the job ran under; None when nothing ran
    reason: str = ""  # a machine-readable cause where one applies (`no-tests`)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def as_dict(self) -> dict[str, Any]:
        return {"verifier": self.verifier, "passed": self.passed, "detail": f"{self.status}: {self.detail}"}


@dataclass
class Job:
    """Work for the sandbox: the harness mode and its input; the nonce tags the one valid report."""

    mode: str
    payload: dict[str, Any]
    mounts: dict[str, str] = field(default_factory=dict)  # name in the work dir -> host directory (read-only)
    nonce: str = field(default_factory=lambda: secrets.token_hex(16))

    def stdin(self) -> bytes:
        # marshal: the harness reads it without importing json (we write it; untrusted text is only data)
        return marshal.dumps({**self.payload, "nonce": self.nonce})


class Verifier(ABC):
    name: str
    cost = 1  # in-process checks 0, sandboxed jobs 1, models 2: cheap ones run first and short-circuit
    batched = False  # True: `verdicts(rows)` judges a whole batch in this process (models)

    def verdicts(self, rows: list[dict[str, Any]]) -> list[Verdict]:
        """A batch judged in this process (verifiers with `batched = True`)."""
        raise NotImplementedError(f"{self.name} is checked one job per row by the pool")

    def close(self) -> None:  # noqa: B027 (optional hook: only model verifiers hold anything)
        """Release models and the like."""

    def required_fields(self) -> dict[str, str]:
        """The fields every row must hold, each with the constructor argument that named it: a caller
        refuses a misspelt field before running anything rather than fail every row."""
        return {}

    @abstractmethod
    def job(self, row: dict[str, Any]) -> Job | Verdict:
        """The sandboxed job that checks `row`, or a verdict when none is needed (e.g. a missing field)."""

    def decide(self, row: dict[str, Any], job: Job, execution: Execution) -> Verdict:
        """Turn the job's execution into a verdict (timeouts and missing reports handled here)."""
        report = self.report(job, execution)
        if isinstance(report, Verdict):
            return report
        return self.judge(row, report, execution, (execution.stdout + execution.stderr)[-2000:])

    def report(self, job: Job, execution: Execution) -> dict[str, Any] | Verdict:
        """The job's valid report, or the verdict that there is none (timeout, early exit, harness error)."""
        output = (execution.stdout + execution.stderr)[-2000:]
        if execution.timed_out:
            limit = f"no result within the wall-clock limit ({execution.seconds:.1f} s)"
            return self._verdict("timeout", limit, execution, output)
        report = _report(execution.result, job.nonce)
        if report is None:
            how = (
                f"exit code {execution.exit_code}"
                if execution.signal is None
                else f"signal {execution.signal}"
            )
            return self._verdict("failed", f"the job ended without a valid report ({how})", execution, output)
        if "harness_error" in report:
            return self._verdict("error", report["harness_error"], execution, output)
        return report

    rows_per_job = 1  # > 1: `group` packs that many rows into one sandboxed job (start-up paid once)

    def group(self, rows: list[dict[str, Any]]) -> tuple[list[Verdict | None], Job | None]:
        """Verdicts decided without running (None elsewhere), and one job for the other rows."""
        raise NotImplementedError(f"{self.name} checks one row per job")

    def decide_group(self, rows: list[dict[str, Any]], job: Job, execution: Execution) -> list[Verdict]:
        raise NotImplementedError(f"{self.name} checks one row per job")

    def judge(
        self, row: dict[str, Any], report: dict[str, Any], execution: Execution, output: str
    ) -> Verdict:
        raise NotImplementedError(f"{self.name} runs no sandboxed job")

    def _no_tests(self, why: str, execution: Execution | None = None, output: str = "") -> Verdict:
        verdict = self._verdict("failed", f"no-tests: {why}", execution, output)
        verdict.reason = "no-tests"
        return verdict

    def _verdict(
        self,
        status: Status,
        detail: str,
        execution: Execution | None = None,
        output: str = "",
        tests: list | None = None,
    ) -> Verdict:
        return Verdict(
            self.name, status, detail, execution.seconds if execution else 0.0, output, tests or []
        )


def _report(raw: bytes, nonce: str) -> dict[str, Any] | None:
    """The job's one report, if it is exactly one JSON object carrying the nonce."""
    try:
        report = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # nothing, or more than one write: not a report the harness made alone
    if not isinstance(report, dict) or report.pop("nonce", None) != nonce:
        return None
    return report


def _field(row: dict[str, Any], name: str) -> Any:
    """`row[name]`; a dotted name reaches into a mapping (`seed_fields.test`: a map column's entry)."""
    value: Any = row
    for part in name.split("."):
        if isinstance(value, list):  # Arrow map values arrive as (key, value) pairs
            value = dict(value)
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        raise KeyError(name)
    return value


class PythonTests(Verifier):
    """The code in one sandboxed process, the tests in another (HumanEval style: `check(entry_point)`
    when given); the tests call the code's functions through a pipe that carries plain data only (see
    harness.py). A job in which no `assert` ran fails with reason `no-tests`."""

    name = "python-tests"

    def __init__(
        self,
        code_field: str = "code",
        tests_field: str = "tests",
        entry_point_field: str | None = "entry_point",
    ) -> None:
        self.code_field, self.tests_field, self.entry_point_field = code_field, tests_field, entry_point_field

    def required_fields(self) -> dict[str, str]:
        return {self.code_field: "code_field", self.tests_field: "tests_field"}  # no entry point: plain tests

    def job(self, row: dict[str, Any]) -> Job | Verdict:
        try:
            code, tests = _field(row, self.code_field), _field(row, self.tests_field)
        except KeyError as missing:
            return self._verdict("failed", f"no {missing.args[0]!r} field")
        try:
            entry_point = _field(row, self.entry_point_field) if self.entry_point_field else None
        except KeyError:
            entry_point = None  # plain tests: no check(entry_point) call
        if len(code) + len(tests) > MAX_SOURCE_CHARS:
            return self._verdict("blocked", f"{len(code) + len(tests)} characters of code and tests: not run")
        return Job("python-tests", {"code": code_block(code), "tests": tests, "entry_point": entry_point})

    def judge(
        self, row: dict[str, Any], report: dict[str, Any], execution: Execution, output: str
    ) -> Verdict:
        if report.get("passed") is True:
            ran = report.get("assertions")
            if type(ran) is not int or ran <= 0:
                return self._no_tests("no assertion ran (empty or comment-only tests?)", execution, output)
            return self._verdict(
                "passed", f"every test ran to completion ({ran} assertions)", execution, output
            )
        where = f" at {report['where']}" if report.get("where") else ""
        line = f" ({report['line']})" if report.get("line") else ""
        return self._verdict(
            "failed",
            f"{report.get('error')}{where}{line}: {report.get('message', '')}".strip(),
            execution,
            output,
        )


class StdioTests(Verifier):
    """A program run once per case on its stdin; stdout compared here, outside the sandbox."""

    name = "stdio-tests"

    def __init__(
        self, program_field: str = "program", cases_field: str = "cases", case_seconds: float = 2.0
    ) -> None:
        self.program_field, self.cases_field, self.case_seconds = program_field, cases_field, case_seconds

    def required_fields(self) -> dict[str, str]:
        return {self.program_field: "program_field", self.cases_field: "cases_field"}

    def job(self, row: dict[str, Any]) -> Job | Verdict:
        try:
            program, cases = code_block(_field(row, self.program_field)), _field(row, self.cases_field)
        except KeyError as missing:
            return self._verdict("failed", f"no {missing.args[0]!r} field")
        if len(program) > MAX_SOURCE_CHARS:
            return self._verdict("blocked", f"a program of {len(program)} characters: not run")
        if isinstance(cases, str):
            cases = json.loads(cases)
        if isinstance(cases, list) and not cases:
            return self._no_tests(f"{self.cases_field!r} holds no case")
        if not cases or not all(isinstance(c, dict) and "input" in c and "output" in c for c in cases):
            return self._verdict("error", f"{self.cases_field!r} must be a list of {{input, output}}")
        return Job("stdio-tests", {"program": program, "cases": [{"input": c["input"]} for c in cases],
                                   "case_seconds": self.case_seconds, "output_bytes": 1 << 16})  # fmt: skip

    def judge(
        self, row: dict[str, Any], report: dict[str, Any], execution: Execution, output: str
    ) -> Verdict:
        cases = row[self.cases_field]
        cases = json.loads(cases) if isinstance(cases, str) else cases
        tests = []
        for number, (case, got) in enumerate(zip(cases, report["outputs"], strict=True)):
            ok = not got.get("timeout") and _lines(got["stdout"]) == _lines(case["output"])
            tests.append(
                {
                    "case": number,
                    "passed": ok,
                    "timeout": bool(got.get("timeout")),
                    "exit_code": got["exit_code"],
                }
            )
        failed = [t["case"] for t in tests if not t["passed"]]
        if not failed:
            return self._verdict("passed", f"{len(tests)} cases", execution, output, tests)
        return self._verdict("failed", f"cases {failed} of {len(tests)} differ", execution, output, tests)


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip().splitlines()]


class MathAnswer(Verifier):
    """The final answer (extracted here with regular expressions only) equals the reference, per math-verify.

    Up to `rows_per_job` answers share one sandboxed job: importing math-verify and sympy costs ~0.4 s.
    """

    name = "math"
    rows_per_job = 64

    def __init__(self, response_field: str = "response", reference_field: str = "reference") -> None:
        self.response_field, self.reference_field = response_field, reference_field

    def required_fields(self) -> dict[str, str]:
        return {self.response_field: "response_field", self.reference_field: "reference_field"}

    def job(self, row: dict[str, Any]) -> Job | Verdict:
        decided, job = self.group([row])
        return decided[0] or job  # type: ignore[return-value]

    def group(self, rows: list[dict[str, Any]]) -> tuple[list[Verdict | None], Job | None]:
        decided: list[Verdict | None] = []
        pairs = []
        for row in rows:
            try:
                response, reference = _field(row, self.response_field), _field(row, self.reference_field)
            except KeyError as missing:
                decided.append(self._verdict("failed", f"no {missing.args[0]!r} field"))
                continue
            answer = extract_final_answer(response)
            decided.append(None if answer is not None else self._verdict("failed", "no final answer found"))
            if answer is not None:
                pairs.append([answer, str(reference)])
        if not pairs:
            return decided, None
        import math_verify

        site = readable(
            Path(math_verify.__file__).resolve().parents[1], ["math-verify", "antlr4-python3-runtime"]
        )
        return decided, Job("math", {"pairs": pairs, "site_packages": "site"}, mounts={"site": str(site)})

    def judge(
        self, row: dict[str, Any], report: dict[str, Any], execution: Execution, output: str
    ) -> Verdict:
        return self._result(report["results"][0], execution)

    def decide_group(self, rows: list[dict[str, Any]], job: Job, execution: Execution) -> list[Verdict]:
        report = self.report(job, execution)
        if isinstance(report, Verdict):
            return [report for _ in rows]
        return [self._result(result, execution) for result in report["results"]]

    def _result(self, result: dict[str, Any], execution: Execution) -> Verdict:
        gold, answer = result.get("parsed", ["?", "?"])
        status: Status = "passed" if result.get("equal") else "failed"
        return self._verdict(status, f"answer {answer} vs reference {gold}", execution)


class JsonSchema(Verifier):
    name = "json-schema"
    cost = 0

    def __init__(self, schema: dict[str, Any], field_name: str = "response") -> None:
        import jsonschema

        jsonschema.validators.validator_for(schema).check_schema(schema)
        self.validator = jsonschema.validators.validator_for(schema)(schema)
        self.field_name = field_name

    def required_fields(self) -> dict[str, str]:
        return {self.field_name: "field_name"}

    def job(self, row: dict[str, Any]) -> Verdict:
        text = row.get(self.field_name)
        if text is None:
            return self._verdict("failed", f"no {self.field_name!r} field")
        try:
            value = json.loads(_fenced(text, "json"))
        except (json.JSONDecodeError, RecursionError) as exc:
            return self._verdict("failed", f"not JSON: {exc}"[:300])
        errors = sorted(self.validator.iter_errors(value), key=lambda e: list(e.path))
        if errors:
            where = "/".join(map(str, errors[0].path)) or "<root>"
            return self._verdict("failed", f"{where}: {errors[0].message}"[:300])
        return self._verdict("passed", "valid")


def _fenced(text: str, languages: str) -> str:
    """The first fenced block in one of `languages` (or unlabelled), else the text itself."""
    fenced = re.search(rf"```(?:{languages})?[ \t]*\n(.*?)```", text, re.DOTALL)
    return fenced.group(1) if fenced else text


def code_block(text: str) -> str:
    """Model answers wrap code in Markdown fences: the first Python block, else the whole text."""
    return _fenced(text, "python|py|python3")


class Regex(Verifier):
    name = "regex"
    cost = 0

    def __init__(self, pattern: str, field_name: str = "response", max_chars: int = 100_000) -> None:
        self.pattern, self.field_name, self.max_chars = re.compile(pattern), field_name, max_chars

    def required_fields(self) -> dict[str, str]:
        return {self.field_name: "field_name"}

    def job(self, row: dict[str, Any]) -> Verdict:
        text = row.get(self.field_name) or ""
        if len(text) > self.max_chars:  # bounds the work a pathological pattern can do
            return self._verdict("failed", f"longer than {self.max_chars} characters")
        if self.pattern.search(text):
            return self._verdict("passed", f"matches {self.pattern.pattern!r}")
        return self._verdict("failed", f"does not match {self.pattern.pattern!r}")


class Length(Verifier):
    name = "length"
    cost = 0

    def __init__(
        self, min_words: int = 1, max_words: int | None = None, field_name: str = "response"
    ) -> None:
        self.min_words, self.max_words, self.field_name = min_words, max_words, field_name

    def required_fields(self) -> dict[str, str]:
        return {self.field_name: "field_name"}

    def job(self, row: dict[str, Any]) -> Verdict:
        words = len((row.get(self.field_name) or "").split())
        if words < self.min_words or (self.max_words is not None and words > self.max_words):
            return self._verdict(
                "failed", f"{words} words (allowed {self.min_words}..{self.max_words or 'any'})"
            )
        return self._verdict("passed", f"{words} words")


CHECKS: dict[str, type[Verifier]] = {
    v.name: v for v in (PythonTests, StdioTests, MathAnswer, JsonSchema, Regex, Length)
}
