"""`synthkiln verify`: a corpus's rows checked by verifiers; failing rows go to `rejected/`."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from synthkiln.engine.corpus import CorpusCommand, Source
from synthkiln.engine.stages.verify import record_verdict, verify_rows
from synthkiln.verifiers import Verifier, VerifierPool


class Verify(CorpusCommand):
    """Passing rows to `data/`, failing ones to `rejected/` with `verdict`, `reason` and `detail`."""

    output_format = "synthkiln-verify/1"
    batch_rows = 1024

    def __init__(self, verifiers: list[Verifier], pool: VerifierPool) -> None:
        super().__init__()
        self.verifiers, self.pool = verifiers, pool

    def fields(self) -> dict[str, str]:
        named: dict[str, str] = {}
        for verifier in self.verifiers:
            for field_name, argument in verifier.required_fields().items():
                option = "--field" if argument == "field_name" else "--" + argument.replace("_", "-")
                named.setdefault(field_name, f"{option} of {verifier.name}")
        return named

    def split(
        self, batch: pa.RecordBatch, source: Source, judged: Any = None
    ) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        rows = batch.to_pylist()
        kept, rejected = [], []
        for row, verdicts in zip(rows, verify_rows(self.pool, self.verifiers, rows), strict=True):
            failure = next((v for v in verdicts if not v.passed), None)
            records = [record_verdict(v) for v in verdicts]
            if failure is None:
                kept.append({**row, "verdicts": records})
            else:
                reason = f"{failure.verifier}:{failure.status}"
                rejected.append({**row, "verdicts": records, "verdict": failure.status, "reason": reason,
                                 "detail": failure.detail})  # fmt: skip
        return _batch(kept, batch.schema), _batch(rejected, batch.schema)

    def summary(self) -> dict[str, Any]:
        return {
            "verifiers": [v.name for v in sorted(self.verifiers, key=lambda v: v.cost)],
            "sandbox": self.pool.describe(),
        }


def _batch(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.RecordBatch:
    if rows:
        return pa.RecordBatch.from_pylist(rows)
    return pa.RecordBatch.from_pylist([], schema=schema)
