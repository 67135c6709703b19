"""`synthkiln dedup`: near-duplicate clusters over a whole corpus, one row kept per cluster."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from synthkiln.engine.corpus import Source, iter_sources, write_parts
from synthkiln.engine.errors import SynthkilnError
from synthkiln.engine.output.writer import write_text_atomic
from synthkiln.engine.stages.dedup import INDEX, save_index
from synthkiln.kernels.lsh import Clusters, cluster_duplicates
from synthkiln.kernels.minhash import minhash_signatures, shingle_hashes
from synthkiln.kernels.similarity import shingle_sets


@dataclass
class DedupReport:
    rows: int = 0
    kept: int = 0
    removed: int = 0
    quarantined: int = 0
    clusters: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def dedup_corpus(
    inputs: list[Path],
    out_dir: Path,
    text_field: str = "text",
    threshold: float = 0.8,
    num_perm: int = 128,
    ngram: int = 5,
    keep: str = "first",
    backend: str = "auto",
    progress: bool = True,
    exact: bool = False,
) -> DedupReport:
    """Two passes over the inputs: signatures (text then dropped), then rows written by verdict."""
    if keep not in ("first", "longest") and not keep.startswith("score:"):
        raise SynthkilnError(f"--keep must be first, longest or score:COLUMN, got {keep!r}")
    sources = iter_sources(inputs, text_field)
    report = DedupReport()
    started = time.perf_counter()
    signatures, priority, bad, source_rows, sets = [], [], [], [], []
    with tqdm(desc="signatures", unit="doc", disable=not progress) as bar:
        for source in sources:
            source_rows.append(0)
            for batch in source.batches():
                source_rows[-1] += len(batch)
                texts = batch.column(text_field)
                signatures.append(minhash_signatures(texts, num_perm=num_perm, ngram=ngram, backend=backend))
                if exact:
                    sets.append(shingle_sets(*shingle_hashes(texts, ngram=ngram)))
                priority.append(_priority(batch, keep, source, text_field))
                bad.append(pc.is_null(texts).to_numpy(zero_copy_only=False))
                bar.update(len(batch))
    all_signatures = np.concatenate(signatures) if signatures else np.zeros((0, num_perm), np.uint32)
    del signatures
    report.seconds["signatures"] = time.perf_counter() - started
    mark = time.perf_counter()
    clusters = cluster_duplicates(
        all_signatures,
        threshold,
        np.concatenate(priority) if priority else None,
        shingles=_join(sets) if exact else None,
    )
    quarantined = np.concatenate(bad) if bad else np.zeros(0, bool)
    report.seconds["clusters"] = time.perf_counter() - mark
    mark = time.perf_counter()
    report.rows = len(all_signatures)
    report.quarantined = int(quarantined.sum())
    report.removed = int((~clusters.keep & ~quarantined).sum())
    report.kept = report.rows - report.removed - report.quarantined
    report.clusters = len(np.unique(clusters.cluster[~clusters.keep]))
    name = _namer(sources, source_rows)
    _write_verdicts(sources, name, out_dir, clusters, quarantined, text_field)
    kept_rows = np.flatnonzero(clusters.keep & ~quarantined)
    starts = np.concatenate([[0], np.cumsum(source_rows)])
    owners = np.searchsorted(starts, kept_rows, side="right") - 1
    save_index(
        out_dir / INDEX,
        all_signatures[kept_rows],
        [s.path.name for s in sources],
        np.stack([owners, kept_rows - starts[owners]], axis=1),
        num_perm,
        ngram,
    )
    report.seconds["write"] = time.perf_counter() - mark
    manifest = {
        "format": "synthkiln-dedup/1",
        "inputs": [str(s.path) for s in sources],
        "parameters": {"text_field": text_field, "threshold": threshold, "num_perm": num_perm, "ngram": ngram,
                       "keep": keep, "backend": backend, "exact": exact},
        "rows": report.rows, "kept": report.kept, "removed": report.removed, "quarantined": report.quarantined,
        "clusters_with_duplicates": report.clusters,
        "index": INDEX,
        "seconds": {k: round(v, 3) for k, v in report.seconds.items()},
    }  # fmt: skip
    write_text_atomic(out_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return report


def _join(sets: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-batch (hashes, offsets) into one."""
    hashes = np.concatenate([h for h, _ in sets]) if sets else np.zeros(0, np.uint32)
    offsets, base = [np.zeros(1, np.int64)], 0
    for h, o in sets:
        offsets.append(o[1:] + base)
        base += len(h)
    return hashes, np.concatenate(offsets)


def _priority(batch: pa.RecordBatch, keep: str, source: Source, text_field: str) -> np.ndarray:
    if keep == "first":
        return np.zeros(len(batch))
    if keep == "longest":
        return pc.fill_null(pc.utf8_length(batch.column(text_field)), 0).to_numpy().astype(np.float64)
    column = keep.split(":", 1)[1]
    if batch.schema.get_field_index(column) < 0:
        raise SynthkilnError(f"{source.path}: --keep {keep}: no column '{column}'")
    scores = pc.cast(batch.column(column), pa.float64())
    return pc.fill_null(scores, -np.inf).to_numpy()


def _namer(sources: list[Source], source_rows: list[int]) -> Callable[[int], str]:
    """Global row number -> `file:row`, the name a removed row's `duplicate_of` points to."""
    starts = np.concatenate([[0], np.cumsum(source_rows)])

    def name(row: int) -> str:
        owner = int(np.searchsorted(starts, row, side="right")) - 1
        return f"{sources[owner].path.name}:{row - starts[owner]}"

    return name


def _write_verdicts(
    sources: list[Source], name: Callable[[int], str], out_dir: Path, clusters: Clusters, quarantined: np.ndarray,
    text_field: str,
) -> None:  # fmt: skip
    for folder in ("data", "rejected"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    offset = 0
    for number, source in enumerate(sources):
        kept_parts, rejected_parts = [], []
        for batch in source.batches():
            rows = np.arange(offset, offset + len(batch))
            offset += len(batch)
            keep = clusters.keep[rows] & ~quarantined[rows]
            kept_parts.append(batch.filter(pa.array(keep)))
            dropped = ~keep
            if dropped.any():
                targets = clusters.duplicate_of[rows][dropped]
                is_null = quarantined[rows][dropped]
                removed = batch.filter(pa.array(dropped))
                removed = removed.append_column(
                    "cluster_id", pa.array(clusters.cluster[rows][dropped], pa.int64())
                )
                removed = removed.append_column(
                    "duplicate_of",
                    pa.array(
                        [None if n else name(t) for t, n in zip(targets, is_null, strict=True)], pa.string()
                    ),
                )
                removed = removed.append_column(
                    "similarity",
                    pa.array(clusters.similarity[rows][dropped], pa.float32(), mask=is_null),
                )
                removed = removed.append_column(
                    "reason",
                    pa.array([f"null {text_field}" if n else "near-duplicate" for n in is_null], pa.string()),
                )
                rejected_parts.append(removed)
        write_parts(out_dir, number, kept_parts, rejected_parts)
