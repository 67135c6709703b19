"""The stage interface: a stage takes an Arrow record batch and splits it into kept and rejected rows.

A stage does one thing and knows nothing of its neighbours; the pipeline wires them in order. Rejected
rows carry the stage's name and a short machine-readable reason.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc


@dataclass
class StageStats:
    seen: int = 0
    kept: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


class Stage(ABC):
    """One step of curation. Subclasses set `name` and implement `process`."""

    name: str
    verifiers: tuple[str, ...] = ()  # what stages that prove rows right check with (listed on the card)
    fields: tuple[pa.Field, ...] = ()  # columns this stage adds to the rows it keeps or rejects
    restore_columns: tuple[str, ...] = ()  # committed columns a stateful stage rebuilds itself from
    # Whether `restore` also gets the committed rows later stages rejected (they passed this one).
    restore_rejected_after = False
    benchmarks: tuple[dict, ...] = ()  # benchmarks this stage keeps out (listed on the dataset card)
    sandbox: dict | None = None  # the isolation a stage ran untrusted text under (in the manifest)

    def restore(self, committed: pa.Table) -> None:
        """Rebuild state from rows an earlier run committed (called before a resumed run starts)."""
        raise NotImplementedError(f"stage '{self.name}' lists restore_columns but does not restore")

    def __init__(self) -> None:
        self.stats = StageStats()

    def close(self) -> None:  # noqa: B027 (optional hook: most stages hold nothing)
        """Release what the stage holds (worker pools); called when the pipeline closes."""

    @abstractmethod
    def process(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        """Return (kept, rejected); rejected has the extra columns `stage`, `reason` and `detail`."""

    def split(
        self, batch: pa.RecordBatch, reasons: pa.Array, details: pa.Array | None = None
    ) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        """Partition `batch` by `reasons` (null: keep), with optional per-row `details`; count the outcome."""
        keep = pc.is_null(reasons)
        kept = batch.filter(keep)
        dropped = pc.invert(keep)
        rejected_reasons = reasons.filter(dropped)
        rejected = batch.filter(dropped)
        rejected = rejected.append_column("stage", pa.array([self.name] * len(rejected), pa.string()))
        rejected = rejected.append_column("reason", rejected_reasons.cast(pa.string()))
        rejected_details = (
            details.filter(dropped) if details is not None else pa.nulls(len(rejected), pa.string())
        )
        rejected = rejected.append_column("detail", rejected_details)
        self.stats.seen += len(batch)
        self.stats.kept += len(kept)
        self.stats.rejected.update(rejected_reasons.to_pylist())
        return kept, rejected


class FilterStage(Stage):
    """A stage that only decides: subclasses return one reason per row (null keeps the row)."""

    def process(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        return self.split(batch, self.reasons(batch))

    @abstractmethod
    def reasons(self, batch: pa.RecordBatch) -> pa.Array: ...


def set_column(batch: pa.RecordBatch, name: str, values: pa.Array) -> pa.RecordBatch:
    """`batch` with column `name` replaced by `values` (appended when absent)."""
    index = batch.schema.get_field_index(name)
    if index < 0:
        return batch.append_column(pa.field(name, values.type), values)
    return batch.set_column(index, batch.schema.field(name), values)
