"""Steering: re-weighting toward target shares of accepted rows, temperature under a duplicate flood,
early stop, and the same policy trajectory after a SIGKILL.

A teacher that answers deterministically from the prompt makes the verdicts known: its answers fail a
real regex verifier for one format most of the time, or repeat one text (near-duplicates for the real
dedup stage) below a temperature.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synthkiln.engine import Pipeline
from synthkiln.engine.cli import format_funnel, run_state
from synthkiln.engine.config import SamplingConfig
from synthkiln.engine.controller import Rotation
from synthkiln.engine.errors import RecipeError
from tests.engine.scripted import ScriptedTeacher

REPO = Path(__file__).resolve().parents[2]
FORMATS = ["a list", "a table", "prose"]
VOCABULARY = [f"t{i:04d}" for i in range(3000)]
FLOOD = "the same answer again with the very same words in the very same order " * 3


def _digest(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


def _unique(content: str) -> str:
    return " ".join(random.Random(_digest(content)).sample(VOCABULARY, 40))


def tables_fail(content: str, sampling: SamplingConfig) -> list[str]:
    """Passes the verifier (`VALID`) unless its format is a table: then only one time in five."""
    valid = "a table" not in content or _digest(content) % 5 == 0
    return [_unique(content) + (" VALID" if valid else "")]


def floods_when_cold(content: str, sampling: SamplingConfig) -> list[str]:
    """Two answers in three are one text below temperature 0.5; every answer is unique above."""
    if sampling.temperature < 0.5 and _digest(content) % 3:
        return [FLOOD + "VALID"]
    return [_unique(content) + " VALID"]


def both(content: str, sampling: SamplingConfig) -> list[str]:
    """Floods when cold, and fails the verifier on most tables."""
    text = floods_when_cold(content, sampling)[0]
    return [text if tables_fail(content, sampling)[0].endswith("VALID") else text.replace("VALID", "")]


def recipe(tmp_path: Path, seeds: int, **diversity: object) -> dict:
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Explain topic {i}."}) + "\n" for i in range(seeds)))
    return {
        "name": "steered",
        "seeds": {"path": str(path)},
        "task": {"kind": "instruction", "formats": FORMATS},
        "sampling": {"temperature": 0.2, "max_tokens": 64},
        "filters": {"unterminated": False, "refusal": False},
        "generation": {"batch_size": 8},
        "verify": {"verifiers": [{"name": "regex", "pattern": "VALID"}]},
        "output": {"shard_rows": 8},
        "diversity": {"embeddings": False, **diversity},
    }


def steered(**steering: object) -> dict:
    return {"steering": {"enabled": True, "lag": 1, "span": 2, "min_samples": 16, **steering}}


def rows(out: Path, folder: str = "data") -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    return [
        row for shard in manifest["shards"][folder] for row in pq.read_table(out / shard["path"]).to_pylist()
    ]


def run(tmp_path: Path, name: str, config: dict, answer, poll_seconds: float = 0.0) -> dict:
    teacher = ScriptedTeacher(answer, poll_seconds=poll_seconds)
    with Pipeline.from_recipe(config, teachers=[teacher]) as pipeline:
        return pipeline.run(tmp_path / name, progress=False)


def test_rotation_spreads_values_by_weight_and_cycles_when_equal() -> None:
    rotation = Rotation()
    assert [rotation.choose("format", ["a", "b", "c"]) for _ in range(6)] == ["a", "b", "c"] * 2
    rotation = Rotation()
    rotation.weights = {"format": {"a": 0.5, "b": 0.25, "c": 0.25}}
    picks = [rotation.choose("format", ["a", "b", "c"]) for _ in range(8)]
    assert Counter(picks) == {"a": 4, "b": 2, "c": 2}
    assert Counter(picks[:4]) == {"a": 2, "b": 1, "c": 1}  # spread over the cycle, not in runs


def test_a_format_the_verifier_kills_ends_closer_to_its_target_with_steering(tmp_path: Path) -> None:
    plain = run(tmp_path, "plain", recipe(tmp_path, 240), tables_fail)
    steering = run(tmp_path, "steered", recipe(tmp_path, 240, **steered()), tables_fail)

    def shares(out: str) -> dict[str, float]:
        accepted = [row["format"] for row in rows(tmp_path / out)]
        assert len(accepted) > 100
        return {f: accepted.count(f) / len(accepted) for f in FORMATS}

    unsteered, with_steering = shares("plain"), shares("steered")
    # Without steering, formats rotate (today's order) and the verifier leaves few tables.
    generated = [
        row["format"]
        for row in sorted(
            rows(tmp_path / "plain") + rows(tmp_path / "plain", "rejected"), key=lambda r: r["seed_row"]
        )
    ]
    assert generated == [FORMATS[i % 3] for i in range(240)]
    assert unsteered["a table"] < 0.12
    assert "steering" not in plain
    # With it, tables are rendered more often and the accepted shares come near a third each.
    distance = {
        name: sum(abs(s[f] - 1 / 3) for f in FORMATS)
        for name, s in (("plain", unsteered), ("steered", with_steering))
    }
    assert with_steering["a table"] > 0.22
    assert distance["steered"] < distance["plain"] / 2
    decisions = steering["steering"]["decisions"]
    assert decisions and all(d["cause"] == "reweight" for d in decisions)
    assert decisions[-1]["change"]["format"]["to"]["a table"] > 0.5
    assert steering["complete"] is True


def test_the_temperature_rises_under_a_duplicate_flood_then_holds(tmp_path: Path) -> None:
    config = recipe(tmp_path, 160, **steered(temperature=[0.2, 1.0]))
    teacher = ScriptedTeacher(floods_when_cold)
    with Pipeline.from_recipe(config, teachers=[teacher]) as pipeline:
        manifest = pipeline.run(tmp_path / "out", progress=False)

    raised = [d for d in manifest["steering"]["decisions"] if d["cause"] == "duplicates"]
    assert len(raised) >= 3
    assert all(d["measured"]["duplicate_share"] > 0.2 for d in raised)
    assert raised[0]["change"]["temperature"]["from"] == 0.2
    final = raised[-1]["change"]["temperature"]["to"]
    assert 0.5 <= final < 1.0  # raised until the duplicates stopped, not to the bound
    # The teacher sampled at the raised temperature, and each row records what it was sampled at.
    assert max(teacher.temperatures) == final
    committed = rows(tmp_path / "out") + rows(tmp_path / "out", "rejected")
    assert sorted(round(r["temperature"], 4) for r in committed) == sorted(teacher.temperatures)  # float32
    late = [r for r in rows(tmp_path / "out") if r["seed_row"] > 150]
    assert len(late) > 5 and all(round(r["temperature"], 4) == final for r in late)
    assert f"temperature 0.2 -> {final}" in (tmp_path / "out" / "README.md").read_text()  # the card
    duplicates = manifest["funnel"]["rejected"]["dedup"]["near-duplicate"]
    assert duplicates < 160 * 2 / 3 - 20  # fewer than at a fixed 0.2, which floods two in three


def test_the_run_stops_early_when_accepted_rows_bring_no_new_ngrams(tmp_path: Path) -> None:
    answers = ["one fixed answer about apples", "another fixed answer about pears", "a third about plums"]

    def repeats(content: str, sampling: SamplingConfig) -> list[str]:
        return [answers[_digest(content) % 3] + " VALID"]

    config = recipe(tmp_path, 200, stop_below=5.0, stop_rows=16)
    config["dedup"] = {"enabled": False}
    manifest = run(tmp_path, "stopped", config, repeats)
    stop = manifest["stopped"]["early_stop"]
    assert stop["cause"] == "stop"
    assert stop["measured"]["novel_ngrams_per_1k_rows"] < 5.0
    assert manifest["complete"] is True
    assert 16 <= manifest["funnel"]["accepted"] < 80
    assert manifest["stopped"]["seeds_left"] == 200 - manifest["funnel"]["prompts"]
    assert f"Stopped early at window {stop['window']}" in (tmp_path / "stopped" / "README.md").read_text()
    assert f"stopped early at window {stop['window']}" in format_funnel(manifest)  # end of `synthkiln run`
    assert run_state(manifest).startswith(f"complete: stopped early at window {stop['window']}")  # inspect
    # Run again: the same decision ends it at the same place, nothing is generated.
    again = run(tmp_path, "stopped", config, repeats)
    assert again["funnel"] == manifest["funnel"]
    unstopped = dict(config, diversity={"embeddings": False})
    assert run(tmp_path, "whole", unstopped, repeats)["funnel"]["prompts"] == 200


def test_a_limited_then_resumed_run_stops_where_an_uninterrupted_one_does(tmp_path: Path) -> None:
    """The resumed run rebuilds the n-grams of the committed rows and the cut window's counts: forty
    texts, then repeats; the stop falls at the same window either way."""

    def cycles(content: str, sampling: SamplingConfig) -> list[str]:
        k = int(content.split("topic ")[1].split(".")[0]) % 40
        return [f"alpha{k} beta{k} gamma{k} delta{k} VALID"]

    config = recipe(tmp_path, 200, stop_below=100.0, stop_rows=16, steering={"lag": 1, "span": 2})
    config["dedup"] = {"enabled": False}
    clean = run(tmp_path, "clean", config, cycles)
    assert clean["stopped"]["early_stop"]["window"] == 9 and clean["funnel"]["accepted"] == 72

    with Pipeline.from_recipe(config, teachers=[ScriptedTeacher(cycles)]) as pipeline:
        limited = pipeline.run(tmp_path / "resumed", limit=20, progress=False)
    assert limited["funnel"]["accepted"] == 20 and not limited["complete"]
    assert limited["stopped"]["seeds_left"] == 200 - 20
    resumed = run(tmp_path, "resumed", config, cycles)
    assert resumed["runs"] == 2
    assert resumed["funnel"] == clean["funnel"]
    assert resumed["stopped"] == clean["stopped"]
    assert resumed["steering"]["windows"] == clean["steering"]["windows"]


def test_target_shares_must_name_listed_values(tmp_path: Path) -> None:
    config = recipe(tmp_path, 4, **steered(targets={"format": {"a poem": 1.0}}))
    with pytest.raises(RecipeError, match="a poem"):
        Pipeline.from_recipe(config)


KILLED_RUN = """
import sys
from synthkiln.engine import Pipeline
from tests.engine.scripted import ScriptedTeacher
from tests.engine.test_controller import both
import json
config = json.loads(sys.argv[1])
with Pipeline.from_recipe(config, teachers=[ScriptedTeacher(both, poll_seconds=0.05)]) as pipeline:
    pipeline.run(sys.argv[2], progress=False)
"""


def test_a_sigkilled_steered_run_resumes_with_the_same_policy_trajectory(tmp_path: Path) -> None:
    config = recipe(tmp_path, 200, **steered(temperature=[0.2, 1.0]))
    clean = run(tmp_path, "clean", config, both)
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, json.dumps(config), str(killed)],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while process.poll() is None:
        try:
            done = json.loads((killed / "manifest.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            done = {"steering": {}}
        if len(done.get("steering", {}).get("windows", {})) >= 8:
            break
        assert time.monotonic() < deadline
        time.sleep(0.01)
    if process.poll() is None:
        process.kill()
    _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL, stderr[-3000:]
    interrupted = json.loads((killed / "manifest.json").read_text())
    assert not interrupted["complete"] and 8 <= len(interrupted["steering"]["windows"]) < 25

    resumed = run(tmp_path, "killed", config, both)
    assert resumed["runs"] == 2 and resumed["complete"]
    causes = Counter(d["cause"] for d in clean["steering"]["decisions"])
    assert causes["reweight"] >= 2 and causes["duplicates"] >= 2
    assert resumed["steering"]["decisions"] == clean["steering"]["decisions"]
    assert resumed["steering"]["windows"] == clean["steering"]["windows"]

    def identity(out: str) -> list[tuple]:
        return sorted((r["id"], r["format"], round(r["temperature"], 4)) for r in rows(tmp_path / out))

    assert identity("killed") == identity("clean")
