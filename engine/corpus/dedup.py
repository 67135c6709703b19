"""`synthkiln dedup`: near-duplicate clusters over a whole corpus, one row kept per cluster."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from synthkiln.engine.corpus import CorpusCommand, Source
from synthkiln.engine.errors import SynthkilnError
from synthkiln.engine.output.directory import OutputDirectory
from synthkiln.engine.stages.dedup import save_index
from synthkiln.kernels.lsh import cluster_duplicates
from synthkiln.kernels.minhash import minhash_signatures, shingle_hashes
from synthkiln.kernels.similarity import shingle_sets


class Dedup(CorpusCommand):
    """Two passes: signatures of every row (text then dropped) and clusters, then rows by verdict."""

    output_format = "synthkiln-dedup/1"

    def __init__(
        self,
        text_field: str = "text",
        threshold: float = 0.8,
        num_perm: int = 128,
        ngram: int = 5,
        keep: str = "first",
        backend: str = "auto",
        exact: bool = False,
    ) -> None:
        super().__init__()
        if keep not in ("first", "longest") and not keep.startswith("score:"):
            raise SynthkilnError(f"--keep must be first, longest or score:COLUMN, got {keep!r}")
        self.text_field, self.threshold, self.num_perm, self.ngram = text_field, threshold, num_perm, ngram
        self.keep, self.backend, self.exact = keep, backend, exact
        self.seconds: dict[str, float] = {}

    def fields(self) -> dict[str, str]:
        named = {self.text_field: "--text-field"}
        if self.keep.startswith("score:"):
            named[self.keep.split(":", 1)[1]] = f"--keep {self.keep}"
        return named

    def prepare(self, sources: list[Source], progress: bool) -> None:
        started = time.perf_counter()
        signatures, priority, bad, source_rows, sets = [], [], [], [], []
        with tqdm(desc="signatures", unit="doc", disable=not progress) as bar:
            for source in sources:
                source_rows.append(0)
                for batch in source.batches():
                    source_rows[-1] += len(batch)
                    texts = batch.column(self.text_field)
                    signatures.append(
                        minhash_signatures(
                            texts, num_perm=self.num_perm, ngram=self.ngram, backend=self.backend
                        )
                    )
                    if self.exact:
                        sets.append(shingle_sets(*shingle_hashes(texts, ngram=self.ngram)))
                    priority.append(_priority(batch, self.keep, self.text_field))
                    bad.append(pc.is_null(texts).to_numpy(zero_copy_only=False))
                    bar.update(len(batch))
        self.signatures = (
            np.concatenate(signatures) if signatures else np.zeros((0, self.num_perm), np.uint32)
        )
        del signatures
        self.seconds["signatures"] = time.perf_counter() - started
        mark = time.perf_counter()
        self.clusters = cluster_duplicates(
            self.signatures,
            self.threshold,
            np.concatenate(priority) if priority else None,
            shingles=_join(sets) if self.exact else None,
        )
        self.quarantined = np.concatenate(bad) if bad else np.zeros(0, bool)
        self.seconds["clusters"] = time.perf_counter() - mark
        self.sources, self.starts = sources, np.concatenate([[0], np.cumsum(source_rows)]).astype(np.int64)
        self.offset = 0

    def split(self, batch: pa.RecordBatch, source: Source) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        rows = np.arange(self.offset, self.offset + len(batch))
        self.offset += len(batch)
        clusters, quarantined = self.clusters, self.quarantined[rows]
        keep = clusters.keep[rows] & ~quarantined
        dropped = ~keep
        targets = clusters.duplicate_of[rows][dropped]
        is_null = quarantined[dropped]
        removed = batch.filter(pa.array(dropped))
        duplicate_of = [None if n else self._name(t) for t, n in zip(targets, is_null, strict=True)]
        columns = {
            "cluster_id": pa.array(clusters.cluster[rows][dropped], pa.int64()),
            "duplicate_of": pa.array(duplicate_of, pa.string()),
            "similarity": pa.array(clusters.similarity[rows][dropped], pa.float32(), mask=is_null),
            "reason": pa.array(
                [f"null {self.text_field}" if n else "near-duplicate" for n in is_null], pa.string()
            ),
            "detail": pa.array(
                [
                    None if n else f"near-duplicate of {d} (estimated Jaccard {s:.2f})"
                    for n, d, s in zip(is_null, duplicate_of, clusters.similarity[rows][dropped], strict=True)
                ],
                pa.string(),
            ),
        }
        for name, values in columns.items():
            removed = removed.append_column(name, values)
        return batch.filter(pa.array(keep)), removed

    def _name(self, row: int) -> str:
        """Global row number -> `file:row`, the name a removed row's `duplicate_of` points to."""
        owner = int(np.searchsorted(self.starts, row, side="right")) - 1
        return f"{self.sources[owner].path.name}:{row - self.starts[owner]}"

    def extra_files(self, directory: OutputDirectory, run: int) -> list[str]:
        kept = np.flatnonzero(self.clusters.keep & ~self.quarantined)
        owners = np.searchsorted(self.starts, kept, side="right") - 1
        self.index_name = f"index-r{run}.npz"
        save_index(
            directory.path / self.index_name,
            self.signatures[kept],
            [s.path.name for s in self.sources],
            np.stack([owners, kept - self.starts[owners]], axis=1),
            self.num_perm,
            self.ngram,
        )
        return [self.index_name]

    def summary(self) -> dict[str, Any]:
        removed = ~self.clusters.keep & ~self.quarantined
        return {
            "parameters": {"text_field": self.text_field, "threshold": self.threshold, "num_perm": self.num_perm,
                           "ngram": self.ngram, "keep": self.keep, "backend": self.backend, "exact": self.exact},
            "removed": int(removed.sum()),
            "quarantined": int(self.quarantined.sum()),
            "clusters_with_duplicates": len(np.unique(self.clusters.cluster[removed])),
            "index": self.index_name,
            "seconds_by_pass": {k: round(v, 3) for k, v in self.seconds.items()},
        }  # fmt: skip


def _join(sets: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-batch (hashes, offsets) into one."""
    hashes = np.concatenate([h for h, _ in sets]) if sets else np.zeros(0, np.uint32)
    offsets, base = [np.zeros(1, np.int64)], 0
    for h, o in sets:
        offsets.append(o[1:] + base)
        base += len(h)
    return hashes, np.concatenate(offsets)


def _priority(batch: pa.RecordBatch, keep: str, text_field: str) -> np.ndarray:
    if keep == "first":
        return np.zeros(len(batch))
    if keep == "longest":
        return pc.fill_null(pc.utf8_length(batch.column(text_field)), 0).to_numpy().astype(np.float64)
    column = keep.split(":", 1)[1]  # present: the skeleton checked every input's fields
    scores = pc.cast(batch.column(column), pa.float64())
    return pc.fill_null(scores, -np.inf).to_numpy()
