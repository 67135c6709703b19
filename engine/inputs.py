"""The input files a run reads, and whether they changed since the run a directory holds.

The recipe hash covers the recipe's text, not the files it names: without this check, editing the
seeds and rerunning would resume the old run and mix rows of both files under one manifest. The
manifest keeps `inputs`: {path: {sha256, size, mtime_ns}}. A resume rehashes a file only when its
size or mtime differ from the recorded ones (a stat per file instead of rereading gigabytes of seeds).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from synthkiln.engine.config import Recipe
from synthkiln.engine.errors import OutputError


def input_files(recipe: Recipe) -> list[str]:
    """Files whose contents decide the rows: seeds, template, benchmarks, `dedup.against` files."""
    paths = [recipe.seeds.path, recipe.task.template_file]
    paths += [benchmark.path for benchmark in recipe.decontaminate.benchmarks]
    # A dataset directory in `dedup.against` is read through its own manifest; only files are hashed.
    paths += [path for path in recipe.dedup.against if Path(path).is_file()]
    return list(dict.fromkeys(p for p in paths if p is not None))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(
    recipe: Recipe, recorded: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """{path: {sha256, size, mtime_ns}} of the recipe's input files that exist.

    A missing file is left out: the stage that reads it stops the run with its own message.
    The sha256 in `recorded` is reused when a file's size and mtime_ns are unchanged.
    """
    current: dict[str, dict[str, Any]] = {}
    for path in input_files(recipe):
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            continue
        known = (recorded or {}).get(path)
        if known and known.get("size") == stat.st_size and known.get("mtime_ns") == stat.st_mtime_ns:
            sha256 = known["sha256"]
        else:
            sha256 = sha256_file(path)
        current[path] = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return current


def check_resume(recipe: Recipe, manifest: dict[str, Any], out_dir: Path, allow_changed: bool) -> None:
    """Refresh `manifest["inputs"]` for a resumed run; refuse (OutputError) when an input changed.

    With `allow_changed`, each change is recorded in `manifest["input_changes"]` (path, before, after).
    """
    recorded: dict[str, dict[str, Any]] = manifest.get("inputs") or {}
    current = fingerprint(recipe, recorded)
    changes = []
    for path, before in recorded.items():
        after = current.get(path)
        if after is None or after["sha256"] != before["sha256"]:
            changes.append({"path": path, "before": before, "after": after})
    if changes and not allow_changed:
        named = "; ".join(
            f"{c['path']} ({'now missing' if c['after'] is None else 'contents changed'}: sha256 "
            f"{c['before']['sha256'][:12]} -> {c['after']['sha256'][:12] if c['after'] else '-'})"
            for c in changes
        )
        raise OutputError(
            f"{out_dir} holds a run over other input files: {named}. Resuming would mix rows of both "
            "versions; use --fresh to start over, --out for a new directory, or --allow-changed-inputs "
            "to resume anyway (both hashes are recorded in the manifest)"
        )
    manifest["input_changes"] = [*manifest.get("input_changes", []), *changes]
    manifest["inputs"] = current
