"""`synthkiln decontaminate`: a corpus's rows that contain a benchmark item go to `rejected/`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from synthkiln.engine.config import DecontaminateConfig
from synthkiln.engine.corpus import iter_sources, prepare_output, write_parts
from synthkiln.engine.output.writer import write_text_atomic
from synthkiln.engine.stages.decontam import ContaminationIndex, contamination_column


@dataclass
class DecontaminationReport:
    rows: int = 0
    kept: int = 0
    removed: int = 0
    quarantined: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    benchmarks: list[dict[str, Any]] = field(default_factory=list)


_CORPUS_FORMAT = "synthkiln-decontaminate/1"


def decontaminate_corpus(
    inputs: list[Path],
    out_dir: Path,
    config: DecontaminateConfig,
    text_field: str = "text",
    progress: bool = True,
) -> DecontaminationReport:
    """One pass: each input file's rows split into `data/` and `rejected/` shards, then the manifest."""
    sources = iter_sources(inputs, text_field)  # every input is found before anything is written
    report = DecontaminationReport()
    started = time.perf_counter()
    index = ContaminationIndex.for_config(config, progress=progress)
    report.seconds["index"] = time.perf_counter() - started
    mark = time.perf_counter()
    hit_items: dict[str, set[str]] = {b["name"]: set() for b in index.benchmarks}
    removed: dict[str, int] = dict.fromkeys(hit_items, 0)
    prepare_output(out_dir, _CORPUS_FORMAT)
    with tqdm(desc="decontaminate", unit="row", disable=not progress) as bar:
        for number, source in enumerate(sources):
            kept_parts, rejected_parts = [], []
            for batch in source.batches():
                texts = batch.column(text_field)
                null = pc.is_null(texts).to_numpy(zero_copy_only=False)
                matches = index.find(pc.fill_null(texts, ""))
                for match in matches:
                    if match is not None:
                        hit_items[match.benchmark].add(f"{match.item_id}/{match.field}")
                        removed[match.benchmark] += 1
                dropped = null | np.array([m is not None for m in matches], bool)
                kept_parts.append(batch.filter(pa.array(~dropped)))
                if dropped.any():
                    rejected = batch.append_column("contamination", contamination_column(matches))
                    reasons = [
                        f"null {text_field}" if n else (f"contaminated:{m.benchmark}" if m else None)
                        for n, m in zip(null, matches, strict=True)
                    ]
                    rejected = rejected.append_column("reason", pa.array(reasons, pa.string()))
                    rejected_parts.append(rejected.filter(pa.array(dropped)))
                report.rows += len(batch)
                report.quarantined += int(null.sum())
                report.removed += int((dropped & ~null).sum())
                bar.update(len(batch))
            write_parts(out_dir, number, kept_parts, rejected_parts)
    report.kept = report.rows - report.removed - report.quarantined
    report.seconds["check"] = time.perf_counter() - mark
    report.benchmarks = [
        {**b, "items_hit": len(hit_items[b["name"]]), "rows_removed": removed[b["name"]]}
        for b in index.describe()
    ]
    manifest = {
        "format": _CORPUS_FORMAT,
        "inputs": [str(s.path) for s in sources],
        "parameters": {"text_field": text_field, **config.model_dump(mode="json", exclude={"benchmarks", "text_field", "seeds"})},
        "rows": report.rows, "kept": report.kept, "removed": report.removed, "quarantined": report.quarantined,
        "decontaminated_against": report.benchmarks,
        "seconds": {k: round(v, 3) for k, v in report.seconds.items()},
    }  # fmt: skip
    write_text_atomic(out_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return report
