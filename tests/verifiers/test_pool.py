from __future__ import annotations

import glob
import tempfile

import pytest

from synthkiln.verifiers import VerifierPool
from synthkiln.verifiers.checks import PythonTests
from synthkiln.verifiers.sandbox import Sandbox
from tests.verifiers.test_sandbox import nobody_processes


def job_dirs() -> list[str]:
    return glob.glob(f"{tempfile.gettempdir()}/synthkiln-job-*")


@pytest.mark.slow
def test_ten_thousand_jobs_leave_nothing_behind() -> None:
    before = set(job_dirs())
    rows = [{"code": f"value = {i}", "tests": f"assert value == {i}"} for i in range(10_000)]
    rows[5_000] = {"code": "import os\nos.fork()\nos._exit(0)", "tests": "pass"}  # one misbehaves on the way
    with VerifierPool() as pool:
        verdicts = pool.check_batch(PythonTests(), rows)
    assert sum(v.passed for v in verdicts) == 9_999 and verdicts[5_000].status == "failed"
    assert nobody_processes() == []
    assert set(job_dirs()) <= before


def test_a_sandbox_that_fails_to_start_is_retried_once(monkeypatch) -> None:
    real = Sandbox.run
    failures = iter([True])

    def flaky(self, *args, **kwargs):  # the OS refusing to start bwrap once (e.g. out of pids)
        execution = real(self, *args, **kwargs)
        if next(failures, False):
            execution.sandbox_error = "bwrap: Can't fork for pid 1: Resource temporarily unavailable"
        return execution

    monkeypatch.setattr(Sandbox, "run", flaky)
    with VerifierPool(workers=1) as pool:
        verdict = pool.check_batch(PythonTests(), [{"code": "x = 2", "tests": "assert x == 2"}])[0]
        assert verdict.passed and pool.retried == 1
    monkeypatch.setattr(
        Sandbox,
        "run",
        lambda self, *a, **k: (e := real(self, *a, **k), setattr(e, "sandbox_error", "bwrap: broken"))[0],
    )
    with VerifierPool(workers=1) as pool:
        verdict = pool.check_batch(PythonTests(), [{"code": "x = 2", "tests": "assert x == 2"}])[0]
    assert verdict.status == "error" and "failed twice" in verdict.detail


def test_rlimits_only_mode_says_so() -> None:
    with VerifierPool(workers=1, sandbox="rlimits-only") as pool:
        verdict = pool.check_batch(
            PythonTests(), [{"code": "import os\nuid = os.getuid()", "tests": "assert uid == 65534"}]
        )[0]
        assert verdict.passed and verdict.sandbox == "rlimits-only"
        assert pool.describe()["sandbox"] == "rlimits-only"


def test_a_malformed_row_is_an_error_verdict_not_a_crash() -> None:
    with VerifierPool(workers=1) as pool:
        verdicts = pool.check_batch(PythonTests(), [{"tests": "pass"}, {"code": 5, "tests": "pass"}])
    assert verdicts[0].status == "failed" and "'code'" in verdicts[0].detail
    assert verdicts[1].status in ("error", "failed")
