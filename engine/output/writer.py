"""The dataset directory: Parquet shards committed atomically, a manifest, and a dataset card.

Layout::

    DIR/data/part-00000.parquet       accepted rows (zstd)
    DIR/rejected/part-00000.parquet   rejected rows with `stage` and `reason`
    DIR/manifest.json                 recipe + hash, versions, teachers, seeds, funnel, timings, shards
    DIR/README.md                     Hugging Face dataset card

A commit writes each shard to a temporary name, renames it into place, then replaces the manifest the
same way: the manifest's rename is the commit point, and it lists only shards already in place. The
directory is claimed through :class:`~synthkiln.engine.output.directory.OutputDirectory` (the one guard:
only our own directories, locked, shard files no manifest lists removed). On reopening, the samples
found in committed shards are reported (`committed_samples`), so a rerun resumes without losing or
duplicating anything.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from synthkiln.engine.config import CostConfig, Recipe
from synthkiln.engine.errors import OutputError
from synthkiln.engine.inputs import check_resume, fingerprint
from synthkiln.engine.output.card import render_card
from synthkiln.engine.output.directory import OutputDirectory, listed_shards
from synthkiln.engine.output.report import write_report_or_warn
from synthkiln.engine.schema import ROW_SCHEMA, conform, rejected_schema

FORMAT = (
    "synthkiln-dataset/2"  # /2: seed_fields is a list of {key, value} (no map<>, which datasets cannot load)
)
SEEDS_STAGE = "seeds"  # quarantined seed rows: no sample was generated for them


class DatasetWriter:
    def __init__(
        self,
        out_dir: str | Path,
        recipe: Recipe,
        run_info: dict[str, Any] | Callable[[dict[str, dict[str, Any]]], dict[str, Any]],
        schema: pa.Schema = ROW_SCHEMA,
        fresh: bool = False,
        allow_changed_inputs: bool = False,
        on_commit: Sequence[Callable[[pa.Table | None, pa.Table | None, dict[str, Any]], None]] = (),
    ) -> None:
        """Each `on_commit(kept, rejected, manifest)` adds to the manifest what is measured on each
        commit's rows (diversity, steering), before the manifest is published."""
        self.out_dir = Path(out_dir)
        self._on_commit = on_commit
        self.schema = schema
        self.recipe = recipe
        self._shard_rows = recipe.output.shard_rows
        self._commit_seconds = recipe.output.commit_seconds
        self.directory = OutputDirectory(self.out_dir, FORMAT, fresh)
        try:
            self.manifest = self._open(run_info, allow_changed_inputs)
        except BaseException:
            self.directory.close()
            raise
        self.committed_samples = self._committed_samples()
        self.completed_prompts = set(self.committed_samples)  # prompts with a committed row
        self._counted_prompts = set(self.completed_prompts)  # each prompt counts once in the funnel
        self._pending_kept: list[pa.RecordBatch] = []
        self._pending_rejected: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._pending_generation_s = 0.0
        self._pending_device_s = 0.0
        self._pending_stage_s: Counter[str] = Counter()
        self._last_commit = time.monotonic()
        self._session_start = time.monotonic()
        self._wall_at_open = self.manifest["timing"]["wall_seconds"]

    @property
    def accepted(self) -> int:
        """Accepted rows so far, committed or pending."""
        return self.manifest["funnel"]["accepted"] + sum(len(b) for b in self._pending_kept)

    @property
    def rejected(self) -> int:
        """Rejected rows so far, committed or pending."""
        committed = sum(sum(reasons.values()) for reasons in self.manifest["funnel"]["rejected"].values())
        return committed + sum(len(b) for b in self._pending_rejected)

    def add(
        self,
        kept: pa.RecordBatch,
        rejected: pa.RecordBatch,
        generation_seconds: float = 0.0,
        device_seconds: float = 0.0,
        stage_seconds: dict[str, float] | None = None,
    ) -> None:
        """Queue one step's rows (all samples of its prompts) and what producing them took (generation,
        device and per-stage wall seconds); commits when a shard is due."""
        if len(kept):
            self._pending_kept.append(conform(kept, self.schema))
        if len(rejected):
            self._pending_rejected.append(conform(rejected, rejected_schema(self.schema)))
        self._pending_rows += len(kept) + len(rejected)
        self._pending_generation_s += generation_seconds
        self._pending_device_s += device_seconds
        self._pending_stage_s.update(stage_seconds or {})
        due = time.monotonic() - self._last_commit >= self._commit_seconds
        if self._pending_rows >= self._shard_rows or (due and self._pending_rows):
            self.commit()

    def commit(self, complete: bool | None = None) -> None:
        """Write pending rows as shards and publish them in the manifest (atomic)."""
        index = self.manifest["commits"]
        new_shards: dict[str, list[dict[str, Any]]] = {"data": [], "rejected": []}
        kept = pa.Table.from_batches(self._pending_kept, self.schema) if self._pending_kept else None
        rejected = (
            pa.Table.from_batches(self._pending_rejected, rejected_schema(self.schema))
            if self._pending_rejected
            else None
        )
        for folder, table in (("data", kept), ("rejected", rejected)):
            if table is not None and table.num_rows:
                shard = self.directory.write_shard(table, f"{folder}/part-{index:05d}.parquet")
                new_shards[folder].append(shard)
        self._update_manifest(kept, rejected, new_shards, complete)
        for hook in self._on_commit:
            hook(kept, rejected, self.manifest)
        self.directory.commit(self.manifest, render_card(self.manifest))
        self._pending_kept, self._pending_rejected = [], []
        self._pending_rows = 0
        self._pending_generation_s = self._pending_device_s = 0.0
        self._pending_stage_s = Counter()
        self._last_commit = time.monotonic()

    def close(self, complete: bool, stopped: dict[str, int] | None = None) -> dict[str, Any]:
        """Commit what is pending and release the directory; `complete` records whether every seed was
        processed, `stopped` the limit this run stopped at and the seed rows it left."""
        self.manifest["stopped"] = stopped
        try:
            self.commit(complete=complete)
            write_report_or_warn(self.out_dir)  # while the directory is still ours
        finally:
            self.directory.close()
        return self.manifest

    def _update_manifest(
        self,
        kept: pa.Table | None,
        rejected: pa.Table | None,
        new_shards: dict[str, list[dict[str, Any]]],
        complete: bool | None,
    ) -> None:
        manifest = self.manifest
        funnel = manifest["funnel"]
        prompt_ids: set[str] = set()
        samples = 0
        for table in (kept, rejected):
            if table is None:
                continue
            generated = table
            if table is rejected:
                generated = table.filter(pc.not_equal(table.column("stage"), SEEDS_STAGE))
                funnel["seeds_quarantined"] += table.num_rows - generated.num_rows
            prompt_ids.update(generated.column("prompt_id").to_pylist())
            samples += generated.num_rows
            cut = pc.sum(pc.equal(generated.column("finish_reason"), "length")).as_py()
            funnel["cut_at_max_tokens"] += int(cut or 0)
            manifest["tokens"]["prompt"] += int(pc.sum(generated.column("prompt_tokens")).as_py() or 0)
            manifest["tokens"]["completion"] += int(
                pc.sum(generated.column("completion_tokens")).as_py() or 0
            )
        funnel["prompts"] += len(prompt_ids - self._counted_prompts)  # a prompt cut at --limit: once
        self._counted_prompts |= prompt_ids
        funnel["samples"] += samples
        funnel["accepted"] += kept.num_rows if kept is not None else 0
        verified = pc.sum(pc.fill_null(kept.column("verified"), False)).as_py() if kept is not None else 0
        funnel["verified"] = funnel.get("verified", 0) + int(verified or 0)
        _count_by_teacher(funnel.setdefault("teachers", {}), kept, rejected)
        manifest["guards"] = _guards(manifest, self.recipe)
        if rejected is not None:
            counts = Counter(
                zip(rejected.column("stage").to_pylist(), rejected.column("reason").to_pylist(), strict=True)
            )
            for (stage, reason), count in sorted(counts.items()):
                by_reason = funnel["rejected"].setdefault(stage, {})
                by_reason[reason] = by_reason.get(reason, 0) + count
        timing = manifest["timing"]
        timing["wall_seconds"] = round(self._wall_at_open + time.monotonic() - self._session_start, 3)
        timing["generation_seconds"] = round(timing["generation_seconds"] + self._pending_generation_s, 3)
        timing["device_seconds"] = round(timing["device_seconds"] + self._pending_device_s, 3)
        stages = timing.setdefault("stage_seconds", {})
        for name, seconds in self._pending_stage_s.items():
            stages[name] = round(stages.get(name, 0.0) + seconds, 3)
        accepted = funnel["accepted"]
        timing["device_seconds_per_accepted"] = (
            round(timing["device_seconds"] / accepted, 4) if accepted else None
        )
        manifest["cost"] = run_cost(manifest, self.recipe.cost)
        for folder, shards in new_shards.items():
            manifest["shards"][folder].extend(shards)
        if complete is not None:
            manifest["complete"] = complete
        manifest["commits"] += 1

    def _open(
        self,
        run_info: dict[str, Any] | Callable[[dict[str, dict[str, Any]]], dict[str, Any]],
        allow_changed_inputs: bool,
    ) -> dict[str, Any]:
        """The manifest to continue (checked against this recipe and its inputs) or a new one.

        `run_info` may be a callable taking the inputs' fingerprint: it is called only once the
        directory is claimed and the resume checks pass, so costly information (loading teachers)
        is never gathered for a directory that is refused."""
        recipe_hash = self.recipe.content_hash()
        manifest = self.directory.previous
        if manifest is not None:
            if manifest.get("recipe_hash") != recipe_hash:
                raise OutputError(
                    f"{self.out_dir} holds a run of another recipe (hash {manifest.get('recipe_hash')}, this one "
                    f"{recipe_hash}); use --fresh to overwrite it or --out for a new directory"
                )
            check_resume(self.recipe, manifest, self.out_dir, allow_changed_inputs)
            self._check_committed(manifest)
            manifest["runs"] += 1
            manifest.update(run_info(manifest["inputs"]) if callable(run_info) else run_info)
            return manifest
        inputs = fingerprint(self.recipe)
        if callable(run_info):
            run_info = run_info(inputs)
        manifest = {
            "format": FORMAT,
            "name": self.recipe.name,
            "recipe_hash": recipe_hash,
            "recipe": self.recipe.to_dict(),
            **run_info,
            "inputs": inputs,
            "input_changes": [],
            "stopped": None,
            "runs": 1,
            "commits": 0,
            "complete": False,
            "funnel": {
                "prompts": 0,
                "seeds_quarantined": 0,
                "samples": 0,
                "cut_at_max_tokens": 0,
                "accepted": 0,
                "rejected": {},
            },
            "tokens": {"prompt": 0, "completion": 0},
            "timing": {
                "wall_seconds": 0.0,
                "generation_seconds": 0.0,
                "device_seconds": 0.0,
                "device_seconds_per_accepted": None,
            },
            "shards": {"data": [], "rejected": []},
        }
        return manifest

    def _check_committed(self, manifest: dict[str, Any]) -> None:
        missing = sorted(p for p in listed_shards(manifest) if not (self.out_dir / p).is_file())
        if missing:
            raise OutputError(
                f"{self.out_dir / missing[0]}: listed in the manifest but missing"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                + "; its rows are lost: restore the file, or start over with --fresh"
            )

    def committed_rows(self, columns: list[str], rejected_by: list[str] | None = None) -> pa.Table:
        """The given columns of every committed accepted row, in commit order; with `rejected_by`,
        followed by the committed rows those stages rejected."""
        tables = [
            pq.read_table(self.out_dir / shard["path"], columns=columns)
            for shard in self.manifest["shards"]["data"]
        ]
        for shard in self.manifest["shards"]["rejected"] if rejected_by else []:
            rejected = pq.read_table(self.out_dir / shard["path"], columns=[*columns, "stage"])
            chosen = rejected.filter(pc.is_in(rejected.column("stage"), pa.array(rejected_by, pa.string())))
            tables.append(chosen.select(columns))
        if not tables:
            return self.schema.empty_table().select(columns)
        return pa.concat_tables(tables)

    def _committed_samples(self) -> dict[str, set[int | None]]:
        """Per prompt id, the `sample_index` of each of its committed rows, accepted or rejected
        (None: a row of no sample, a seed row or prompt quarantined before generation)."""
        samples: dict[str, set[int | None]] = {}
        for folder in ("data", "rejected"):
            for shard in self.manifest["shards"][folder]:
                table = pq.read_table(self.out_dir / shard["path"], columns=["prompt_id", "sample_index"])
                for prompt_id, index in zip(
                    table.column("prompt_id").to_pylist(),
                    table.column("sample_index").to_pylist(),
                    strict=True,
                ):
                    samples.setdefault(prompt_id, set()).add(index)
        return samples


def _count_by_teacher(
    counts: dict[str, dict[str, int]], kept: pa.Table | None, rejected: pa.Table | None
) -> None:
    """Samples, accepted rows and tokens per teacher (rows of no sample have no teacher)."""
    for table, accepted in ((kept, True), (rejected, False)):
        if table is None or not table.num_rows:
            continue
        grouped = (
            table.select(["teacher", "prompt_tokens", "completion_tokens"])
            .filter(pc.is_valid(table.column("teacher")))
            .group_by("teacher")
            .aggregate([("teacher", "count"), ("prompt_tokens", "sum"), ("completion_tokens", "sum")])
        )
        for row in grouped.to_pylist():
            mine = counts.setdefault(
                row["teacher"], {"samples": 0, "accepted": 0, "prompt_tokens": 0, "completion_tokens": 0}
            )
            mine["samples"] += row["teacher_count"]
            mine["accepted"] += row["teacher_count"] if accepted else 0
            mine["prompt_tokens"] += int(row["prompt_tokens_sum"] or 0)
            mine["completion_tokens"] += int(row["completion_tokens_sum"] or 0)


# What one example costs when people write it, as the seed quotes (USD, low and high).
HUMAN_ANNOTATION_USD = (15.0, 50.0)


def run_cost(manifest: dict[str, Any], prices: CostConfig) -> dict[str, Any]:
    """What the run has cost so far, rejected work included: device seconds at `gpu_hour_usd` for local
    teachers, tokens at the per-million prices for API teachers; per generated sample, accepted row and
    verified row (None where a price or a count is missing)."""
    funnel, timing = manifest["funnel"], manifest["timing"]
    teachers = manifest.get("teachers", [])
    api = {t["name"] for t in teachers if t.get("backend") == "openai"}
    api_tokens = {"prompt": 0, "completion": 0}
    for name, counts in funnel.get("teachers", {}).items():
        if name in api:
            api_tokens["prompt"] += counts["prompt_tokens"]
            api_tokens["completion"] += counts["completion_tokens"]
    parts: list[float | None] = []
    if len(api) < len(teachers):  # local teachers ran on the devices
        hourly = prices.gpu_hour_usd
        parts.append(timing["device_seconds"] / 3600 * hourly if hourly is not None else None)
    if api:
        into, out = prices.input_usd_per_million, prices.output_usd_per_million
        priced = into is not None and out is not None
        parts.append((api_tokens["prompt"] * into + api_tokens["completion"] * out) / 1e6 if priced else None)
    total = sum(parts) if parts and None not in parts else None  # type: ignore[arg-type]

    def per(count: int) -> float | None:
        return _significant(total / count) if total is not None and count else None

    verified = funnel.get("verified", 0)
    return {
        "prices": prices.model_dump(),
        "total_usd": round(total, 6) if total is not None else None,
        "usd_per_generated_sample": per(funnel["samples"]),
        "usd_per_accepted_row": per(funnel["accepted"]),
        "usd_per_verified_row": per(verified),
        "device_seconds_per_verified_row": round(timing["device_seconds"] / verified, 4)
        if verified
        else None,
        "api_tokens": api_tokens,
        "human_annotation_usd_per_example": list(HUMAN_ANNOTATION_USD),
    }


def _guards(manifest: dict[str, Any], recipe: Recipe) -> dict[str, Any]:
    """Which teacher wrote what share of the accepted rows, its acceptance rate, and a flag for one
    past `guards.max_teacher_share` (with several teachers, no single model should dominate unnoticed)."""
    funnel, limit = manifest["funnel"], recipe.guards.max_teacher_share
    accepted = funnel["accepted"]
    teachers = {
        name: {
            "share_of_accepted": round(counts["accepted"] / accepted, 4) if accepted else None,
            "acceptance_rate": round(counts["accepted"] / counts["samples"], 4)
            if counts["samples"]
            else None,
        }
        for name, counts in sorted(funnel["teachers"].items())
    }
    flags = [
        {"kind": "teacher", "teacher": name, "share": figures["share_of_accepted"], "max_share": limit}
        for name, figures in teachers.items()
        if len(recipe.teachers) > 1 and (figures["share_of_accepted"] or 0) > limit
    ]
    return {"max_lineage_depth": recipe.guards.max_lineage_depth, "teachers": teachers, "flags": flags}


def _significant(usd: float) -> float:
    """Six significant figures: a cost per row is often millionths of a dollar, which a fixed number of
    decimals would round by up to a third."""
    return float(f"{usd:.6g}")
