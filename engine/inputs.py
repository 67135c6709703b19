"""The input files a run reads, and whether they changed since the run a directory holds.

The recipe hash covers the recipe's text, not the files it names: without this check, editing the
seeds and rerunning would resume the old run and mix rows of both files under one manifest. The
manifest keeps `inputs`: {path: {sha256, size, mtime_ns}}. A resume rehashes a file only when its
size or mtime differ from the recorded ones (a stat per file instead of rereading gigabytes of seeds).
Seeds from a Hugging Face dataset are recorded as {"hf:NAME[/CONFIG]:SPLIT": {revision}}, the hash
`datasets` gives the dataset's module: the hub commit for a hub dataset, a hash of the data files' names
and modification times for a local one (one hub request, or none offline: no data is read).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthkiln.engine.errors import OutputError, SynthkilnError

if TYPE_CHECKING:  # hints only: importing the recipe models (pydantic) costs a corpus command 0.15 s
    from synthkiln.engine.config import Recipe, SeedsConfig


def input_files(recipe: Recipe) -> list[str]:
    """Files whose contents decide the rows: seeds, template, benchmarks, `dedup.against` files."""
    paths = [recipe.seeds.path, recipe.task.template_file]
    paths += [benchmark.path for benchmark in recipe.decontaminate.benchmarks]
    # A dataset directory in `dedup.against` is read through its own manifest; only files are hashed.
    paths += [path for path in recipe.dedup.against if Path(path).is_file()]
    return list(dict.fromkeys(p for p in paths if p is not None))


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's contents: the one hash of input files in the engine (seeds, template,
    benchmark and `dedup.against` files). A path that cannot be read (a directory, no permission)
    raises a SynthkilnError naming it."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise SynthkilnError(
            f"{path}: cannot read this input file to hash it: {exc.strerror or exc}"
        ) from None
    return digest.hexdigest()


def fingerprint(
    recipe: Recipe, recorded: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """{path: {sha256, size, mtime_ns}} of the recipe's input files that exist.

    A missing file is left out: the stage that reads it stops the run with its own message.
    The sha256 in `recorded` is reused when a file's size and mtime_ns are unchanged.
    """
    current: dict[str, dict[str, Any]] = {}
    hf = hf_seeds_identity(recipe)
    if hf is not None:
        current[hf[0]] = hf[1]
    for path in input_files(recipe):
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise SynthkilnError(f"{path}: cannot read this input file: {exc.strerror or exc}") from None
        known = (recorded or {}).get(path)
        if known and known.get("size") == stat.st_size and known.get("mtime_ns") == stat.st_mtime_ns:
            sha256 = known["sha256"]
        else:
            sha256 = sha256_file(path)
        current[path] = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return current


def hf_seeds_key(seeds: SeedsConfig) -> str:
    """The `inputs` key of seeds from a Hugging Face dataset."""
    return f"hf:{seeds.hf_dataset}" + (f"/{seeds.hf_config}" if seeds.hf_config else "") + f":{seeds.split}"


def hf_seeds_identity(recipe: Recipe) -> tuple[str, dict[str, Any]] | None:
    """(key, {revision}) of the recipe's Hugging Face seed dataset, or None (seeds from a file, or a
    dataset `datasets` cannot resolve: reading the seeds then stops the run with its own message)."""
    seeds = recipe.seeds
    if seeds.path is not None or seeds.hf_dataset is None:
        return None
    key = hf_seeds_key(seeds)
    try:
        import datasets

        revision = datasets.load_dataset_builder(seeds.hf_dataset, seeds.hf_config).hash
    except Exception:  # not installed, offline without a cache, gated, missing: many types
        return None
    return key, {"revision": revision}


def _version(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "-"
    return str(entry.get("sha256") or entry.get("revision"))[:12]


def check_resume(recipe: Recipe, manifest: dict[str, Any], out_dir: Path, allow_changed: bool) -> None:
    """Refresh `manifest["inputs"]` for a resumed run; refuse (OutputError) when an input changed.

    With `allow_changed`, each change is recorded in `manifest["input_changes"]` (path, before, after).
    """
    recorded: dict[str, dict[str, Any]] = manifest.get("inputs") or {}
    current = fingerprint(recipe, recorded)
    changes = []
    for path, before in recorded.items():
        after = current.get(path)
        if after is None or _version(after) != _version(before):
            changes.append({"path": path, "before": before, "after": after})
    if changes and not allow_changed:
        named = "; ".join(
            f"{c['path']} ({'now missing' if c['after'] is None else 'contents changed'}: "
            f"{'revision' if 'revision' in c['before'] else 'sha256'} "
            f"{_version(c['before'])} -> {_version(c['after'])})"
            for c in changes
        )
        raise OutputError(
            f"{out_dir} holds a run over other input files: {named}. Resuming would mix rows of both "
            "versions; use --fresh to start over, --out for a new directory, or --allow-changed-inputs "
            "to resume anyway (both hashes are recorded in the manifest)"
        )
    manifest["input_changes"] = [*manifest.get("input_changes", []), *changes]
    manifest["inputs"] = current
