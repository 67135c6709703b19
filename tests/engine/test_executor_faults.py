"""A Ray worker node lost in the middle of a corpus command: Ray retries the task it was running on the
node left, and the command commits exactly the local executor's rows, none lost or doubled; the cluster
stays up.

Its own module and cluster (`two_nodes`, on loopback), since it kills nodes: every process of the worker
node gets SIGKILL, the loopback equivalent of `ray stop` (or a power cut) on that node. A test whose
worker node is gone gets a fresh one, joined to the same head.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO
from tests.engine.test_executor import (
    RAY,
    RAY_ENV,
    Nodes,
    command_line,
    outputs,
    planted_files,
    start_node,
    synthkiln,
    two_nodes,
)

FILES = 120  # one signing (or matching) task per file


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[Nodes]]:
    """The cluster's nodes; a test that needs a worker node where the last one was killed adds one."""
    with two_nodes() as nodes:
        yield [nodes]


@pytest.fixture
def nodes(cluster: list[Nodes]) -> Nodes:
    """The head and a live worker node."""
    if not node_processes(cluster[-1].worker):
        cluster.append(cluster[-1]._replace(worker=start_node(f"--address={cluster[-1].address}")))
    return cluster[-1]


@pytest.fixture(scope="module")
def many_files(gsm8k_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], set[int]]:
    """The planted corpus (near-duplicates, GSM8K test questions pasted in) cut into `FILES` files."""
    paths, planted = planted_files(gsm8k_dir, tmp_path_factory.mktemp("corpus"))
    rows = [row for path in paths for row in read_rows(path)]
    step = -(-len(rows) // FILES)
    folder = tmp_path_factory.mktemp("many")
    parts = [folder / f"part-{k:03d}.jsonl" for k in range(FILES)]
    for k, part in enumerate(parts):
        part.write_text("".join(json.dumps(row) + "\n" for row in rows[k * step : (k + 1) * step]))
    return parts, planted


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines()]


def node_processes(temp: str) -> dict[int, str]:
    """pid -> command line of every live process of the node whose temp dir is `temp`: those naming it
    (raylet, log monitor) and their descendants (its workers and agents, which retitle themselves
    `ray::IDLE`, `ray::sign_chunk`, ...: their command lines no longer name it)."""
    lines, parents = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state, parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except OSError:  # gone meanwhile
            continue
        if state != "Z":
            lines[int(entry.name)], parents[int(entry.name)] = line.strip(), int(parent)
    ours = {pid for pid, line in lines.items() if f"{temp}/" in line}
    while grown := {pid for pid, parent in parents.items() if parent in ours} - ours:
        ours |= grown
    return {pid: lines[pid] for pid in ours}


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.01)
    return value


def kill_node_mid_task(run: subprocess.Popen, temp: str, task: str) -> dict[int, str]:
    """As soon as the node at `temp` runs a `task` of `run`, SIGKILL every process of the node: those
    killed. Fails if `run` ends first."""

    def running_task() -> dict[int, str] | None:
        assert run.poll() is None, f"the command ended before the worker node ran a task: {run.communicate()}"
        processes = node_processes(temp)
        return processes if any(line.startswith(f"ray::{task}") for line in processes.values()) else None

    victims = wait_for(running_task, 90, f"{task} task on the worker node")
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):  # a worker that exited meanwhile
            os.kill(pid, signal.SIGKILL)
    return victims


COMMANDS = {  # command -> its options (given the GSM8K folder), the Ray task it runs per batch, and
    # what its local run removes (given the removed rows and the rows the test questions were pasted in)
    "dedup": (
        lambda gsm8k: ["--threshold", "0.7", "--keep", "longest", "--partition-mb", "1"],
        "sign_chunk",
        lambda removed, planted: len(removed) > 600,  # the planted copies (and the null row)
    ),
    "decontaminate": (
        lambda gsm8k: ["--benchmark", f"gsm8k={gsm8k / 'test.jsonl'}"],
        "find_matches",
        lambda removed, planted: planted <= {row["n"] for row in removed},
    ),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_worker_node_lost_mid_command_loses_and_doubles_no_row(
    command: str, many_files, nodes: Nodes, gsm8k_dir: Path, tmp_path: Path
) -> None:
    paths, planted = many_files
    options, task, removes = COMMANDS[command]
    arguments = [command, *map(str, paths), *options(gsm8k_dir)]
    synthkiln(*arguments, "--out", str(tmp_path / "local"))
    kept, removed, _ = outputs(tmp_path / "local")
    assert removes(removed, planted)  # a removed set worth comparing

    out = tmp_path / "ray"
    cli = command_line(*arguments, "--out", str(out), "--executor", "ray", "--ray-address", nodes.address)
    run = subprocess.Popen(
        cli, cwd=REPO, env=RAY_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        victims = kill_node_mid_task(run, nodes.worker, task)
        running_at_kill = run.poll() is None
        wait_for(lambda: not node_processes(nodes.worker), 30, "end to the worker node's processes")
        _, stderr = run.communicate(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
    assert running_at_kill
    assert any(line.split(" ", 1)[0].endswith("/raylet") for line in victims.values())
    assert run.returncode == 0, stderr[-3000:]
    ray_kept, ray_removed, manifest = outputs(out)
    assert ray_kept == kept and ray_removed == removed  # nothing lost, nothing doubled
    assert manifest["executor"]["executor"] == "ray"
    # Ray saw the task die with its node and ran it again (on the head, the node left)
    (log,) = Path(nodes.head, "session_latest", "logs").glob(f"python-core-driver-*_{run.pid}.log")
    said = log.read_bytes()
    assert b"NODE_DIED" in said and b"resubmit task" in said
    # the cluster is up: a command run on it closes its connection, never the cluster
    status = subprocess.run([RAY, "status", f"--address={nodes.address}"], capture_output=True, env=RAY_ENV)
    assert status.returncode == 0, status.stderr[-2000:]
