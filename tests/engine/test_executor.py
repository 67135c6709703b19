"""The Ray executor gives the local executor's answers: a local Ray, and a two-node cluster on loopback.

Every Ray here runs in a subprocess (a CLI, or `ray start`), so the test process never holds a cluster;
the two-node cluster is stopped with `ray stop` when the module ends.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synthkiln.engine.config import DecontaminateConfig, DiversityConfig
from synthkiln.engine.corpus import run_corpus_command
from synthkiln.engine.corpus.decontaminate import Decontaminate
from synthkiln.engine.corpus.dedup import Dedup
from synthkiln.engine.diversity import DiversityTracker
from synthkiln.engine.executor import GPU_SHARE, LocalExecutor
from tests.conftest import REPO, run_triton_script, synthkiln_command
from tests.engine.corpus.test_dedup import planted_corpus

RAY = str(Path(sys.executable).with_name("ray"))
# The tests' clusters live on loopback for the length of a module: no token to hand between nodes.
RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_node(*args: str) -> str:
    """`ray start` a node of one CPU and no GPU (on any host): its temp dir, which names it in its
    processes' command lines."""
    temp = tempfile.mkdtemp(prefix="ray")  # short: Ray's socket paths must fit 107 characters
    subprocess.run(
        [RAY, "start", "--num-cpus=1", "--num-gpus=0", "--object-store-memory=200000000", f"--temp-dir={temp}",
         "--node-ip-address=127.0.0.1", "--disable-usage-stats", *args],
        check=True, capture_output=True, env=RAY_ENV,
    )  # fmt: skip
    return temp


class Nodes(NamedTuple):
    address: str  # the head's, to connect to
    head: str  # each node's temp dir
    worker: str


@contextmanager
def two_nodes() -> Iterator[Nodes]:
    """A head and a worker node, one CPU each, each with its own temp dir; `ray stop` at the end."""
    port = _free_port()
    head = start_node("--head", f"--port={port}", "--include-dashboard=false")
    try:
        yield Nodes(f"127.0.0.1:{port}", head, start_node(f"--address=127.0.0.1:{port}"))
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, env=RAY_ENV)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A head and a worker node: the address to connect to."""
    with two_nodes() as nodes:
        yield nodes.address


@pytest.fixture(scope="module")
def corpus(gsm8k_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], set[int]]:
    return planted_files(gsm8k_dir, tmp_path_factory.mktemp("corpus"))


def planted_files(gsm8k_dir: Path, folder: Path) -> tuple[list[Path], set[int]]:
    """The planted near-duplicate corpus in three files (JSONL and Parquet): several signing tasks, and
    GSM8K test questions pasted into a few rows for decontamination (the rows' `n`, returned)."""
    texts = planted_corpus(gsm8k_dir, folder / "all.jsonl", documents=3000)
    tests = [json.loads(x)["question"] for x in (gsm8k_dir / "test.jsonl").read_text().splitlines()[:40]]
    rng = random.Random(5)
    planted = set(rng.sample(range(len(texts)), 12))
    for number, (where, question) in enumerate(zip(sorted(planted), tests, strict=False)):
        texts[where] = f"{texts[where] or ''} {question}" if number % 2 else question
    rows = [{"text": t, "n": i} for i, t in enumerate(texts)]
    third = len(rows) // 3
    paths = [folder / "a.jsonl", folder / "b.parquet", folder / "c.jsonl"]
    paths[0].write_text("".join(json.dumps(r) + "\n" for r in rows[:third]))
    pq.write_table(pa.Table.from_pylist(rows[third : 2 * third]), paths[1])
    paths[2].write_text("".join(json.dumps(r) + "\n" for r in rows[2 * third :]))
    return paths, planted


def command_line(*args: str) -> list[str]:
    """The CLI with `args` (a corpus command without its progress bar)."""
    return [*synthkiln_command(), *args, *(["--quiet"] if args[0] in ("dedup", "decontaminate") else [])]


def synthkiln(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(command_line(*args), capture_output=True, text=True, cwd=REPO, env=RAY_ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def outputs(directory: Path) -> tuple[list[dict], list[dict], dict]:
    manifest = json.loads((directory / "manifest.json").read_text())
    return (
        pq.read_table(directory / "data").to_pylist(),
        pq.read_table(directory / "rejected").to_pylist(),
        manifest,
    )


def executors(cluster_address: str | None) -> list[str]:
    return ["--executor", "ray", *(["--ray-address", cluster_address] if cluster_address else [])]


@pytest.fixture(scope="module", params=["local-ray", "two-nodes"])
def ray_args(request: pytest.FixtureRequest) -> list[str]:
    if request.param == "local-ray":
        return executors(None)
    return executors(request.getfixturevalue("cluster"))


def test_dedup_on_ray_keeps_exactly_the_local_rows(corpus, tmp_path: Path, ray_args) -> None:
    corpus, _ = corpus
    options = ["--threshold", "0.7", "--keep", "longest", "--partition-mb", "1"]
    synthkiln("dedup", *map(str, corpus), "--out", str(tmp_path / "local"), *options)
    synthkiln("dedup", *map(str, corpus), "--out", str(tmp_path / "ray"), *options, *ray_args)
    kept, removed, manifest = outputs(tmp_path / "local")
    ray_kept, ray_removed, ray_manifest = outputs(tmp_path / "ray")
    assert len(removed) > 600  # the planted copies and the null row
    assert ray_kept == kept and ray_removed == removed
    # grouped in other ranges (at least one per Ray worker), to the same rows
    assert ray_manifest["partitions_grouped"] > manifest["partitions_grouped"] >= 2
    assert manifest["executor"] == {"executor": "local", "workers": 1}
    cluster = "--ray-address" in ray_args
    workers = 2 if cluster else os.cpu_count()  # a local Ray takes every core
    assert ray_manifest["executor"] == {"executor": "ray", "workers": workers, "nodes": 2 if cluster else 1}


def test_decontaminate_on_ray_removes_exactly_the_local_rows(
    corpus, tmp_path: Path, gsm8k_dir: Path, ray_args
) -> None:
    corpus, planted = corpus
    options = ["--benchmark", f"gsm8k={gsm8k_dir / 'test.jsonl'}"]
    synthkiln("decontaminate", *map(str, corpus), "--out", str(tmp_path / "local"), *options)
    synthkiln("decontaminate", *map(str, corpus), "--out", str(tmp_path / "ray"), *options, *ray_args)
    kept, removed, manifest = outputs(tmp_path / "local")
    ray_kept, ray_removed, ray_manifest = outputs(tmp_path / "ray")
    # every planted test question, alone or pasted into a row (and GSM8K train's own near-copies)
    assert planted <= {row["n"] for row in removed if row["reason"] == "contaminated:gsm8k"}
    assert ray_kept == kept and ray_removed == removed
    assert ray_manifest["decontaminated_against"] == manifest["decontaminated_against"]
    assert ray_manifest["executor"]["executor"] == "ray"


def test_mix_by_tokens_on_ray_gives_the_local_mix(corpus, tmp_path: Path, cluster: str) -> None:
    """Rows' tokens are counted by Ray tasks (each loads the tokenizer once): the same mix."""
    (_, synthetic, human), _ = corpus  # the first file holds an empty row, which mix refuses
    options = ["--synthetic", str(synthetic), "--human", str(human), "--ratio", "0.3", "--by", "tokens"]
    synthkiln("mix", *options, "--out", str(tmp_path / "local"))
    synthkiln("mix", *options, "--out", str(tmp_path / "ray"), *executors(cluster))
    local = pq.read_table(tmp_path / "local" / "data").to_pylist()
    assert len(local) > 1000 and all(row["tokens"] > 0 for row in local)
    assert pq.read_table(tmp_path / "ray" / "data").to_pylist() == local
    manifest = json.loads((tmp_path / "local" / "manifest.json").read_text())
    assert json.loads((tmp_path / "ray" / "manifest.json").read_text())["amounts"] == manifest["amounts"]


def flat(figures: object, prefix: str = "") -> dict[str, object]:
    if isinstance(figures, dict):
        return {k: v for key, value in figures.items() for k, v in flat(value, f"{prefix}{key}.").items()}
    if isinstance(figures, list):
        return {k: v for i, value in enumerate(figures) for k, v in flat(value, f"{prefix}{i}.").items()}
    return {prefix: figures}


def test_diversity_on_ray_gives_the_local_figures(corpus, cluster: str) -> None:
    """The sample is embedded by Ray tasks: lexical figures equal, embedding ones to float noise."""
    (paths, _) = corpus
    options = ["diversity", str(paths[1]), "--text-field", "text", "--sample-size", "600", "--json"]
    local = flat(json.loads(synthkiln(*options).stdout))
    on_ray = flat(json.loads(synthkiln(*options, *executors(cluster)).stdout))
    assert on_ray.keys() == local.keys()
    embedding = [k for k in local if "cluster" in k or "embedding" in k or "distance" in k]
    assert embedding  # the MiniLM figures are there to compare
    for key, value in local.items():
        if isinstance(value, float):
            assert on_ray[key] == pytest.approx(value, rel=1e-3, abs=1e-4), key
        else:
            assert on_ray[key] == value, key


def test_a_process_connected_to_one_cluster_refuses_another(cluster: str) -> None:
    """A launcher already connected to Ray: a command naming its cluster (even as `localhost`) runs
    there; one naming another cluster is refused rather than run on the connected one."""
    port = cluster.rsplit(":", 1)[1]
    script = f"""
import ray
from synthkiln.engine.errors import SynthkilnError
from synthkiln.engine.executor import RayExecutor
ray.init(address="{cluster}", log_to_driver=False)
print("same", RayExecutor(address="localhost:{port}").workers)
try:
    RayExecutor(address="127.0.0.1:1")
except SynthkilnError as exc:
    print("refused:", exc)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=RAY_ENV, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "same 2"  # the two-node cluster's CPUs
    assert re.fullmatch(
        rf"refused: this process is already connected to the Ray cluster at [0-9.]+:{port}; it cannot "
        r"also use --ray-address 127\.0\.0\.1:1 \(one Ray connection per process\)",
        lines[1],
    )


def test_a_task_uses_the_one_cpu_it_holds(cluster: str) -> None:
    """Numba in a Ray task runs one thread (the task's CPU slot), not one per core of the node."""
    script = f"""
import numba
from synthkiln.engine.executor import RayExecutor
print(numba.get_num_threads(), [threads for _, threads in RayExecutor(address="{cluster}").map(
    lambda shared, item: numba.get_num_threads(), None, range(4))])
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=RAY_ENV, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[0] == f"{os.cpu_count()} [1, 1, 1, 1]"


def test_a_task_sees_only_the_gpus_it_asked_for(tmp_path: Path) -> None:
    """On a node with a GPU (a logical one here), a task that asks for none is shown none, so its
    kernels run on its CPU slot; one given a share of the GPU sees that GPU. `kernels` gives Triton
    tasks that share, and everything else none. `verify`'s checks on the nodes are such tasks too."""
    script = """
import json, os, ray
ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
from synthkiln.engine.config import VerifyConfig
from synthkiln.engine.executor import GPU_SHARE, RayExecutor
from synthkiln.engine.stages.verify import build_pool
from synthkiln.verifiers import Verdict, Verifier

class SeenDevices(Verifier):  # a check that reports the GPUs its worker process is shown
    name = "seen-devices"
    def job(self, row):
        return Verdict(self.name, "passed", os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))

executor = RayExecutor()
visible = lambda shared, item: os.environ.get("CUDA_VISIBLE_DEVICES")
with build_pool(VerifyConfig(), "ray") as pool:
    checked = pool.check_batch(SeenDevices(), [{"n": n} for n in range(4)])
print(json.dumps({
    "cpu": [seen for _, seen in executor.map(visible, None, range(3))],
    "gpu": [seen for _, seen in executor.map(visible, None, range(3), gpus=GPU_SHARE)],
    "kernels": [executor.kernels(backend) for backend in ("auto", "numba", "triton")],
    "model": executor.gpu_share(),
    "verify": [verdict.detail for verdict in checked],
}))
"""
    env = {key: value for key, value in RAY_ENV.items() if key != "CUDA_VISIBLE_DEVICES"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen == {
        "cpu": ["", "", ""],
        "gpu": ["0", "0", "0"],
        "kernels": [["auto", 0.0], ["numba", 0.0], ["triton", 0.25]],
        "model": 0.25,  # MiniLM's tasks, while a share is free
        "verify": ["", "", "", ""],
    }


CANCELLED_MAP = """
import json, os, sys, time, ray
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
from synthkiln.engine.executor import RayExecutor

def write_on(folder, item):  # the first item returns; the others write to their file until killed
    while item:
        with open(os.path.join(folder, f"task-{item}"), "a") as handle:
            handle.write("x")
        time.sleep(0.005)
    return item

folder = sys.argv[1]
results = RayExecutor().map(write_on, folder, range(4))
assert next(results) == (0, 0)
while not os.listdir(folder):
    time.sleep(0.01)
results.close()  # what a command's failure does to the map it was reading
sizes = lambda: {name: os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)}
closed = sizes()
time.sleep(1)
print(json.dumps({"closed": closed, "later": sizes()}))
"""


def test_a_map_closed_early_returns_once_its_tasks_are_gone(tmp_path: Path) -> None:
    """A command that fails cleans up its scratch files after closing its map: by then no task of it
    may still be writing there."""
    done = subprocess.run(
        [sys.executable, "-c", CANCELLED_MAP, str(tmp_path)],
        capture_output=True,
        text=True,
        env=RAY_ENV,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert len(seen["closed"]) >= 1  # tasks were writing when the map was closed
    assert seen["later"] == seen["closed"]  # and none wrote a byte after


@pytest.mark.parametrize("command", ["dedup", "decontaminate"])
def test_triton_on_a_cluster_without_gpus_is_refused(
    command: str, corpus, tmp_path: Path, gsm8k_dir: Path, cluster: str
) -> None:
    """Tasks that wait for a GPU the cluster does not have would wait forever: refused up front."""
    corpus, _ = corpus
    options = ["--benchmark", f"gsm8k={gsm8k_dir / 'test.jsonl'}"] if command == "decontaminate" else []
    argv = command_line(command, *map(str, corpus), "--out", str(tmp_path / "out"), *options,
                        "--backend", "triton", *executors(cluster))  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=RAY_ENV)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines()[-1] == (  # after Ray's own lines on connecting
        "error: --backend triton on Ray runs on the cluster's GPUs, and it has none: start its GPU nodes "
        "with `ray start --num-gpus N`, or use --backend numba"
    )
    assert not (tmp_path / "out" / "manifest.json").exists()


class GpuLedger(LocalExecutor):
    """The local executor, noting the GPUs each kind of task asks for, with kernels that get a GPU
    share as Triton's do on a Ray cluster with GPUs."""

    def __init__(self) -> None:
        self.asked: dict[str, set[float]] = {}

    def kernels(self, backend: str) -> tuple[str, float]:
        return backend, GPU_SHARE

    def gpu_share(self) -> float:
        return GPU_SHARE

    def map(self, fn, shared, items, payload=lambda item: item, gpus: float = 0.0):  # type: ignore[no-untyped-def]
        self.asked.setdefault(fn.__name__, set()).add(gpus)
        return super().map(fn, shared, items, payload)


def test_only_kernel_and_model_tasks_ask_for_a_gpu_share(corpus, tmp_path: Path, gsm8k_dir: Path) -> None:
    """The share `kernels` gives goes to the tasks that run the signature or n-gram kernels, and to no
    other (grouping, components and keepers run on CPU slots); MiniLM's tasks ask for `gpu_share`."""
    corpus, _ = corpus
    dedup, decontaminate = GpuLedger(), GpuLedger()
    run_corpus_command(Dedup(backend="numba"), corpus, tmp_path / "dedup", progress=False, executor=dedup)
    config = DecontaminateConfig(benchmarks=[{"name": "gsm8k", "path": str(gsm8k_dir / "test.jsonl")}])
    run_corpus_command(Decontaminate(config), corpus, tmp_path / "decontaminate", progress=False,
                       executor=decontaminate)  # fmt: skip
    assert dedup.asked.pop("sign_chunk") == {GPU_SHARE}
    assert {"group_partitions", "large_star_task", "decide_clusters"} <= dedup.asked.keys()
    assert set().union(*dedup.asked.values()) == {0.0}
    assert decontaminate.asked == {"find_matches": {GPU_SHARE}}
    diversity = GpuLedger()
    tracker = DiversityTracker(DiversityConfig(embeddings=True), "text", diversity)
    tracker.update(pa.table({"text": ["one row", "another row of text"]}))
    assert tracker.summary()["sample_size"] == 2  # embedded
    assert diversity.asked == {"embed_texts": {GPU_SHARE}}


TRITON_ON_RAY = """
import json, os, sys
from pathlib import Path
os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
import ray
import pyarrow.parquet as pq
from synthkiln.engine.cli import main

source, out = sys.argv[1], Path(sys.argv[2])
assert main(["dedup", source, "--out", str(out / "local"), "--backend", "numba", "--quiet"]) == 0
ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)  # a logical GPU on CPU
assert main(["dedup", source, "--out", str(out / "ray"), "--backend", "triton", "--executor", "ray",
             "--quiet"]) == 0
print(json.dumps({name: sorted(pq.read_table(out / name / "data").column("n").to_pylist())
                  for name in ("local", "ray")}))
"""


@pytest.mark.slow
def test_triton_on_ray_keeps_the_rows_numba_keeps_locally(tmp_path: Path, gsm8k_dir: Path) -> None:
    """`--backend triton` on Ray: signing tasks on a share of the GPU (Triton's interpreter on CPU
    here), the same kept rows as Numba with the local executor."""
    lines = (gsm8k_dir / "train.jsonl").read_text().splitlines()[:40]
    texts = [json.loads(line)["question"] for line in lines]
    copies = [text.replace(" the ", " a ", 1) for text in texts[:12]]  # one word: near-duplicates
    rows = [{"text": text, "n": n} for n, text in enumerate(texts + copies)]
    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    kept = run_triton_script(TRITON_ON_RAY, str(source), str(tmp_path))
    assert 40 <= len(kept["local"]) < 52  # the copies that changed a word are removed
    assert kept["ray"] == kept["local"]
