"""The trusted side of a job, run inside the sandbox by the system Python: ``python3 -I -S -B harness.py MODE FD``.

It reads the job (marshal, written by the caller) from stdin, closes stdin, does the work and writes one JSON report, tagged with
the job's nonce, to fd FD, then leaves with ``os._exit`` so that no exit hook of the untrusted code runs
after it. The caller accepts exactly one report carrying the nonce: a program that prints "PASSED",
exits early with status 0 (``os._exit``, ``sys.exit``, an ``atexit`` hook) or swaps
``sys.excepthook`` produces no valid report and fails.

Standalone on purpose (copied into each job's work dir): it must import nothing from synthkiln. It
starts in about 5 ms: no site-packages, and modules beyond `os`, `sys` and `marshal` (json alone costs
7 ms through `re`) are imported only by the modes or failures that need them.
"""

import marshal
import os
import sys

_type, _isinstance, _len, _repr = type, isinstance, len, repr  # before any untrusted code runs
_PLAIN = (int, float, complex, str, bytes, bool, type(None))
_CONTAINERS = (list, tuple, set, frozenset, dict)


def _undumpable() -> None:
    """Other processes of uid nobody (the programs we start) may not read our memory via /proc."""
    import ctypes

    try:  # noqa: SIM105 (contextlib would cost start-up time)
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except OSError:
        pass


def _plain(value, depth=0) -> bool:
    """Builtin values only: an object whose __eq__ always says True must not pass an assert."""
    kind = _type(value)
    if kind in _PLAIN:
        return True
    if kind in _CONTAINERS and depth < 50:
        items = list(value.items()) if kind is dict else list(value)
        return all(_plain(v, depth + 1) for item in items for v in (item if kind is dict else (item,)))
    return False


def _guarded(function):
    def candidate(*args, **kwargs):
        value = function(*args, **kwargs)
        if not _plain(value):
            raise AssertionError(f"returned {_type(value).__name__}, not a builtin value")
        return value

    candidate.__name__ = getattr(function, "__name__", "candidate")
    return candidate


def _failure(exc: BaseException, files: tuple, sources: dict) -> dict:
    import linecache
    import traceback

    for name, source in sources.items():  # lets the traceback quote code compiled from strings
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename in files]
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None
    line = frames[-1].line if frames else None
    message = str(exc)[:500]
    return {"passed": False, "error": _type(exc).__name__, "message": message, "where": where, "line": line}


def python_tests(job: dict) -> dict:
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    sources = {"solution.py": job["code"], "tests.py": job["tests"]}
    try:
        exec(compile(job["code"], "solution.py", "exec"), namespace)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt included: the code did not load
        return {**_failure(exc, ("solution.py",), sources), "phase": "code"}
    try:
        exec(compile(job["tests"], "tests.py", "exec"), namespace)
        entry_point = job.get("entry_point")
        if entry_point:
            if "check" not in namespace or entry_point not in namespace:
                missing = "check" if "check" not in namespace else entry_point
                return {
                    "passed": False,
                    "error": "NameError",
                    "message": f"{missing} is not defined",
                    "phase": "tests",
                }
            namespace["check"](_guarded(namespace[entry_point]))
    except BaseException as exc:
        return {**_failure(exc, ("solution.py", "tests.py"), sources), "phase": "tests"}
    return {"passed": True}


def stdio_tests(job: dict) -> dict:
    """Run the program once per case; outputs go back to the caller, who compares them."""
    import subprocess

    _undumpable()
    with open("program.py", "w") as handle:
        handle.write(job["program"])
    outputs = []
    for case in job["cases"]:
        try:
            done = subprocess.run(
                [sys.executable, "-I", "-S", "-B", "program.py"], input=case["input"].encode(), capture_output=True,
                timeout=job["case_seconds"],
            )  # fmt: skip
            outputs.append({
                "stdout": done.stdout[: job["output_bytes"]].decode("utf-8", "replace"),
                "stderr": done.stderr[-2000:].decode("utf-8", "replace"),
                "exit_code": done.returncode,
            })  # fmt: skip
        except subprocess.TimeoutExpired:
            outputs.append({"stdout": "", "stderr": "", "exit_code": None, "timeout": True})
    return {"outputs": outputs}


def math_equal(job: dict) -> dict:
    """math-verify (sympy underneath) decides equality of each (answer, reference) pair; parsing is
    evaluation, hence here. Its own per-call timeouts keep one pathological answer from taking the rest."""
    sys.path.append(os.path.abspath(job["site_packages"]))  # mounted read-only in the work dir
    from math_verify import parse, verify

    def parsed(text: str):
        # Plain numbers and expressions too, not only LaTeX between dollars.
        return parse(text if "$" in text else f"${text}$", parsing_timeout=2)

    results = []
    for answer, reference in job["pairs"]:
        gold, guess = parsed(reference), parsed(answer)
        equal = bool(gold and guess and verify(gold, guess, timeout_seconds=2))
        results.append({"equal": equal, "parsed": [str(gold), str(guess)]})
    return {"results": results}


MODES = {"python-tests": python_tests, "stdio-tests": stdio_tests, "math": math_equal}


def _json(value) -> str:
    """JSON for the report's plain values, without importing json (see the module docstring)."""
    kind = _type(value)
    if value is None or kind is bool:
        return {None: "null", True: "true", False: "false"}[value]
    if kind in (int, float):
        return _repr(value)
    if kind is str:
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return '"' + "".join(c if c >= " " else f"\\u{ord(c):04x}" for c in escaped) + '"'
    if kind in (list, tuple):
        return "[" + ",".join(_json(v) for v in value) + "]"
    if kind is dict:
        return "{" + ",".join(f"{_json(str(k))}:{_json(v)}" for k, v in value.items()) + "}"
    return _json(_repr(value))


def main() -> None:
    mode, report_fd = sys.argv[1], int(sys.argv[2])
    job = marshal.loads(sys.stdin.buffer.read())
    os.close(0)
    nonce = job.pop("nonce")
    try:
        report = MODES[mode](job)
    except BaseException as exc:
        report = {"harness_error": f"{_type(exc).__name__}: {exc}"[:500]}
    os.write(report_fd, _json({"nonce": nonce, **report}).encode())
    for stream in (sys.__stdout__, sys.__stderr__):  # what the code printed, for the verdict's output
        try:  # noqa: SIM105 (contextlib would cost start-up time)
            stream.flush()
        except BaseException:
            pass
    os._exit(0)


if __name__ == "__main__":
    main()
