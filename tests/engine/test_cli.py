"""The `synthkiln` command as users run it: real subprocesses, real model, real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, synthkiln_command, write_recipe

pytestmark = pytest.mark.slow

RESUME_RECIPE = """
name = "resume"
[seeds]
path = "{seeds}"
[task]
kind = "instruction"
personas = ["a teacher", "a child"]
[sampling]
temperature = 0
max_tokens = 20
[generation]
samples_per_prompt = 2
batch_size = 2
[filters]
unterminated = false
[output]
shard_rows = 4
"""


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*synthkiln_command(), *args], capture_output=True, text=True, check=check, cwd=REPO
    )


def data_rows(out: Path) -> list[dict]:
    rows = pq.read_table(out / "data").to_pylist()
    return sorted(rows, key=lambda r: r["id"])


def test_resume_after_sigkill_gives_the_clean_run(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        "".join(json.dumps({"instruction": f"Name a fact about the number {i}."}) + "\n" for i in range(12))
    )
    recipe = write_recipe(tmp_path, RESUME_RECIPE.format(seeds=seeds))
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    run_cli("run", str(recipe), "--out", str(clean), "--quiet")

    process = subprocess.Popen(
        [*synthkiln_command(), "run", str(recipe), "--out", str(crashed), "--quiet"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    manifest = crashed / "manifest.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if manifest.is_file() and json.loads(manifest.read_text())["commits"] >= 2:
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed = json.loads(manifest.read_text())
    assert not killed["complete"], "the run finished before it could be killed; make it longer"
    committed_before = {r["id"] for r in data_rows(crashed)}

    resumed = run_cli("run", str(recipe), "--out", str(crashed), "--quiet")
    assert "accepted" in resumed.stdout
    final = json.loads(manifest.read_text())
    assert final["complete"] and final["runs"] == 2
    clean_rows, resumed_rows = data_rows(clean), data_rows(crashed)
    assert committed_before <= {r["id"] for r in resumed_rows}  # nothing committed was lost
    assert len(resumed_rows) == len({r["id"] for r in resumed_rows})  # nothing duplicated
    assert resumed_rows == clean_rows  # greedy decoding: the very same rows
    clean_manifest = json.loads((clean / "manifest.json").read_text())
    assert final["funnel"] == clean_manifest["funnel"]
    assert final["tokens"] == clean_manifest["tokens"]

    again = run_cli("run", str(recipe), "--out", str(crashed), "--quiet")  # nothing left to do
    assert data_rows(crashed) == clean_rows
    assert json.loads(manifest.read_text())["funnel"] == final["funnel"]
    assert f"accepted  {len(clean_rows):>8}" in again.stdout


def test_limit_fresh_and_inspect(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": f"Count to {i}."}) + "\n" for i in range(6)))
    recipe = write_recipe(tmp_path, RESUME_RECIPE.format(seeds=seeds))
    out = tmp_path / "out"
    run_cli(
        "run", str(recipe), "--out", str(out), "--quiet", "--limit", "3", "--set", "sampling.max_tokens=6"
    )
    first = json.loads((out / "manifest.json").read_text())
    assert 3 <= first["funnel"]["accepted"] < 3 + 4 and not first["complete"]
    # Another recipe (different --set) refuses the directory unless --fresh.
    refused = run_cli("run", str(recipe), "--out", str(out), "--quiet", check=False)
    assert refused.returncode == 2 and "another recipe" in refused.stderr
    run_cli("run", str(recipe), "--out", str(out), "--quiet", "--fresh", "--set", "sampling.max_tokens=6")
    assert json.loads((out / "manifest.json").read_text())["complete"]
    shown = run_cli("inspect", str(out))
    assert "resume" in shown.stdout and "complete" in shown.stdout
    assert "response:" in shown.stdout and "prompt_id: string" in shown.stdout


def test_errors_name_the_culprit_and_exit_nonzero(tmp_path: Path) -> None:
    missing_seeds = write_recipe(tmp_path, RESUME_RECIPE.format(seeds=tmp_path / "nope.jsonl"))
    failed = run_cli("run", str(missing_seeds), "--out", str(tmp_path / "o"), "--quiet", check=False)
    assert failed.returncode == 2
    assert "nope.jsonl: seeds file not found" in failed.stderr
    assert "Traceback" not in failed.stderr
    synthetic = tmp_path / "synthetic.jsonl"
    synthetic.write_text(json.dumps({"instruction": "Say hi.", "source": "synthetic"}) + "\n")
    recursive = write_recipe(tmp_path, RESUME_RECIPE.format(seeds=synthetic), "recursive.toml")
    refused = run_cli("run", str(recursive), "--out", str(tmp_path / "r"), "--quiet", check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"{synthetic} line 1: the seed row is synthetic" in refused.stderr
    assert "guards.max_lineage_depth = 1" in refused.stderr and not (tmp_path / "r").exists()
    bad_key = run_cli("run", str(missing_seeds), "--set", "sampling.temp=1", check=False)
    assert bad_key.returncode == 2 and "sampling.temp" in bad_key.stderr and "temperature" in bad_key.stderr
    unreachable = write_recipe(
        tmp_path,
        RESUME_RECIPE.format(seeds=REPO / "examples/seeds/quickstart.jsonl")
        + '[[teachers]]\nbackend = "openai"\nmodel = "m"\nbase_url = "http://127.0.0.1:9/v1"\nmax_retries = 1\n',
        "unreachable.toml",
    )
    down = run_cli("run", str(unreachable), "--out", str(tmp_path / "u"), "--quiet", check=False)
    assert down.returncode == 2
    assert "http://127.0.0.1:9/v1/chat/completions failed after 2 attempts" in down.stderr
    assert "Traceback" not in down.stderr
    # no row was accepted (whether or not an empty data/ was created)
    assert (
        sum(pq.ParquetFile(shard).metadata.num_rows for shard in (tmp_path / "u").glob("data/*.parquet")) == 0
    )


def test_models_prepare_is_idempotent(embedded_model_dir: Path) -> None:
    done = run_cli("models", "prepare")
    assert Path(done.stdout.strip()) == embedded_model_dir
    config = json.loads((embedded_model_dir / "config.json").read_text())
    assert "quantization_config" not in config  # loadable by vLLM as a plain safetensors model
    assert (embedded_model_dir / "model.safetensors").is_file()


def test_help_lists_commands() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "synthkiln.engine.cli", "--help"], capture_output=True, text=True
    )
    for command in ("run", "inspect", "models", "config"):
        assert command in done.stdout


def small_dataset(out: Path, seeds: Path) -> None:
    """A committed dataset of two rows, written by the real writer (no model needed)."""
    import pyarrow as pa

    from synthkiln.engine.config import recipe_from_dict
    from synthkiln.engine.output.writer import DatasetWriter
    from synthkiln.engine.schema import ROW_SCHEMA

    seeds.write_text(json.dumps({"instruction": "Say hi."}) + "\n")
    recipe = recipe_from_dict(
        {"name": "small", "seeds": {"path": str(seeds)}, "task": {"kind": "instruction"}}
    )
    writer = DatasetWriter(out, recipe, {})
    rows = [
        {
            "id": f"r{i}",
            "prompt_id": f"p{i}",
            "messages": [{"role": "user", "content": "Say hi."}],
            "response": "hi",
        }
        for i in range(2)
    ]
    writer.add(pa.RecordBatch.from_pylist(rows, ROW_SCHEMA), pa.RecordBatch.from_pylist([], ROW_SCHEMA))
    writer.close(complete=True)


def test_inspect_names_a_truncated_manifest_or_a_missing_shard(tmp_path: Path) -> None:
    out = tmp_path / "out"
    small_dataset(out, tmp_path / "seeds.jsonl")
    assert "id r0" in run_cli("inspect", str(out)).stdout
    manifest = out / "manifest.json"
    whole = manifest.read_text()
    (shard,) = json.loads(whole)["shards"]["data"]

    manifest.write_text(whole[: len(whole) // 2])
    truncated = run_cli("inspect", str(out), check=False)
    assert truncated.returncode == 2 and "Traceback" not in truncated.stderr
    assert f"{manifest}: unreadable manifest" in truncated.stderr

    manifest.write_text(whole)
    (out / shard["path"]).rename(tmp_path / "aside.parquet")
    missing = run_cli("inspect", str(out), check=False)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert f"{out / shard['path']}: listed in manifest.json but missing" in missing.stderr

    (out / shard["path"]).write_bytes((tmp_path / "aside.parquet").read_bytes()[:100])  # cut short
    corrupt = run_cli("inspect", str(out), check=False)
    assert corrupt.returncode == 2 and "Traceback" not in corrupt.stderr
    assert str(out / shard["path"]) in corrupt.stderr
