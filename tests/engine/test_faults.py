"""Fault injection: break a run on purpose and check that nothing committed is lost and that every
error names its cause. Real `synthkiln run` subprocesses on the embedded model, greedy and short."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import QUICK_INSTRUCTIONS, REPO, synthkiln_command, write_recipe

pytestmark = pytest.mark.slow

# One shard per row, one prompt per window and one in flight: a commit after every prompt, so a kill
# can land between any two of them.
RECIPE = """
name = "faults"
[seeds]
path = "{seeds}"
[task]
kind = "instruction"
[sampling]
temperature = 0
max_tokens = 8
[generation]
batch_size = 1
max_in_flight = 1
[filters]
unterminated = false
[output]
shard_rows = 1
"""
INSTRUCTIONS = [*QUICK_INSTRUCTIONS, "Give one tip for learning a new language.", "What do bees make?"]
KILLS = 10


def cli(*args: str, preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*synthkiln_command(), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        preexec_fn=preexec_fn,
    )


def start(*args: str) -> subprocess.Popen:
    """A run in a session of its own, so that SIGKILL reaches every process it may have started."""
    return subprocess.Popen(
        [*synthkiln_command(), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_lock(out: Path, process: subprocess.Popen) -> None:
    """When `process` holds the directory's lock (its pid in the lock file; a killed run's file stays)."""
    lock = out / ".synthkiln.lock"
    deadline = time.monotonic() + 300
    while process.poll() is None:
        with contextlib.suppress(FileNotFoundError):
            if lock.read_text().strip() == str(process.pid):
                return
        assert time.monotonic() < deadline, f"pid {process.pid} never took {lock}"
        time.sleep(0.02)
    raise AssertionError(f"pid {process.pid} ended ({process.returncode}) before taking {lock}")


def commits(out: Path) -> int:
    """Commits so far (the manifest is replaced atomically: never read half-written)."""
    try:
        return manifest(out)["commits"]
    except FileNotFoundError:
        return 0


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def committed_rows(out: Path) -> list[dict]:
    """Accepted rows of the shards the manifest lists (the committed dataset), in commit order."""
    shards = manifest(out)["shards"]["data"]
    return [row for shard in shards for row in pq.read_table(out / shard["path"]).to_pylist()]


def keys(rows: list[dict]) -> set[tuple]:
    return {(r["id"], r["prompt_id"], r["sample_index"], r["response"]) for r in rows}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("faults")
    seeds = directory / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": text}) + "\n" for text in INSTRUCTIONS))
    return write_recipe(directory, RECIPE.format(seeds=seeds))


@dataclass
class CleanRun:
    out: Path
    per_commit: float  # seconds per later commit (one prompt each)


@pytest.fixture(scope="module")
def clean_run(recipe: Path) -> CleanRun:
    """An uninterrupted run, and its time per commit (the span the SIGKILL delays are drawn from)."""
    out = recipe.parent / "clean"
    process = start("run", str(recipe), "--out", str(out), "--quiet")
    while not (out / "manifest.json").exists() and process.poll() is None:
        time.sleep(0.02)
    first_commit = time.monotonic()
    _, stderr = process.communicate(timeout=600)
    ended = time.monotonic()
    assert process.returncode == 0, stderr[-3000:]
    assert manifest(out)["complete"]
    assert manifest(out)["funnel"]["prompts"] == len(INSTRUCTIONS)
    return CleanRun(out, (ended - first_commit) / (len(INSTRUCTIONS) - 1))


@pytest.fixture(scope="module")
def partial_run(recipe: Path) -> Path:
    """A run stopped at `--limit 2`: committed rows, seeds left to do. Tests work on copies."""
    out = recipe.parent / "partial"
    done = cli("run", str(recipe), "--out", str(out), "--quiet", "--limit", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(committed_rows(out)) == 2 and not manifest(out)["complete"]
    return out


def copy_of(partial: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(partial, out)
    return out


def test_disk_full_names_the_file_and_keeps_what_was_committed(
    recipe: Path, partial_run: Path, clean_run: CleanRun, tmp_path: Path
) -> None:
    out = copy_of(partial_run, tmp_path)
    before = snapshot(out)
    shard_sizes = [len(data) for name, data in before.items() if name.endswith(".parquet")]
    assert len(shard_sizes) >= 2
    limit = min(shard_sizes) // 2  # no shard fits; the lock file (a pid) does

    def size_limit() -> None:  # Python ignores SIGXFSZ: a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    full = cli("run", str(recipe), "--out", str(out), "--quiet", preexec_fn=size_limit)
    assert full.returncode == 2, full.stderr[-3000:]
    next_shard = rf"{re.escape(str(out))}/(data|rejected)/part-{manifest(out)['commits']:05d}\.parquet"
    assert re.search(rf"{next_shard}: cannot write \([^)]*File too large", full.stderr), full.stderr[-3000:]
    assert "Traceback" not in full.stderr
    assert snapshot(out) == before  # committed shards, manifest and card untouched; no temporary left

    resumed = cli("run", str(recipe), "--out", str(out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert manifest(out)["complete"]
    rows = committed_rows(out)
    shards = [name for name in before if name.endswith(".parquet")]
    assert {name: (out / name).read_bytes() for name in shards} == {name: before[name] for name in shards}
    assert keys(rows) == keys(committed_rows(clean_run.out)) and len(rows) == len(keys(rows))


def test_truncated_manifest_is_named_and_nothing_is_touched(
    recipe: Path, partial_run: Path, tmp_path: Path
) -> None:
    out = copy_of(partial_run, tmp_path)
    text = (out / "manifest.json").read_bytes()
    (out / "manifest.json").write_bytes(text[: len(text) // 2])
    before = snapshot(out)
    assert len(before) >= 4  # manifest, card, two shards

    refused = cli("run", str(recipe), "--out", str(out), "--quiet")
    assert refused.returncode == 2
    assert f"{out / 'manifest.json'}: unreadable manifest" in refused.stderr, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr
    assert snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in partial_run.iterdir())


def test_shard_deleted_behind_our_back_is_named(recipe: Path, partial_run: Path, tmp_path: Path) -> None:
    out = copy_of(partial_run, tmp_path)
    listed = manifest(out)["shards"]["data"]
    assert len(listed) == 2
    missing = out / listed[0]["path"]
    missing.unlink()
    before = snapshot(out)

    refused = cli("run", str(recipe), "--out", str(out), "--quiet")
    assert refused.returncode == 2
    assert f"{missing}: listed in the manifest but missing" in refused.stderr, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr
    assert snapshot(out) == before  # the other shard and the manifest are kept for the user to repair


def test_sigkill_at_ten_random_points_then_resume_gives_the_clean_run(
    recipe: Path, clean_run: CleanRun, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    rng = random.Random(20240612)
    # Timing alone is no guide on a shared machine (the clean run's first commit came 1.5 s after its
    # lock in one run, 5 s in the next), so each point is an event of the resumed run plus a seeded
    # random delay within one clean commit interval: after taking the lock (opening and cleaning the
    # directory, restoring the dedup index, loading the model) or after its first new commit
    # (generating, writing a shard, replacing the manifest). Most resumes commit at most one prompt,
    # so the ten kills land all along the dataset.
    points = [(rng.choice([0, 0, 1]), rng.uniform(0, clean_run.per_commit)) for _ in range(KILLS)]
    assert len(points) == KILLS
    attempts = []
    committed: set[tuple] = set()
    for after_commits, delay in points:
        before = commits(out)
        process = start("run", str(recipe), "--out", str(out), "--quiet")
        wait_for_lock(out, process)
        while commits(out) < before + after_commits and process.poll() is None:
            time.sleep(0.01)
        try:
            process.wait(timeout=delay)  # finished before its point: nothing left to kill
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        process.communicate()
        state = manifest(out) if commits(out) else {"commits": 0, "complete": False}
        rows = committed_rows(out) if state["commits"] else []
        attempts.append(
            {"after_commits": after_commits, "delay": round(delay, 2), "exit": process.returncode}
            | {"commits": state["commits"], "complete": state["complete"], "rows": len(rows)}
        )
        assert len(rows) == len(keys(rows)), attempts  # nothing doubled by a kill
        assert committed <= keys(rows), attempts  # nothing committed lost by a kill
        committed = keys(rows)
    killed = [a for a in attempts if a["exit"] == -signal.SIGKILL]
    mid_run = [a for a in killed if a["rows"] and not a["complete"]]
    assert len(killed) >= KILLS // 2, attempts  # the points fell inside runs, not after them
    assert len(mid_run) >= 3, attempts  # kills after a commit, with seeds still to do

    resumed = cli("run", str(recipe), "--out", str(out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final, expected = manifest(out), manifest(clean_run.out)
    rows = committed_rows(out)
    assert final["complete"]
    assert len(rows) == len({r["id"] for r in rows}) == expected["funnel"]["accepted"]
    assert keys(rows) == keys(committed_rows(clean_run.out))
    assert final["funnel"] == expected["funnel"]


def test_two_runs_into_one_directory_one_is_refused_naming_the_holder(
    recipe: Path, clean_run: CleanRun, tmp_path: Path
) -> None:
    out = tmp_path / "shared"
    first = start("run", str(recipe), "--out", str(out), "--quiet")
    wait_for_lock(out, first)
    # Stopped while holding the lock, the first is still running whatever the machine's speed.
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        second = cli("run", str(recipe), "--out", str(out), "--quiet")
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    _, stderr = first.communicate(timeout=600)
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"being written by another synthkiln process (pid {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.returncode == 0, stderr[-3000:]
    assert manifest(out)["complete"] and manifest(out)["runs"] == 1
    assert keys(committed_rows(out)) == keys(committed_rows(clean_run.out))  # the second wrote nothing


def test_seed_file_changed_between_runs_is_refused_unless_allowed(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": text}) + "\n" for text in INSTRUCTIONS))
    recipe = write_recipe(tmp_path, RECIPE.format(seeds=seeds))
    out = tmp_path / "out"
    first = cli("run", str(recipe), "--out", str(out), "--quiet", "--limit", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    old_sha = hashlib.sha256(seeds.read_bytes()).hexdigest()
    assert manifest(out)["inputs"][str(seeds)]["sha256"] == old_sha

    seeds.write_text(seeds.read_text().replace("autumn leaves", "spring rain"))
    new_sha = hashlib.sha256(seeds.read_bytes()).hexdigest()
    assert new_sha != old_sha
    before = snapshot(out)
    refused = cli("run", str(recipe), "--out", str(out), "--quiet", "--limit", "1")
    assert refused.returncode == 2
    assert f"{seeds} (contents changed" in refused.stderr, refused.stderr[-3000:]
    assert "--allow-changed-inputs" in refused.stderr and "Traceback" not in refused.stderr
    assert snapshot(out) == before

    allowed = cli("run", str(recipe), "--out", str(out), "--quiet", "--limit", "1", "--allow-changed-inputs")
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    recorded = manifest(out)
    assert [(c["path"], c["before"]["sha256"], c["after"]["sha256"]) for c in recorded["input_changes"]] == [
        (str(seeds), old_sha, new_sha)
    ]
    assert recorded["inputs"][str(seeds)]["sha256"] == new_sha
