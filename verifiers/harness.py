"""The trusted side of a job, run inside the sandbox by the system Python: ``python3 -I -S -B harness.py MODE FD``.

It reads the job (marshal, written by the caller) from stdin, closes stdin, does the work and writes one JSON report, tagged with
the job's nonce, to fd FD, then leaves with ``os._exit`` so that no exit hook of untrusted code runs
after it. The caller accepts exactly one report carrying the nonce: a program that prints "PASSED",
exits early with status 0 (``os._exit``, ``sys.exit``, an ``atexit`` hook) or swaps
``sys.excepthook`` produces no valid report and fails.

``python-tests`` runs the candidate's code in a process of its own. Before the job (and its nonce) is
read, the harness makes itself undumpable (so that no process of the same uid can read or write its
memory or open its file descriptors through /proc) and forks; the child closes the report fd and stdin,
receives the candidate's code through a pipe, runs it and then serves calls. The tests run in the
parent, where the names they use from the candidate's module are proxies: a call crosses the pipe as
plain data (None, bool, int, float, complex, str, bytes and lists, tuples, sets, frozensets, dicts of
them) in our own tagged encoding, and what comes back is decoded by `_decode`, which builds nothing
else (the candidate's other objects come back as opaque `_Remote` handles, equal to no plain value and
to no handle but one to the same object; their equality, hashing and membership are decided here).
So frame walking, patched builtins and a rigged ``__eq__`` reach only the candidate's own process;
a candidate that dies, floods or writes garbage to the pipe fails the job, and one that hangs runs into
the caller's wall clock. Forking costs far less than a second interpreter (measured: ~1 ms).

Standalone on purpose (copied into each job's work dir): it must import nothing from synthkiln. It
starts in about 5 ms: no site-packages, and modules beyond `os`, `sys` and `marshal` (json alone costs
7 ms through `re`, ctypes 3-7 ms here, hence `_ctypes` bare) are imported only by the modes or failures
that need them.
"""

import marshal
import os
import sys

_type, _isinstance, _len, _repr = type, isinstance, len, repr  # before any untrusted code runs
_FRAME_CAP = 64 << 20  # one message between the two processes; more is a flood
_DEPTH_CAP = 200  # nesting of one decoded value


def _undumpable() -> None:
    """Other processes of our uid (the candidate, programs we start) may not read or write our memory,
    nor open our fds, via /proc. `_ctypes` bare: the `ctypes` package costs 3-7 ms to import here."""
    import _ctypes

    class _Int(_ctypes._SimpleCData):
        _type_ = "i"

    class _Function(_ctypes.CFuncPtr):
        _flags_ = _ctypes.FUNCFLAG_CDECL
        _restype_ = _Int

    class _Libc:
        _handle = _ctypes.dlopen(None)

    prctl = _Function(("prctl", _Libc()))
    if prctl(4, 0, 0, 0, 0) != 0 or prctl(3, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE = 4, PR_GET_DUMPABLE = 3
        raise OSError("cannot make the harness undumpable")


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


# -- the wire: plain data only -------------------------------------------------------------------------
# A value is a tag byte and its body; lengths and counts are 4 bytes little-endian. Only exact builtin
# types are written (a subclass of int with its own __eq__ is not an int here); `h` is a handle: an object
# that stays in the candidate's process, named by its number there.


class _Garbage(Exception):
    """What came through the pipe is not a message we wrote."""


class _Remote:
    """An object of the candidate's, left in its process: calls, attributes and a few operations cross the
    pipe; it equals no plain value (its own `__eq__` is never asked about one)."""

    __slots__ = ("_handle", "_kind")

    def __init__(self, handle: int, kind: str) -> None:
        object.__setattr__(self, "_handle", handle)
        object.__setattr__(self, "_kind", kind)

    def __call__(self, *args, **kwargs):
        return _ask("call", self, args, kwargs)

    def __getattr__(self, name: str):
        if name[:2] == "__":
            raise AttributeError(name)
        return _ask("getattr", self, name, None)

    def __setattr__(self, name: str, value) -> None:
        _ask("setattr", self, name, value)

    def __len__(self) -> int:
        return _expect(_ask("op", self, "len", ()), int)

    def __iter__(self):
        return iter(_expect(_ask("op", self, "list", ()), list))

    def __getitem__(self, key):
        return _ask("op", self, "getitem", (key,))

    def __contains__(self, item) -> bool:
        # Decided here, over what iterating the object yields: the candidate's own `__contains__` would
        # be handed the tests' expected value and asked for a verdict on it (`assert 3 in f(x)`).
        return item in self.__iter__()

    def __bool__(self) -> bool:
        # Asked of the candidate: the answer is one plain bool, no more than returning True or False
        # would have given it (the tests hand it no expected value to agree with).
        return _expect(_ask("op", self, "bool", ()), bool)

    def __str__(self) -> str:
        return _expect(_ask("op", self, "str", ()), str)

    def __repr__(self) -> str:
        return f"<{self._kind} of the candidate's>"

    # Equality and hashing are decided here, never by the candidate's `__eq__`/`__hash__`: a handle equals
    # only a handle to the same object (the candidate's process numbers each object once), and no plain
    # value. `assert f(a) == f(b)` with a rigged `__eq__` that says True, or says True then False to pass
    # `==` and `!=`, fails; two distinct objects of the candidate's are unequal whatever their class says.
    def __hash__(self) -> int:
        return hash(("_Remote", object.__getattribute__(self, "_handle")))

    def __eq__(self, other):
        if _type(other) is not _Remote:
            return NotImplemented  # the candidate's object is never equal to a plain value
        return object.__getattribute__(self, "_handle") == object.__getattribute__(other, "_handle")

    def __ne__(self, other):
        if _type(other) is not _Remote:
            return NotImplemented
        return not self.__eq__(other)


_NUMBERED: dict = {}  # the candidate's side: id of an object in `handles` -> its number there
_PLAIN_TAGS = {type(None): b"N", bool: b"B", int: b"i", float: b"f", complex: b"c", str: b"s", bytes: b"b"}
_CONTAINER_TAGS = {list: b"l", tuple: b"t", set: b"S", frozenset: b"Z", dict: b"d"}


def _n(number: int) -> bytes:
    return number.to_bytes(4, "little")


def _encode(value, out: list, handles: list | None, depth: int = 0) -> None:
    """Append `value`'s encoding to `out`. The candidate's side passes `handles` (its objects table) and
    sends what is not plain data as a handle; the tests' side passes None and may send plain data only."""
    kind = _type(value)
    if kind in _PLAIN_TAGS and depth < _DEPTH_CAP:
        if value is None:
            out.append(b"N")
        elif kind is bool:
            out.append(b"T" if value else b"F")
        elif kind is int:
            data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            out += (b"i", _n(_len(data)), data)
        elif kind is float:
            out += (b"f", _n(_len(_repr(value))), _repr(value).encode())
        elif kind is complex:
            out.append(b"c")
            _encode(value.real, out, None)
            _encode(value.imag, out, None)
        elif kind is str:
            data = value.encode("utf-8", "surrogatepass")
            out += (b"s", _n(_len(data)), data)
        else:
            out += (b"b", _n(_len(value)), value)
        return
    if kind in _CONTAINER_TAGS and depth < _DEPTH_CAP and (handles is None or _hashable_inside(value, kind)):
        out += (_CONTAINER_TAGS[kind], _n(_len(value)))
        items = value.items() if kind is dict else value
        for item in items:
            if kind is dict:
                _encode(item[0], out, handles, depth + 1)
                _encode(item[1], out, handles, depth + 1)
            else:
                _encode(item, out, handles, depth + 1)
        return
    if kind is _Remote:
        out += (b"h", _n(object.__getattribute__(value, "_handle")), b"\0\0\0\0")
        return
    if handles is None:
        raise TypeError(f"a {kind.__name__} cannot be passed to the candidate's process (plain data only)")
    number = _NUMBERED.get(id(value))  # one number per object (`handles` keeps it alive: ids stay unique)
    if number is None:
        handles.append(value)
        number = _NUMBERED[id(value)] = _len(handles) - 1
    name = getattr(kind, "__name__", "object")
    name = (name if _type(name) is str else "object").encode("utf-8", "surrogatepass")[:100]
    out += (b"h", _n(number), _n(_len(name)), name)


def _hashable_inside(value, kind) -> bool:
    """Set members and dict keys must come back hashable: plain data only (else the whole is a handle)."""
    if kind in (set, frozenset):
        return all(_type(v) in _PLAIN_TAGS or (_type(v) in (tuple, frozenset) and _plain(v)) for v in value)
    if kind is dict:
        return all(_type(k) in _PLAIN_TAGS or (_type(k) in (tuple, frozenset) and _plain(k)) for k in value)
    return True


def _plain(value, depth: int = 0) -> bool:
    kind = _type(value)
    if kind in _PLAIN_TAGS:
        return True
    if kind in _CONTAINER_TAGS and depth < _DEPTH_CAP:
        items = [v for pair in value.items() for v in pair] if kind is dict else value
        return all(_plain(v, depth + 1) for v in items)
    return False


def _decode(data: bytes, handles: list | None = None):
    """The value `data` encodes; builds None, bool, int, float, complex, str, bytes, list, tuple, set,
    frozenset, dict and (on the tests' side, `handles` None) `_Remote`, nothing else. Anything malformed,
    truncated, trailing or too deep raises `_Garbage`."""
    try:
        value, end = _read(memoryview(data), 0, handles, 0)
    except (IndexError, ValueError, TypeError, OverflowError, UnicodeDecodeError, RecursionError) as exc:
        raise _Garbage(f"undecodable ({_type(exc).__name__})") from None
    if end != _len(data):
        raise _Garbage("trailing bytes")
    return value


def _read(data: memoryview, at: int, handles: list | None, depth: int):
    if depth > _DEPTH_CAP:
        raise _Garbage("nested too deeply")
    tag = data[at : at + 1].tobytes()
    at += 1
    if tag == b"N":
        return None, at
    if tag in (b"T", b"F"):
        return tag == b"T", at
    if tag == b"c":
        real, at = _read(data, at, handles, depth + 1)
        imag, at = _read(data, at, handles, depth + 1)
        if _type(real) is not float or _type(imag) is not float:
            raise _Garbage("complex of non-floats")
        return complex(real, imag), at
    if tag not in (b"i", b"f", b"s", b"b", b"l", b"t", b"S", b"Z", b"d", b"h"):
        raise _Garbage(f"unknown tag {tag!r}")
    size = int.from_bytes(data[at : at + 4], "little")
    at += 4
    if tag == b"h":
        kind_size = int.from_bytes(data[at : at + 4], "little")
        kind = data[at + 4 : at + 4 + kind_size].tobytes().decode("utf-8", "replace")
        if at + 4 + kind_size > _len(data):
            raise _Garbage("truncated")
        if handles is not None:  # the candidate's side: one of its own objects, sent back as an argument
            return handles[size], at + 4 + kind_size
        return _Remote(size, kind or "object"), at + 4 + kind_size
    if tag in (b"i", b"f", b"s", b"b"):
        body = data[at : at + size].tobytes()
        if _len(body) != size:
            raise _Garbage("truncated")
        at += size
        if tag == b"i":
            return int.from_bytes(body, "little", signed=True), at
        if tag == b"f":
            return float(body.decode("ascii")), at
        if tag == b"s":
            return body.decode("utf-8", "surrogatepass"), at
        return body, at
    if size > _len(data) - at:  # every item takes at least one byte
        raise _Garbage("truncated")
    items = []
    for _ in range(size * 2 if tag == b"d" else size):
        item, at = _read(data, at, handles, depth + 1)
        items.append(item)
    if tag == b"l":
        return items, at
    if tag == b"t":
        return tuple(items), at
    if tag == b"S":
        return set(items), at
    if tag == b"Z":
        return frozenset(items), at
    return dict(zip(items[0::2], items[1::2], strict=True)), at


def _send(fd: int, value, handles: list | None) -> None:
    out: list = []
    _encode(value, out, handles)
    body = b"".join(out)
    data = _len(body).to_bytes(8, "little") + body
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _receive_exactly(fd: int, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the other process closed the pipe")
        chunks.append(chunk)
        left -= _len(chunk)
    return b"".join(chunks)


def _receive(fd: int, handles: list | None):
    size = int.from_bytes(_receive_exactly(fd, 8), "little")
    if size > _FRAME_CAP:
        raise _Garbage(f"a message of {size} bytes (the cap is {_FRAME_CAP})")
    return _decode(_receive_exactly(fd, size), handles)


# -- python-tests: the candidate's process -----------------------------------------------------------------

_UNARY = {"len": len, "list": list, "bool": bool, "str": str}


def _candidate(requests: int, replies: int) -> None:
    """The child: run the code, describe its module's names, then answer calls until the pipe closes."""
    handles: list = []
    code = _receive(requests, handles)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(code, "solution.py", "exec"), namespace)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt included: the code did not load
        _send(replies, ("failed", _failure(exc, ("solution.py",), {"solution.py": code})), None)
        _leave()
    names = {}
    for name, value in list(namespace.items()):
        if _type(name) is not str or name[:2] == "__":
            continue
        if _type(value) is _type(sys):  # a module: the tests' side imports its own copy, stdlib only
            names[name] = ("module", str(value.__name__))
        else:
            names[name] = ("value", value)
    _send(replies, ("names", names), handles)
    _flush()
    while True:
        try:
            request = _receive(requests, handles)
        except EOFError:
            _leave()
        verb, target, first, second = request
        try:
            if verb == "call":
                value = target(*first, **second)
            elif verb == "getattr":
                value = getattr(target, first)
            elif verb == "setattr":
                value = setattr(target, first, second)
            elif first in _UNARY:
                value = _UNARY[first](target)
            elif first == "getitem":
                value = target[second[0]]
            else:
                raise ValueError(f"no operation {first!r}")
            reply = ("ok", value)
        except BaseException as exc:
            import traceback

            frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "solution.py"]
            where = f" (solution.py:{frames[-1].lineno}: {frames[-1].line})" if frames else ""
            # Named by its nearest builtin class (`json.JSONDecodeError` is a ValueError to the tests);
            # its own name, if not builtin, leads the message. Untrusted like any reply: see `_ask`.
            builtin = next((k for k in _type(exc).__mro__ if k.__module__ == "builtins"), BaseException)
            own = "" if builtin is _type(exc) else f"{_type(exc).__name__}: "
            reply = ("raised", builtin.__name__, f"{own}{str(exc)[:400]}{where}")
        _send(replies, reply, handles)
        _flush()


def _flush() -> None:
    for stream in (sys.__stdout__, sys.__stderr__):  # what the code printed, for the verdict's output
        try:  # noqa: SIM105 (contextlib would cost start-up time)
            stream.flush()
        except BaseException:
            pass


def _leave() -> None:
    _flush()
    os._exit(0)


# -- python-tests: the tests' process --------------------------------------------------------------------

_CHANNEL: list = []  # [requests fd, replies fd] while the candidate's process answers
_BROKEN: list = []  # why the channel broke, once it has


class _CandidateBroken(BaseException):
    """The candidate's process died, flooded or sent garbage: the job fails whatever the tests catch."""


def _ask(verb: str, target: _Remote, first, second):
    if _BROKEN:
        raise _CandidateBroken(_BROKEN[0])
    try:
        _send(_CHANNEL[0], (verb, target, first, second), None)
    except TypeError as exc:  # the tests passed something that is not plain data
        raise TypeError(str(exc)) from None
    except OSError as exc:
        _BROKEN.append(f"the candidate's process is gone ({_type(exc).__name__})")
        raise _CandidateBroken(_BROKEN[0]) from None
    try:
        reply = _receive(_CHANNEL[1], None)
        if _type(reply) is not tuple or not reply or reply[0] not in ("ok", "raised"):
            raise _Garbage("not a reply")
        if reply[0] == "raised" and (
            _len(reply) != 3 or _type(reply[1]) is not str or _type(reply[2]) is not str
        ):
            raise _Garbage("not a reply")
        if reply[0] == "ok" and _len(reply) != 2:
            raise _Garbage("not a reply")
    except (EOFError, OSError):
        _BROKEN.append("the candidate's process died during a call")
        raise _CandidateBroken(_BROKEN[0]) from None
    except _Garbage as exc:
        _BROKEN.append(f"the candidate's process sent what is not plain data: {exc}")
        raise _CandidateBroken(_BROKEN[0]) from None
    except Exception as exc:  # MemoryError decoding a huge reply: not an exception the tests may catch
        _BROKEN.append(f"the candidate's reply could not be read ({_type(exc).__name__})")
        raise _CandidateBroken(_BROKEN[0]) from None
    if reply[0] == "ok":
        return reply[1]
    kind = _RAISED_AS.get(reply[1])
    if kind is not None:
        raise kind(reply[2])
    import builtins

    known = getattr(builtins, reply[1], None)  # a builtin subclass of an allowed type: raised as that one
    if _type(known) is _type and issubclass(known, BaseException):
        for base in known.__mro__:
            if base in _RAISED_AS.values():
                raise base(f"{reply[1]}: {reply[2]}")
    raise RuntimeError(f"{reply[1]}: {reply[2]}")


# The candidate's exceptions that the tests see with their own type, because tests legitimately expect
# them (`with pytest.raises(ValueError)`, `except KeyError`); a builtin subclass of one (UnicodeDecodeError,
# ConnectionError) is raised as that one. Any other reaches the tests as a RuntimeError naming it. The name
# comes from the candidate's process, which may claim any: it gains nothing it could not get by raising
# that exception, which is why only these are let through. Never: StopIteration and
# StopAsyncIteration (raised inside `map`, `filter`, `zip` or a `next()` they end the iteration silently:
# `assert all(map(lambda c: f(*c[0]) == c[1], cases))` would check nothing and pass), GeneratorExit,
# SystemExit and KeyboardInterrupt (they steer the tests' control flow, not report a bad input), and
# AssertionError: in the tests' process an AssertionError means that one of the tests' asserts failed; the
# candidate's is its own business and must never be mistaken for, or swallowed as, a test's.
_RAISED_AS = {
    kind.__name__: kind
    for kind in (
        ArithmeticError, FloatingPointError, OverflowError, ZeroDivisionError, AttributeError, LookupError,
        IndexError, KeyError, OSError, FileExistsError, FileNotFoundError, IsADirectoryError,
        NotADirectoryError, PermissionError, TimeoutError, RuntimeError, NotImplementedError, RecursionError,
        TypeError, ValueError, UnicodeError,
    )
}  # fmt: skip


def _expect(value, kind):
    if _type(value) is not kind:
        _BROKEN.append(
            f"the candidate's process answered a {_type(value).__name__} where a {kind.__name__} was due"
        )
        raise _CandidateBroken(_BROKEN[0])
    return value


def _counted(source: str, counter: list):
    """The tests compiled so that every `assert` that holds is counted: `assert x, m` runs as
    `assert __synthkiln_ran__(x), m`. One that fails is not (tests that catch their own AssertionError
    checked nothing), nor one whose expression raised. `_ast` bare (`ast` costs 10 ms to import here)."""
    import _ast

    tree = compile(source, "tests.py", "exec", _ast.PyCF_ONLY_AST)
    stack = [tree]
    while stack:
        node = stack.pop()
        if _type(node) is _ast.Assert:
            test = node.test
            where = {k: getattr(test, k) for k in ("lineno", "col_offset", "end_lineno", "end_col_offset")}
            node.test = _ast.Call(_ast.Name("__synthkiln_ran__", _ast.Load(), **where), [test], [], **where)
        for name in node._fields:
            child = getattr(node, name, None)
            if _isinstance(child, list):
                stack.extend(c for c in child if _isinstance(c, _ast.AST))
            elif _isinstance(child, _ast.AST):
                stack.append(child)

    def ran(value) -> bool:
        holds = bool(value)  # once: a handle's truth is asked of the candidate, and may change if asked twice
        if holds:
            counter.append(1)
        return holds

    return compile(tree, "tests.py", "exec"), ran


def _names(names, entry_point: str | None) -> dict:
    """The tests' view of the candidate's module: plain values and proxies as sent, stdlib modules as our
    own imports. The names message comes from the candidate's process, so it is untrusted like the rest:
    - a name that is not an identifier, or that starts with `__` (`__builtins__`: the tests would run
      with the candidate's functions as their builtins; `__name__`, `__synthkiln_ran__`), is left out;
    - a name that shadows a builtin or a stdlib module is left out (the tests get the real one: a
      candidate's `abs` returning 0 must not pass `assert abs(f(x) - y) < 1e-6`), except the entry point;
    - with an entry point, `check` is the tests' own: if they define none, the job fails, rather than
      calling one of the candidate's;
    - a module is imported here only if it is a top-level stdlib module (`import x` in the tests' process
      runs x's code: no submodule such as `unittest.__main__`, nothing private, none of `_IMPORT_NEVER`)."""
    import builtins

    if _type(names) is not dict:
        raise _Garbage("not a list of names")
    stdlib, visible = sys.stdlib_module_names, {}
    for name, described in names.items():
        if _type(name) is not str or _type(described) is not tuple or _len(described) != 2:
            raise _Garbage("not a list of names")
        kind, value = described
        if kind not in ("module", "value"):
            raise _Garbage("not a list of names")
        if not name.isidentifier() or name[:2] == "__" or (entry_point and name == "check" != entry_point):
            continue
        if name != entry_point and (hasattr(builtins, name) or (name in stdlib and kind != "module")):
            continue
        if kind == "module":
            if _type(value) is not str or not _importable(value):
                continue  # the tests' process imports the stdlib only, and not every part of it
            if name in stdlib and name != value:
                continue  # `import cmath as math`: the tests keep the real `math`
            try:
                __import__(value)
                visible[name] = sys.modules[value]
            except BaseException:  # a module the tests cannot have: they do without it
                continue
        else:
            visible[name] = value
    return visible


# Stdlib modules whose import does something (prints, starts a browser, runs site or test code) or that
# hold demos and tests: never imported on the candidate's word.
_IMPORT_NEVER = frozenset({"this", "antigravity", "idlelib", "test", "turtledemo", "turtle", "tkinter", "site",
                           "lib2to3", "ensurepip", "venv", "pydoc_data"})  # fmt: skip


def _importable(module: str) -> bool:
    return (
        module in sys.stdlib_module_names
        and module.isidentifier()
        and module[:1] != "_"
        and module not in _IMPORT_NEVER
    )


def python_tests(job: dict, requests: int, replies: int) -> dict:
    import builtins

    sources = {"solution.py": job["code"], "tests.py": job["tests"]}
    _CHANNEL[:] = [requests, replies]
    try:
        _send(requests, job["code"], None)
        message = _receive(replies, None)
    except (EOFError, OSError):
        return {"passed": False, "error": "CandidateDied", "message": "the code's process ended while loading",
                "phase": "code"}  # fmt: skip
    except _Garbage as exc:
        return {"passed": False, "error": "CandidateGarbage", "message": str(exc), "phase": "code"}
    if _type(message) is not tuple or _len(message) != 2 or message[0] not in ("failed", "names"):
        return {"passed": False, "error": "CandidateGarbage", "message": "not a reply", "phase": "code"}
    if message[0] == "failed":
        report = message[1] if _type(message[1]) is dict else {}
        keep = {
            k: report.get(k) for k in ("error", "message", "where", "line") if _type(report.get(k)) is str
        }
        return {"passed": False, **keep, "phase": "code"}
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    entry_point = job.get("entry_point")
    try:
        namespace.update(_names(message[1], entry_point))
    except _Garbage as exc:
        return {"passed": False, "error": "CandidateGarbage", "message": str(exc), "phase": "code"}
    counter: list = []
    try:
        code, ran = _counted(job["tests"], counter)
        # Ours whatever the names said (`_names` drops dunders already; this holds if that ever changes).
        namespace.update({"__name__": "__main__", "__builtins__": builtins, "__synthkiln_ran__": ran})
        exec(code, namespace)
        if entry_point:
            if "check" not in namespace or entry_point not in namespace:
                missing = "check" if "check" not in namespace else entry_point
                return {"passed": False, "error": "NameError", "message": f"{missing} is not defined",
                        "phase": "tests"}  # fmt: skip
            namespace["check"](namespace[entry_point])
    except BaseException as exc:
        if _BROKEN:
            return {"passed": False, "error": "CandidateBroken", "message": _BROKEN[0], "phase": "tests"}
        return {**_failure(exc, ("tests.py",), sources), "phase": "tests", "assertions": _len(counter)}
    if _BROKEN:  # the tests caught it: the job fails all the same
        return {"passed": False, "error": "CandidateBroken", "message": _BROKEN[0], "phase": "tests"}
    return {"passed": True, "assertions": _len(counter)}


def _split() -> tuple[int, int]:
    """Fork the candidate's process (python-tests) before the job and its nonce are read. Returns the
    tests' ends of the two pipes; the child never returns."""
    _undumpable()  # inherited by the child too, until it execs (it has nothing of ours to protect)
    requests_read, requests_write = os.pipe()
    replies_read, replies_write = os.pipe()
    report_fd = int(sys.argv[2])
    if os.fork() == 0:
        for fd in (0, report_fd, requests_write, replies_read):
            os.close(fd)
        try:
            _candidate(requests_read, replies_write)
        finally:
            os._exit(0)
    os.close(requests_read)
    os.close(replies_write)
    import _signal

    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPROF"):
        _signal.signal(getattr(_signal, name), _signal.SIG_IGN)  # the candidate may signal us (same uid)
    return requests_write, replies_read


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
    channel = _split() if mode == "python-tests" else None
    job = marshal.loads(sys.stdin.buffer.read())
    os.close(0)
    nonce = job.pop("nonce")
    try:
        if channel is not None:
            report = python_tests(job, *channel)
        else:
            report = {"stdio-tests": stdio_tests, "math": math_equal}[mode](job)
    except BaseException as exc:
        report = {"harness_error": f"{_type(exc).__name__}: {exc}"[:500]}
    os.write(report_fd, _json({"nonce": nonce, **report}).encode())
    _flush()
    os._exit(0)


if __name__ == "__main__":
    main()
