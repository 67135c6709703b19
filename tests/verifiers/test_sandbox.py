"""The escape suite: each attempt is contained, and the pool keeps serving afterwards."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from synthkiln.verifiers import Limits, Sandbox, SandboxUnavailable, VerifierPool
from synthkiln.verifiers.checks import PythonTests
from synthkiln.verifiers.sandbox import readable


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(workers=2, limits=Limits(wall_seconds=5, cpu_seconds=5)) as pool:
        yield pool


def run(pool: VerifierPool, code: str, tests: str = "assert True"):
    return pool.check_batch(PythonTests(), [{"code": code, "tests": tests}])[0]


def nobody_processes(settle_seconds: float = 3.0) -> list[str]:
    """Processes of uid nobody still there after `settle_seconds` (bubblewrap's exited reaper lingers as
    a zombie for a moment, until the host's init collects it)."""
    deadline = time.monotonic() + settle_seconds
    while True:
        listed = subprocess.run(
            ["ps", "-u", "65534", "-o", "pid=,stat=,args="], capture_output=True, text=True
        )
        left = [line.strip() for line in listed.stdout.splitlines() if line.strip()]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def still_serving(pool):
    yield
    assert run(pool, "x = 1", "assert x == 1").passed  # the pool keeps serving after every attempt
    assert nobody_processes() == []


def test_identity_environment_and_filesystem(pool, tmp_path: Path) -> None:
    os.environ["SYNTHKILN_TEST_SECRET"] = "hunter2-secret"
    writable = tmp_path / "open"
    writable.mkdir()
    writable.chmod(0o777)
    code = f"""
import os, glob
print("uid", os.getuid(), "gid", os.getgid())
seen = str(dict(os.environ))
for path in glob.glob("/proc/*/environ"):
    try:
        seen += open(path).read()
    except OSError:
        pass
print("SECRET" if "hunter2" in seen else "no secret")
for target in ["{writable}/escaped", "/etc/escaped", "{Path.cwd()}/escaped", "/root/escaped"]:
    try:
        open(target, "w").write("x")
        print("WROTE", target)
    except OSError as exc:
        print("refused", target, exc.errno)
open("inside.txt", "w").write("fine")
"""
    verdict = run(pool, code)
    assert verdict.passed
    assert "uid 65534 gid 65534" in verdict.output
    assert "no secret" in verdict.output and "SECRET" not in verdict.output
    assert "WROTE" not in verdict.output and verdict.output.count("refused") == 4
    assert not (writable / "escaped").exists() and not Path("escaped").exists()


def test_network_to_a_loopback_listener(pool) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            accepted.append(listener.accept())

    waiter = threading.Thread(target=accept)
    waiter.start()
    code = f"""
import socket
for family in (socket.AF_INET, socket.AF_INET6):
    try:
        s = socket.socket(family)
        s.connect(("127.0.0.1" if family == socket.AF_INET else "::1", {port}))
        print("CONNECTED")
    except OSError as exc:
        print("refused", exc.errno)
"""
    verdict = run(pool, code)
    waiter.join()
    listener.close()
    assert "CONNECTED" not in verdict.output and verdict.output.count("refused 97") == 2  # EAFNOSUPPORT
    assert accepted == []


def test_raw_syscalls_through_ctypes_are_refused(pool) -> None:
    code = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
for name, number, args in [("socket", 41, (2, 1, 0)), ("ptrace", 101, (0, 0, 0, 0)), ("unshare", 272, (0x10000000,)),
                           ("mount", 165, (b"none", b"/tmp", b"tmpfs", 0, 0)), ("bpf", 321, (0, 0, 0)), ("keyctl", 250, (0, 0))]:
    result = libc.syscall(number, *args)
    print(name, result, ctypes.get_errno())
"""
    output = run(pool, code).output
    for name in ("socket", "ptrace", "unshare", "mount", "bpf", "keyctl"):
        line = next(line for line in output.splitlines() if line.startswith(name + " "))
        assert line.split()[1] == "-1", line


def test_fork_bomb_memory_bomb_and_infinite_loop(pool) -> None:
    bomb = run(pool, "import os\nwhile True:\n    os.fork()")
    assert bomb.status in ("failed", "timeout")
    memory = run(pool, "x = bytearray(8 * 1024**3)")
    assert memory.status == "failed" and "MemoryError" in memory.detail
    loop = run(pool, "while True:\n    pass")
    assert loop.status == "timeout"


def test_gigabyte_of_output_is_cut(pool) -> None:
    verdict = run(pool, "import sys\nfor _ in range(16384):\n    sys.stdout.write('x' * 65536)")
    assert verdict.status == "failed" and "File too large" in verdict.detail
    assert len(verdict.output) <= 2000


def test_killing_the_parent_and_detached_processes(pool) -> None:
    code = f"""
import os, signal, subprocess
for pid in ({os.getpid()}, os.getppid(), 1):
    try:
        os.kill(pid, signal.SIGKILL)
        print("killed", pid)
    except OSError as exc:
        print("refused", pid, exc.errno)
subprocess.Popen(["sleep", "300"], start_new_session=True)
subprocess.Popen(["sh", "-c", "nohup sleep 300 &"])
"""
    run(pool, code)
    assert nobody_processes() == []  # the pid namespace took the detached sleepers with it


def test_sandbox_refuses_without_bubblewrap(monkeypatch) -> None:
    import shutil

    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "bwrap" else real(name))
    with pytest.raises(SandboxUnavailable, match=r"bwrap.*rlimits-only"):
        Sandbox("bubblewrap")
    weaker = Sandbox("rlimits-only")
    assert weaker.describe()["sandbox"] == "rlimits-only"
    with pytest.raises(SandboxUnavailable, match="/no/python"):
        Sandbox("rlimits-only", python="/no/python")


def test_packages_under_a_private_directory_are_mirrored_for_nobody(tmp_path: Path) -> None:
    private = tmp_path / "site"
    private.mkdir()
    tmp_path.chmod(0o700)
    mirror = readable(private, ["math-verify", "antlr4-python3-runtime"])
    assert mirror != private and (mirror / "math_verify" / "__init__.py").is_file()
    assert readable(private, ["math-verify", "antlr4-python3-runtime"]) == mirror  # made once
    assert readable(mirror, ["math-verify"]) == mirror  # world-readable: used as it is
    sandbox = Sandbox()
    execution = sandbox.run(
        ["python", "-I", "-S", "-c", "import sys; sys.path.append('site'); import math_verify; print('imported')"],
        {}, mounts={"site": str(mirror)},
    )  # fmt: skip
    assert execution.stdout.strip() == "imported", execution.stderr


@pytest.mark.parametrize("tamper", ["a changed file", "an extra file", "group-writable", "another owner"])
def test_a_mirror_found_in_the_temp_dir_is_used_only_when_it_is_ours_and_intact(
    tmp_path: Path, monkeypatch, tamper: str
) -> None:
    import synthkiln.verifiers.sandbox as sandbox

    if tamper == "another owner" and os.geteuid() != 0:
        pytest.skip("giving a file to another owner needs root")
    private = tmp_path / "site"
    private.mkdir()
    tmp_path.chmod(0o700)
    monkeypatch.setattr(sandbox, "_privileged", lambda: True)  # as root: uid nobody must read it
    monkeypatch.setattr(sandbox, "_MIRRORS", {})
    shared = readable(private, ["antlr4-python3-runtime"])  # a set of its own: its mirror may be spoilt
    try:
        assert shared.name.startswith("synthkiln-site-") and (shared / "antlr4" / "__init__.py").is_file()
        sandbox._MIRRORS.clear()
        assert readable(private, ["antlr4-python3-runtime"]) == shared  # intact: used as found
        target = shared / "antlr4" / "__init__.py"
        if tamper == "a changed file":
            target.write_text(target.read_text() + "\nimport os  # planted\n")
        elif tamper == "an extra file":
            (shared / "antlr4" / "planted.py").write_text("")
        elif tamper == "group-writable":
            target.chmod(0o664)
        else:
            os.chown(target, 65534, 65534)
        sandbox._MIRRORS.clear()
        rebuilt = readable(private, ["antlr4-python3-runtime"])
        assert rebuilt != shared and rebuilt.name.startswith("synthkiln-site-private-")
        assert (rebuilt / "antlr4" / "__init__.py").read_bytes() != b"" and not (
            rebuilt / "antlr4" / "planted.py"
        ).exists()
        assert oct(rebuilt.stat().st_mode & 0o777) == "0o755" and rebuilt.stat().st_uid == os.geteuid()
    finally:
        import shutil

        shutil.rmtree(shared, ignore_errors=True)
