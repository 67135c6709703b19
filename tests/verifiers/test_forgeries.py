"""Forged passes in `python-tests`: the candidate's code runs in a process of its own, so none of these
reach the tests or the report channel. Each forgery is tried in HumanEval `check` style and in plain
`assert` style (no entry point). Its `add` is wrong, so the forgery is its only way to pass, and each must
be rejected for the reason expected: a failure for any other reason would hide a forgery that worked."""

from __future__ import annotations

import re
from typing import NamedTuple

import pytest

from synthkiln.verifiers import Limits, VerifierPool
from synthkiln.verifiers import harness as wire
from synthkiln.verifiers.checks import PythonTests


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(workers=2, limits=Limits(wall_seconds=5, cpu_seconds=5)) as pool:
        yield pool


STYLES = {
    "check": ("def check(candidate):\n    assert {expr}\n", "add"),
    "plain": ("assert {expr}\n", None),
}


def row(code: str, style: str, expr: str = "{f}(1, 2) == 3") -> dict:
    """`code` with tests asserting `expr`, where `{f}` is the candidate's `add` (`candidate` in `check`)."""
    tests, entry_point = STYLES[style]
    expr = expr.format(f="candidate" if entry_point else "add")
    return {"code": code, "tests": tests.format(expr=expr), "entry_point": entry_point}


class Forgery(NamedTuple):
    code: str  # defines a wrong `add` (returns 0, raises, or returns a rigged object): the forgery is its only way to pass
    rejected: str  # the verdict's detail matches this (re.search): rejected for the reason expected
    expr: str = "{f}(1, 2) == 3"  # what the tests assert
    absent: tuple[str, ...] = ()  # never in the job's output
    honest: str = "def add(a, b):\n    return a + b"  # passes the same tests


ASSERTION_FAILS = r"^AssertionError at tests\.py:\d"
BROKEN = r"^CandidateBroken: the candidate's process "

# A candidate's `_send` that adds names to the names message (the candidate's process is untrusted: it
# may say anything on the pipe); `FORGED` is the dict of names added.
FORGED_NAMES = """
import sys
harness = sys.modules["__main__"]  # the harness, in the candidate's own process
real_send = harness._send
def forged_send(fd, value, handles):
    if type(value) is tuple and value[0] == "names":
        value[1].update(FORGED)
    real_send(fd, value, handles)
harness._send = forged_send
def add(a, b):
    return 0
"""

# The same forgery by a raw write: the candidate's code finds the pipe's fds in the harness's frame,
# writes its own names message (our encoding, by hand) and then answers every call itself with 0.
RAW_NAMES = r"""
import os, sys

def n(number):
    return number.to_bytes(4, "little")

def s(text):
    return b"s" + n(len(text)) + text.encode()

def handle(number):
    return b"h" + n(number) + n(8) + b"function"

def frame(body):
    return len(body).to_bytes(8, "little") + body

def read(fd, size):
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            os._exit(0)
        data += chunk
    return data

harness = sys._getframe(1).f_locals  # _candidate(requests, replies)
requests, replies = harness["requests"], harness["replies"]
builtins = b"d" + n(2) + s("abs") + handle(0) + s("all") + handle(1)
names = b"d" + n(2) + s("__builtins__") + b"t" + n(2) + s("value") + builtins
names += s("add") + b"t" + n(2) + s("value") + handle(0)
os.write(replies, frame(b"t" + n(2) + s("names") + names))
while True:  # serve every call: abs and add say 0, all says True
    request = read(requests, int.from_bytes(read(requests, 8), "little"))
    answer = b"T" if request.count(b"h" + n(1)) else b"i" + n(1) + b"\0"
    os.write(replies, frame(b"t" + n(2) + s("ok") + answer))
"""

FORGERIES: dict[str, Forgery] = {
    "frame walk to the report channel": Forgery(
        """
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
        BROKEN,
        absent=("OPENED", "WROTE"),
    ),
    "patched builtins": Forgery(
        "import builtins\nbuiltins.abs = lambda x: 0\ndef add(a, b):\n    return 0",
        ASSERTION_FAILS,
        "3 - abs({f}(1, 2) - 3) == 3",
    ),
    "__builtins__ in the names message": Forgery(
        'FORGED = {"__builtins__": ("value", {"abs": lambda x: 0, "all": lambda x: True})}' + FORGED_NAMES,
        ASSERTION_FAILS,
        "3 - abs({f}(1, 2) - 3) == 3",
    ),
    "__builtins__ in a names message written raw to the pipe": Forgery(
        RAW_NAMES, ASSERTION_FAILS, "3 - abs({f}(1, 2) - 3) == 3"
    ),
    "__builtins__ in a raw names message, against all": Forgery(
        RAW_NAMES, ASSERTION_FAILS, "all([{f}(1, 2) == 3, {f}(2, 2) == 4])"
    ),
    "stdlib code run in the tests' process": Forgery(
        'FORGED = {name: ("module", name) for name in ("this", "antigravity", "unittest.__main__", '
        '"test.regrtest", "idlelib.idle", "__hello__", "venv.__main__", "json.tool")}'
        '\nFORGED["zen"] = ("module", "this")' + FORGED_NAMES,
        ASSERTION_FAILS,
        absent=("Zen of Python", "Hello world", "Ran 0 tests", "usage:"),
    ),
    "StopIteration ends the tests' map": Forgery(
        "def add(a, b):\n    raise StopIteration",
        r"^RuntimeError at tests\.py:\d.*StopIteration",
        "all(map(lambda c: {f}(*c[0]) == c[1], [((1, 2), 3), ((2, 2), 4)]))",
    ),
    "StopIteration ends the tests' filter": Forgery(
        "def add(a, b):\n    raise StopIteration('done')",
        r"^RuntimeError at tests\.py:\d.*StopIteration: done",
        "not list(filter(lambda c: {f}(*c[0]) != c[1], [((1, 2), 3), ((2, 2), 4)]))",
    ),
    "rigged __eq__": Forgery(
        """
class Anything:
    def __eq__(self, other):
        return True
    __hash__ = object.__hash__
def add(a, b):
    return Anything()
""",
        ASSERTION_FAILS,
    ),
    "rigged __eq__ between two results": Forgery(
        """
class Agreeable:  # says equal, then not equal: passes `==` and then `!=` asked as `not ==`
    said = []
    def __eq__(self, other):
        Agreeable.said.append(1)
        return len(Agreeable.said) % 2 == 1
    __hash__ = object.__hash__
def add(a, b):
    return Agreeable()
""",
        ASSERTION_FAILS,
        "{f}(1, 2) == {f}(0, 3) and {f}(1, 2) != {f}(2, 2)",
    ),
    "rigged __contains__": Forgery(
        """
class Everything:
    def __contains__(self, item):
        return True
def add(a, b):
    return Everything()
""",
        r"^TypeError at tests\.py:\d.*not iterable",
        "3 in {f}(1, 2)",
        honest="class Bag:\n    def __init__(self, items):\n        self.items = items\n"
        "    def __iter__(self):\n        return iter(self.items)\ndef add(a, b):\n    return Bag([a + b])",
    ),
    "rigged __hash__ and __eq__ in a set": Forgery(
        """
class Three:
    def __eq__(self, other):
        return True
    def __hash__(self):
        return hash(3)
def add(a, b):
    return Three()
""",
        ASSERTION_FAILS,
        "{f}(1, 2) in {{3}} and {{{f}(1, 2): 1}}.get(3) == 1",
    ),
    "rigged int subclass": Forgery(
        """
class Three(int):
    def __eq__(self, other):
        return True
    __hash__ = int.__hash__
def add(a, b):
    return Three(0)
""",
        ASSERTION_FAILS,
    ),
    "rigged __eq__ in a list": Forgery(
        """
class Anything:
    def __eq__(self, other):
        return True
def add(a, b):
    return [Anything()]
""",
        ASSERTION_FAILS,
        "{f}(1, 2) == [3]",
        honest="def add(a, b):\n    return [a + b]",
    ),
    "os._exit while loading": Forgery(
        "import os\nos._exit(0)\ndef add(a, b):\n    return 0",
        r"^CandidateDied: the code's process ended while loading",
    ),
    "os._exit during the call": Forgery(
        "import os\ndef add(a, b):\n    os._exit(0)", BROKEN + "died during a call"
    ),
    "sys.exit during the call": Forgery(
        "import sys\ndef add(a, b):\n    sys.exit(0)", r"^RuntimeError at tests\.py:\d.*SystemExit"
    ),
    "exit hook": Forgery(
        "import atexit, os\natexit.register(lambda: print('PASSED'))\ndef add(a, b):\n    raise SystemExit(0)",
        r"^RuntimeError at tests\.py:\d.*SystemExit",
    ),
    "prints PASSED": Forgery(
        "def add(a, b):\n    print('PASSED')\n    print('{\"passed\": true}')\n    return 0", ASSERTION_FAILS
    ),
    "swapped excepthook": Forgery(
        "import sys\nsys.excepthook = lambda *a: None\ndef add(a, b):\n    raise AssertionError('hidden')",
        r"^RuntimeError at tests\.py:\d.*AssertionError: hidden",
    ),
    "kills the tests' process": Forgery(
        "import os, signal\ndef add(a, b):\n    os.kill(os.getppid(), signal.SIGKILL)\n    return 0",
        r"^the job ended without a valid report \((signal 9|exit code 137)\)",  # bwrap passes 128 + 9 on
    ),
    "signals the tests' process": Forgery(  # SIGINT would be a KeyboardInterrupt amid the tests: ignored
        "import os, signal, time\ndef add(a, b):\n    os.kill(os.getppid(), signal.SIGINT)\n    time.sleep(0.2)\n    return 0",
        ASSERTION_FAILS,
    ),
    "garbage on the pipe": Forgery(
        """
import os
def add(a, b):
    for fd in range(3, 64):
        try:
            os.write(fd, b"\\x05\\x00\\x00\\x00\\x00\\x00\\x00\\x00garbage")
        except OSError:
            pass
    os._exit(0)
""",
        BROKEN + "sent what is not plain data",
    ),
    "flood on the pipe": Forgery(
        """
import os
def add(a, b):
    for fd in range(3, 64):
        try:
            os.write(fd, (1 << 40).to_bytes(8, "little") + b"x" * 65536)
        except OSError:
            pass
    return 0
""",
        BROKEN + r"sent what is not plain data: a message of \d+ bytes",
    ),
}


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("name", FORGERIES)
def test_forgery_fails(pool, name: str, style: str) -> None:
    forgery = FORGERIES[name]
    verdict = pool.check_batch(PythonTests(), [row(forgery.code, style, forgery.expr)])[0]
    assert verdict.passed is False and verdict.status == "failed", verdict
    assert re.search(forgery.rejected, verdict.detail), verdict
    for text in forgery.absent:
        assert text not in verdict.output, verdict


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("name", FORGERIES)
def test_an_honest_add_passes_the_tests_of_each_forgery(pool, name: str, style: str) -> None:
    """The tests each forgery is tried against are passed by an honest `add`: a forgery's failure is its own."""
    forgery = FORGERIES[name]
    verdict = pool.check_batch(PythonTests(), [row(forgery.honest, style, forgery.expr)])[0]
    assert verdict.passed, verdict


HONEST_ADD = "def add(a, b):\n    return a + b"


@pytest.mark.parametrize("style", STYLES)
def test_an_assertion_error_of_the_candidate_is_no_passing_assert(pool, style: str) -> None:
    """Tests that catch AssertionError: the candidate's cannot be swallowed as a test's, and a test's
    assert that failed (and was caught) is not counted, so nothing was checked."""
    entry_point = STYLES[style][1]
    body = "try:\n    assert {f}(1, 2) == 3\nexcept AssertionError:\n    pass\n"
    if entry_point:
        body = "def check(candidate):\n" + "".join(f"    {line}\n" for line in body.splitlines())
    body = body.format(f="candidate" if entry_point else "add")
    raising = "def add(a, b):\n    raise AssertionError('not me')"
    verdict = pool.check_batch(PythonTests(), [{"code": raising, "tests": body, "entry_point": entry_point}])[
        0
    ]
    assert verdict.passed is False and re.search(r"^RuntimeError at tests\.py:\d.*not me", verdict.detail), (
        verdict
    )
    wrong = "def add(a, b):\n    return 0"
    verdict = pool.check_batch(PythonTests(), [{"code": wrong, "tests": body, "entry_point": entry_point}])[0]
    assert verdict.passed is False and verdict.reason == "no-tests", verdict
    verdict = pool.check_batch(
        PythonTests(), [{"code": HONEST_ADD, "tests": body, "entry_point": entry_point}]
    )[0]
    assert verdict.passed and verdict.detail.endswith("(1 assertions)"), verdict


def test_a_check_of_the_candidates_is_never_called(pool) -> None:
    code = 'FORGED = {"check": ("value", lambda candidate: None)}' + FORGED_NAMES.replace(
        "def add(a, b):\n    return 0", "def add(a, b):\n    return 0\ndef check(candidate):\n    pass"
    )
    tests = "assert add(1, 2) == 3\n"  # no check of the tests' own: the candidate's must not stand in
    verdict = pool.check_batch(PythonTests(), [{"code": code, "tests": tests, "entry_point": "add"}])[0]
    assert verdict.passed is False and "AssertionError" in verdict.detail, verdict
    tests = "x = 1\n"
    verdict = pool.check_batch(PythonTests(), [{"code": code, "tests": tests, "entry_point": "add"}])[0]
    assert verdict.passed is False and verdict.detail.startswith("NameError: check is not defined"), verdict


@pytest.mark.parametrize("style", STYLES)
def test_a_builtin_shadowed_by_the_candidate_is_not_the_tests(pool, style: str) -> None:
    code = "def abs(x):\n    return 0\ndef add(a, b):\n    return 0"
    verdict = pool.check_batch(PythonTests(), [row(code, style, "abs({f}(1, 2) - 3) < 1e-9")])[0]
    assert verdict.status == "failed" and re.search(ASSERTION_FAILS, verdict.detail), verdict


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
class Custom(Exception):
    pass
def fails(kind):
    if kind == "key":
        return {}["missing"]
    if kind == "decode":
        return b"\\xff".decode()
    if kind == "custom":
        raise Custom("mine")
    if kind == "json":
        import json
        return json.loads("{")
    if kind == "stop":
        raise StopIteration
    raise ZeroDivisionError("zero")
"""
    tests = """
assert LIMIT == {"max": 10, "names": ("a", "b")} and helper(21) == 42
counter = make(2).bump(by=3)
assert counter.value == 5 and len(counter) == 5 and counter.value == make(5).value
assert counter == counter.bump(by=0) and {counter: "seen"}[counter.bump(by=0)] == "seen"  # the same object
assert make(5) != make(5)  # two objects of the candidate's: its own __eq__ is never asked
assert counter != 5  # the candidate's object equals no plain value
for kind, expected, named in [("key", KeyError, "missing"), ("decode", UnicodeError, "UnicodeDecodeError"),
                              ("custom", RuntimeError, "Custom: mine"), ("json", ValueError, "JSONDecodeError"),
                              ("stop", RuntimeError, "StopIteration"), ("zero", ArithmeticError, "zero")]:
    try:
        fails(kind)
    except expected as exc:
        assert named in str(exc), str(exc)
    else:
        assert False, kind
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


def test_names_from_the_candidate_never_reach_the_tests_special_names_or_import_unsafe_modules(
    monkeypatch,
) -> None:
    import math

    imported: list[str] = []
    monkeypatch.setattr(wire, "__import__", imported.append, raising=False)  # records, imports nothing
    names = {
        "__builtins__": ("value", {"abs": 0}), "__name__": ("value", "x"), "__synthkiln_ran__": ("value", 1),
        "__x": ("value", 1), "a b": ("value", 1), "1x": ("value", 1), "": ("value", 1),
        "check": ("value", "the candidate's"), "abs": ("value", 0), "add": ("value", 2), "helper": ("value", 3),
        "math": ("module", "math"), "m": ("module", "math"), "zen": ("module", "this"),
        "antigravity": ("module", "antigravity"), "u": ("module", "unittest.__main__"), "unittest": ("module", "unittest.__main__"),
        "t": ("module", "test.regrtest"), "test": ("module", "test"), "i": ("module", "idlelib"), "p": ("module", "_thread"),
        "main": ("module", "__main__"), "j": ("module", "json.tool"), "cmath": ("module", "math"), "x": ("module", 3),
    }  # fmt: skip
    assert wire._names(names, "add") == {"add": 2, "helper": 3, "math": math, "m": math}
    assert imported == ["math", "math"]
    assert wire._names({"check": ("value", 1)}, None) == {"check": 1}  # no entry point: no check called
    with pytest.raises(wire._Garbage):
        wire._names({"y": ("code", "print(1)")}, None)


class Custom(Exception):
    pass


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("ValueError", ValueError), ("KeyError", KeyError), ("IndexError", IndexError), ("TypeError", TypeError),
        ("ZeroDivisionError", ZeroDivisionError), ("RecursionError", RecursionError), ("FileNotFoundError", FileNotFoundError),
        ("UnicodeDecodeError", UnicodeError), ("ModuleNotFoundError", RuntimeError), ("StopIteration", RuntimeError),
        ("StopAsyncIteration", RuntimeError), ("GeneratorExit", RuntimeError), ("SystemExit", RuntimeError),
        ("KeyboardInterrupt", RuntimeError), ("AssertionError", RuntimeError), ("Exception", RuntimeError),
        ("BaseException", RuntimeError), ("UserWarning", RuntimeError), ("Custom", RuntimeError), ("valueerror", RuntimeError),
    ],
)  # fmt: skip
def test_the_candidates_exception_reaches_the_tests_as_an_allowed_type_or_runtime_error(
    monkeypatch, name, kind
) -> None:
    import os

    requests_read, requests_write = os.pipe()
    replies_read, replies_write = os.pipe()
    wire._send(replies_write, ("raised", name, "boom"), None)  # the candidate's answer, before the call
    monkeypatch.setattr(wire, "_CHANNEL", [requests_write, replies_read])
    monkeypatch.setattr(wire, "_BROKEN", [])
    try:
        with pytest.raises(BaseException) as raised:
            wire._ask("call", wire._Remote(0, "function"), (), {})
    finally:
        for fd in (requests_read, requests_write, replies_read, replies_write):
            os.close(fd)
    assert type(raised.value) is kind and "boom" in str(raised.value)
    if kind is RuntimeError or name != kind.__name__:
        assert name in str(raised.value)


def test_a_handles_equality_hash_and_membership_are_decided_here() -> None:
    """No pipe is open: asking the candidate would fail. A handle equals only a handle with its number."""
    one, same, other = wire._Remote(1, "Anything"), wire._Remote(1, "Anything"), wire._Remote(2, "Anything")
    assert one == same and hash(one) == hash(same)
    assert not one.__ne__(same) and one.__eq__(1) is NotImplemented
    assert one != other and one != 1 and 1 != one  # noqa: SIM300 (both sides of the comparison)
    assert one in {same} and other not in {one} and 1 not in {one} and one not in [1, "x"]
