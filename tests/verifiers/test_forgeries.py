"""Forged passes in `python-tests`: the candidate's code runs in a process of its own, so none of these
reach the tests or the report channel. Each forgery is tried in HumanEval `check` style and in plain
`assert` style (no entry point); an honest `add` passes in both, so a failure here is the forgery's."""

from __future__ import annotations

import pytest

from synthkiln.verifiers import Limits, VerifierPool
from synthkiln.verifiers import harness as wire
from synthkiln.verifiers.checks import PythonTests


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(workers=2, limits=Limits(wall_seconds=5, cpu_seconds=5)) as pool:
        yield pool


STYLES = {
    "check": ("def check(candidate):\n    assert {call} == 3\n", "add"),
    "plain": ("assert {call} == 3\n", None),
}


def row(code: str | tuple[str, str], style: str, call: str = "{f}(1, 2)") -> dict:
    """`code` with tests asserting that `call` (by default add(1, 2)) equals 3."""
    if isinstance(code, tuple):
        code, call = code
    tests, entry_point = STYLES[style]
    call = call.format(f="candidate" if entry_point else "add")
    return {"code": code, "tests": tests.format(call=call), "entry_point": entry_point}


# Each defines a wrong `add` (it returns 0 or a rigged object) and tries to pass anyway; a tuple names
# the expression the tests compare with 3 when it is not add(1, 2).
FORGERIES: dict[str, str | tuple[str, str]] = {
    "frame walk to the report channel": """
import json, os, sys

def forge():
    found, frame = {}, sys._getframe()
    while frame is not None:  # the harness's frames are in this process too: take what they hold
        for scope in (frame.f_locals, frame.f_globals):
            found.update({k: v for k, v in scope.items() if isinstance(v, (str, int))})
        frame = frame.f_back
    report = json.dumps({"nonce": found.get("nonce", ""), "passed": True, "assertions": 1}).encode()
    parent = os.getppid()
    for path in (f"/proc/{parent}/mem", f"/proc/{parent}/environ"):
        try:
            open(path, "rb").read(1)
            print("OPENED", path)
        except OSError:
            pass
    try:
        for fd in os.listdir(f"/proc/{parent}/fd"):
            os.write(os.open(f"/proc/{parent}/fd/{fd}", os.O_WRONLY), report)
            print("WROTE", fd)
    except OSError:
        pass
    for fd in range(3, 64):
        try:
            os.write(fd, report)
        except OSError:
            pass
    os._exit(0)  # before the harness could write its own report

def add(a, b):
    forge()
    return 0
""",
    "patched builtins": (
        """
import builtins
builtins.abs = lambda x: 0
def add(a, b):
    return 0
""",
        "3 - abs({f}(1, 2) - 3)",
    ),
    "rigged __eq__": """
class Anything:
    def __eq__(self, other):
        return True
    __hash__ = object.__hash__
def add(a, b):
    return Anything()
""",
    "rigged int subclass": """
class Three(int):
    def __eq__(self, other):
        return True
    __hash__ = int.__hash__
def add(a, b):
    return Three(0)
""",
    "rigged __eq__ in a list": """
class Anything:
    def __eq__(self, other):
        return True
def add(a, b):
    return [Anything()]
""",
    "os._exit while loading": "import os\nos._exit(0)\ndef add(a, b):\n    return 0",
    "os._exit during the call": "import os\ndef add(a, b):\n    os._exit(0)",
    "sys.exit during the call": "import sys\ndef add(a, b):\n    sys.exit(0)",
    "exit hook": """
import atexit, os
atexit.register(lambda: print('PASSED'))
def add(a, b):
    raise SystemExit(0)
""",
    "prints PASSED": "def add(a, b):\n    print('PASSED')\n    print('{\"passed\": true}')\n    return 0",
    "swapped excepthook": "import sys\nsys.excepthook = lambda *a: None\ndef add(a, b):\n    raise AssertionError('hidden')",
    "kills the tests' process": "import os, signal\ndef add(a, b):\n    os.kill(os.getppid(), signal.SIGKILL)\n    return 3",
    "signals the tests' process": "import os, signal\ndef add(a, b):\n    os.kill(os.getppid(), signal.SIGINT)\n    return 0",
    "garbage on the pipe": """
import os
def add(a, b):
    for fd in range(3, 64):
        try:
            os.write(fd, b"\\x05\\x00\\x00\\x00\\x00\\x00\\x00\\x00garbage")
        except OSError:
            pass
    os._exit(0)
""",
    "flood on the pipe": """
import os
def add(a, b):
    for fd in range(3, 64):
        try:
            os.write(fd, (1 << 40).to_bytes(8, "little") + b"x" * 65536)
        except OSError:
            pass
    return 3
""",
}


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("name", FORGERIES)
def test_forgery_fails(pool, name: str, style: str) -> None:
    verdict = pool.check_batch(PythonTests(), [row(FORGERIES[name], style)])[0]
    assert verdict.status == "failed", verdict
    assert "OPENED" not in verdict.output and "WROTE" not in verdict.output


@pytest.mark.parametrize("style", STYLES)
def test_a_builtin_shadowed_by_the_candidate_is_not_the_tests(pool, style: str) -> None:
    code = "def abs(x):\n    return 0\ndef add(a, b):\n    return 0"
    tests, entry_point = STYLES[style]
    call = "candidate" if entry_point else "add"
    tests = tests.replace("assert {call} == 3", f"assert abs({call}(1, 2) - 3) < 1e-9")
    verdict = pool.check_batch(PythonTests(), [{"code": code, "tests": tests, "entry_point": entry_point}])[0]
    assert verdict.status == "failed" and "AssertionError" in verdict.detail, verdict


def test_a_hanging_candidate_times_out(pool) -> None:
    verdict = pool.check_batch(
        PythonTests(), [row("def add(a, b):\n    while True:\n        pass", "check")]
    )[0]
    assert verdict.status == "timeout"


@pytest.mark.parametrize("style", STYLES)
def test_honest_solutions_that_print_noise_pass(pool, style: str) -> None:
    code = "import sys\nprint('loading')\ndef add(a, b):\n    print('adding', a, b)\n    print('warn', file=sys.stderr)\n    return a + b"
    verdict = pool.check_batch(PythonTests(), [row(code, style)])[0]
    assert verdict.passed, verdict
    assert "adding 1 2" in verdict.output and verdict.detail.endswith("(1 assertions)")


def test_helpers_values_objects_and_exceptions_cross(pool) -> None:
    code = """
import math
LIMIT = {"max": 10, "names": ("a", "b")}
def helper(x):
    return x * 2
class Counter:
    def __init__(self, start):
        self.value = start
    def bump(self, by=1):
        self.value += by
        return self
    def __len__(self):
        return self.value
    def __eq__(self, other):
        return isinstance(other, Counter) and other.value == self.value
    __hash__ = object.__hash__
def make(start):
    return Counter(start)
def strict(x):
    if x < 0:
        raise ValueError("negative")
    return math.sqrt(x)
"""
    tests = """
assert LIMIT == {"max": 10, "names": ("a", "b")} and helper(21) == 42
counter = make(2).bump(by=3)
assert counter.value == 5 and len(counter) == 5 and counter == make(5) and counter != make(4)
assert counter != 5  # the candidate's object equals no plain value
try:
    strict(-1)
except ValueError as exc:
    assert "negative" in str(exc)
else:
    assert False, "no ValueError"
assert math.isclose(strict(2.0), 2 ** 0.5)
assert helper([1, 2.5, "x", b"y", None, True, (1,), {3}, frozenset({4}), {"k": [1j]}, 10 ** 80]) == (
    [1, 2.5, "x", b"y", None, True, (1,), {3}, frozenset({4}), {"k": [1j]}, 10 ** 80] * 2
)
"""
    verdict = pool.check_batch(PythonTests(), [{"code": code, "tests": tests}])[0]
    assert verdict.passed, verdict


@pytest.mark.parametrize(
    ("tests", "entry_point"),
    [
        ("", None),
        ("# assert add(1, 2) == 3\n", None),
        ("pass\n", None),
        ("if add(1, 2) == 4:\n    assert False\n", None),
        ("def check(candidate):\n    candidate(1, 2)\n", "add"),
        ("def check(candidate):\n    pass\n", "add"),
    ],
)
def test_tests_that_check_nothing_fail_with_no_tests(pool, tests: str, entry_point: str | None) -> None:
    code = "def add(a, b):\n    return a + b"
    verdict = pool.check_batch(PythonTests(), [{"code": code, "tests": tests, "entry_point": entry_point}])[0]
    assert verdict.status == "failed" and verdict.reason == "no-tests", verdict
    assert verdict.detail.startswith("no-tests:")


def test_the_wire_round_trips_plain_data_and_builds_nothing_else() -> None:
    value = [None, True, False, -(10**50), 0.1, float("inf"), 1 - 2j, "é\ud800", b"\0", (1, [2]), {3, (4,)},
             frozenset({5}), {"k": {6: None}}]  # fmt: skip
    out: list = []
    wire._encode(value, out, None)
    assert wire._decode(b"".join(out)) == value
    with pytest.raises(TypeError, match="plain data only"):
        wire._encode([object()], [], None)  # the tests' side sends plain data or nothing


@pytest.mark.parametrize(
    "data",
    [
        b"",  # nothing
        b"X",  # unknown tag
        b"i\x09\x00\x00\x00\x01",  # truncated int
        b"s\x01\x00\x00\x00\xff",  # not UTF-8
        b"l\xff\xff\xff\x7f",  # a count beyond the data
        b"NN",  # trailing bytes
        b"l\x01\x00\x00\x00" * 300 + b"N",  # nested too deeply
        b"S\x01\x00\x00\x00l\x00\x00\x00\x00",  # an unhashable set member
        b"c" + b"i\x01\x00\x00\x00\x01" * 2,  # complex of ints
        b"f\x03\x00\x00\x00abc",  # not a float
    ],
)
def test_the_wire_refuses_garbage(data: bytes) -> None:
    with pytest.raises(wire._Garbage):
        wire._decode(data)
