"""`synthkiln decontaminate`: a corpus's rows that contain a benchmark item go to `rejected/`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synthkiln.engine.config import DecontaminateConfig
from synthkiln.engine.corpus import CorpusCommand, Source
from synthkiln.engine.executor import LocalExecutor
from synthkiln.engine.stages.decontam import ContaminationIndex, Match, contamination_column


class Decontaminate(CorpusCommand):
    """One pass: the benchmark index is built (or loaded from the cache) first, then each row checked."""

    output_format = "synthkiln-decontaminate/1"

    def __init__(self, config: DecontaminateConfig, text_field: str = "text") -> None:
        super().__init__()
        self.config, self.text_field = config, text_field
        self.removed = self.quarantined = 0
        self.hit_items: dict[str, set[str]] = {}
        self.removed_by: dict[str, int] = {}

    def fields(self) -> dict[str, str]:
        return {self.text_field: "--text-field"}

    def prepare(self, sources: list[Source], progress: bool, executor: LocalExecutor, work: Path) -> None:
        started = time.perf_counter()
        _, self.judge_gpus = executor.kernels(self.config.backend)  # before an index is built in vain
        self.index = ContaminationIndex.for_config(self.config, progress=progress)
        self.index_seconds = time.perf_counter() - started
        self.hit_items = {b["name"]: set() for b in self.index.benchmarks}
        self.removed_by = dict.fromkeys(self.hit_items, 0)

    def judge(self) -> tuple[Callable[[Search, pa.RecordBatch], list[Match | None]], Search]:
        return find_matches, Search(self.index, self.text_field)

    def split(
        self, batch: pa.RecordBatch, source: Source, judged: list[Match | None] | None = None
    ) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        null = pc.is_null(batch.column(self.text_field)).to_numpy(zero_copy_only=False)
        matches = judged if judged is not None else find_matches(Search(self.index, self.text_field), batch)
        found = {row: match for row, match in enumerate(matches) if match is not None}
        for match in found.values():
            self.hit_items[match.benchmark].add(f"{match.item_id}/{match.field}")
            self.removed_by[match.benchmark] += 1
        dropped = null.copy()
        dropped[list(found)] = True
        self.quarantined += int(null.sum())
        self.removed += int((dropped & ~null).sum())
        rows = np.flatnonzero(dropped)  # built for the rejected rows only: most batches have none
        picked = [None if null[row] else found[row] for row in rows.tolist()]
        rejected = batch.take(pa.array(rows)).append_column("contamination", contamination_column(picked))
        reasons = [f"contaminated:{m.benchmark}" if m else f"null {self.text_field}" for m in picked]
        details = [m.describe() if m else None for m in picked]
        rejected = rejected.append_column("reason", pa.array(reasons, pa.string()))
        rejected = rejected.append_column("detail", pa.array(details, pa.string()))
        return (batch.filter(pa.array(~dropped)) if len(rows) else batch), rejected

    def summary(self) -> dict[str, Any]:
        return {
            "parameters": {
                "text_field": self.text_field,
                **self.config.model_dump(mode="json", exclude={"benchmarks", "text_field", "seeds"}),
            },
            "removed": self.removed,
            "quarantined": self.quarantined,
            "decontaminated_against": [
                {**b, "items_hit": len(self.hit_items[b["name"]]), "rows_removed": self.removed_by[b["name"]]}
                for b in self.index.describe()
            ],
            "index_seconds": round(self.index_seconds, 3),
        }


@dataclass(frozen=True)
class Search:
    index: ContaminationIndex
    text_field: str


def find_matches(search: Search, batch: pa.RecordBatch) -> list[Match | None]:
    """Each row's benchmark match, if any (a null text has none); the part a cluster's workers run."""
    return search.index.find(pc.fill_null(batch.column(search.text_field), ""))
