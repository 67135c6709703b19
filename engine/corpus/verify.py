"""`synthkiln verify`: a corpus's rows checked by verifiers; failing rows go to `rejected/`."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from tqdm.auto import tqdm

from synthkiln.engine.corpus import iter_sources, prepare_output, write_parts
from synthkiln.engine.output.writer import write_text_atomic
from synthkiln.engine.stages.verify import record_verdict, verify_rows
from synthkiln.verifiers import Verifier, VerifierPool

_RENAMED = {"field": "field_name"}  # recipe/CLI spelling -> constructor argument


@dataclass
class VerifyReport:
    rows: int = 0
    passed: int = 0
    failed: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


_FORMAT = "synthkiln-verify/1"


def verify_corpus(
    inputs: list[Path], out_dir: Path, verifiers: list[Verifier], pool: VerifierPool, progress: bool = True
) -> VerifyReport:
    """Passing rows to `data/`, failing ones to `rejected/` with `verdict`, `reason` and `detail`."""
    sources = iter_sources(inputs)
    for source in sources:  # every input must be readable before anything is written
        next(iter(source.batches(1)), None)
    report = VerifyReport()
    started = time.perf_counter()
    prepare_output(out_dir, _FORMAT)
    with tqdm(desc="verify", unit="row", disable=not progress) as bar:
        for number, source in enumerate(sources):
            kept, rejected = [], []
            for batch in source.batches(1024):
                rows = batch.to_pylist()
                for row, verdicts in zip(rows, verify_rows(pool, verifiers, rows), strict=True):
                    failure = next((v for v in verdicts if not v.passed), None)
                    records = [record_verdict(v) for v in verdicts]
                    if failure is None:
                        kept.append({**row, "verdicts": records})
                    else:
                        reason = f"{failure.verifier}:{failure.status}"
                        rejected.append({**row, "verdicts": records, "verdict": failure.status, "reason": reason,
                                         "detail": failure.detail})  # fmt: skip
                        report.by_reason[reason] += 1
                report.rows += len(rows)
                bar.update(len(rows))
            write_parts(
                out_dir, number, [pa.RecordBatch.from_pylist(kept)], [pa.RecordBatch.from_pylist(rejected)]
            )
            report.passed += len(kept)
            report.failed += len(rejected)
    report.seconds = time.perf_counter() - started
    manifest = {
        "format": _FORMAT,
        "inputs": [str(s.path) for s in sources],
        "verifiers": [v.name for v in sorted(verifiers, key=lambda v: v.cost)],
        "sandbox": pool.describe(),
        "rows": report.rows, "passed": report.passed, "failed": report.failed,
        "rejected_by": dict(report.by_reason), "seconds": round(report.seconds, 3),
    }  # fmt: skip
    write_text_atomic(out_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return report
