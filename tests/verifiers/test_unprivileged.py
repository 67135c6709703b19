"""The pool started by a user other than root: it works (bubblewrap's user namespace gives each job uid
nobody inside) or refuses at start with one message saying what is missing; never a traceback.

Where the pool refuses, the check is an expected failure, except under `CI=true` (as for the shared
benchmarks in tests/conftest.py): CI must run the pool as an unprivileged user, not excuse it.

Run as root (as CI is), the check re-runs itself as uid 65534 through `setpriv`, with the system Python.
The checkout may be unreadable to that uid (CI clones into a `mktemp -d` dir, mode 0700), so the modules
the pool needs are copied to a world-readable temp dir first (not the package's `__init__`, which
imports the model verifiers and numpy: the system Python has neither)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO

CHECK = r"""
import json, os, sys
from synthkiln.verifiers.checks import PythonTests
from synthkiln.verifiers.pool import VerifierPool
from synthkiln.verifiers.sandbox import SandboxUnavailable

try:
    pool = VerifierPool(workers=2)
except SandboxUnavailable as exc:
    print(json.dumps({"refused": str(exc)}))
    sys.exit(0)
rows = [
    {"code": "import os\ndef add(a, b):\n    return a + b\nuid = os.getuid()", "tests": "assert add(1, 2) == 3 and uid == 65534"},
    {"code": "def add(a, b):\n    return 0", "tests": "assert add(1, 2) == 3"},
    {"code": "def add(a, b):\n    return a + b", "tests": "# nothing"},
    {"code": "import glob\nseen = glob.glob('/root/*') + glob.glob('/home/*') + glob.glob('/work/*')", "tests": "assert seen == [], seen"},
]
with pool:
    verdicts = pool.check_batch(PythonTests(), rows)
print(json.dumps({"uid": os.getuid(), "describe": pool.describe(), "verdicts": [[v.status, v.reason, v.detail] for v in verdicts]}))
"""


def tree_for_nobody(root: Path) -> Path:
    """The modules the pool needs, readable by anyone, under `root`."""
    import pyseccomp

    package = root / "synthkiln" / "verifiers"
    package.mkdir(parents=True)
    (root / "synthkiln" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    for name in ("answers", "checks", "errors", "harness", "pool", "sandbox"):
        shutil.copy(REPO / "verifiers" / f"{name}.py", package / f"{name}.py")
    shutil.copy(pyseccomp.__file__, root / "pyseccomp.py")
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def run_as_nobody(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "env", "-i", "PATH=/usr/bin:/bin",
         "HOME=/tmp", f"PYTHONPATH={root}", "/usr/bin/python3", "-c", CHECK],
        capture_output=True, text=True, timeout=300, cwd="/",
    )  # fmt: skip


def test_the_pool_as_an_unprivileged_user() -> None:
    if os.geteuid() != 0:  # already unprivileged: check here, in this interpreter
        done = subprocess.run(["/usr/bin/python3", "-c", CHECK], capture_output=True, text=True, timeout=300,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree_for_nobody(Path(tempfile.mkdtemp())))})  # fmt: skip
    else:
        root = Path(tempfile.mkdtemp(prefix="synthkiln-nobody-"))
        root.chmod(0o755)
        try:
            done = run_as_nobody(tree_for_nobody(root / "tree"))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if "refused" in result:  # a kernel without unprivileged user namespaces: one clear message
        assert "not root" in result["refused"] and "rlimits-only" in result["refused"]
        if os.environ.get("CI", "").lower() == "true":  # CI must run the pool as non-root, not excuse it
            pytest.fail(
                f"CI=true: the pool must run as an unprivileged user here: {result['refused']}", pytrace=False
            )
        pytest.xfail(f"refused as it should on this kernel: {result['refused']}")
    assert result["uid"] != 0 and "not started as root" in result["describe"]["uid"]
    statuses = [(status, reason) for status, reason, _ in result["verdicts"]]
    assert statuses == [("passed", ""), ("failed", ""), ("failed", "no-tests"), ("passed", "")], result


def test_without_user_namespaces_the_pool_refuses_with_one_message(monkeypatch) -> None:
    import synthkiln.verifiers.sandbox as sandbox

    real = subprocess.run

    def refusing(command, *args, **kwargs):  # what bwrap says where the kernel forbids it
        if command[0] == "bwrap":
            return subprocess.CompletedProcess(
                command, 1, "", "bwrap: No permissions to creating new namespace"
            )
        return real(command, *args, **kwargs)

    monkeypatch.setattr(sandbox, "_privileged", lambda: False)
    monkeypatch.setattr(sandbox.subprocess, "run", refusing)
    with pytest.raises(sandbox.SandboxUnavailable, match=r"not root.*No permissions.*rlimits-only"):
        sandbox.Sandbox("bubblewrap")
