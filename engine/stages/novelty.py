"""Novelty rejection: a row whose n-grams were mostly seen before is stitched from common phrases.

This complements MinHash dedup, which compares a row with each earlier row alone: a response built
from phrases of many earlier rows is caught here although no single one of them is similar to it.
"""

from __future__ import annotations

import pyarrow as pa

from synthkiln.engine.stages.base import Stage
from synthkiln.kernels.diversity import KeyTable, add_ngrams, filter_novel


class Novelty(Stage):
    """Reject a row (`low-novelty`) whose share of n-grams never seen in the rows this stage kept
    before it is below `min_novelty`; the detail gives the row's novelty.

    What it has seen are the rows it kept, whatever later stages did with them: a resumed run
    restores them from the committed accepted rows and the rows later stages rejected (`restore`).
    """

    name = "novelty"
    restore_columns = ("response",)
    restore_rejected_after = True  # rows this stage kept that a later stage rejected count as seen

    def __init__(self, min_novelty: float, ngram: int = 3, text_field: str = "response") -> None:
        super().__init__()
        self.min_novelty, self.ngram, self.text_field = min_novelty, ngram, text_field
        self.restore_columns = (text_field,)
        self._seen = KeyTable()
        filter_novel(
            pa.array(["warm up the kernel"]), KeyTable(), min_novelty, ngram
        )  # load it now, not mid-run

    def process(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        scores, kept = filter_novel(batch.column(self.text_field), self._seen, self.min_novelty, self.ngram)
        reasons = pa.array([None if keep else "low-novelty" for keep in kept.tolist()], pa.string())
        details = pa.array(
            [None if keep else f"novelty {score:.3f} below {self.min_novelty}" for score, keep in zip(
                scores.tolist(), kept.tolist(), strict=True)],
            pa.string(),
        )  # fmt: skip
        return self.split(batch, reasons, details)

    def restore(self, committed: pa.Table) -> None:
        if committed.num_rows:
            add_ngrams(self._seen, committed.column(self.text_field).combine_chunks(), self.ngram)
