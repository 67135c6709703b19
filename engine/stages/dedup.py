"""Near-duplicate removal with MinHash + LSH: the streaming pipeline stage (the corpus command is
:mod:`synthkiln.engine.corpus.dedup`, the index it writes for `dedup.against`
:mod:`synthkiln.engine.corpus.index`).

Both share the kernels: signatures (:mod:`synthkiln.kernels.minhash`), bands, candidates confirmed by
signature agreement and clusters (:mod:`synthkiln.kernels.lsh`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from synthkiln.engine.corpus import iter_sources
from synthkiln.engine.corpus.index import corpus_index, load_index
from synthkiln.engine.errors import SynthkilnError
from synthkiln.engine.stages.base import Stage
from synthkiln.kernels.lsh import StreamingIndex
from synthkiln.kernels.minhash import SCHEME, minhash_signatures


class NearDuplicates(Stage):
    """Reject a sample whose text is a near-duplicate of anything accepted so far (or of a corpus).

    Kept rows carry their signature in `minhash`, so committed shards hold the whole index: a resumed
    run rebuilds it from them (`restore`). The field's metadata names the hashing scheme, so shards
    written by a synthkiln that hashed differently are refused instead of silently never matching.
    """

    name = "dedup"
    restore_columns = ("id", "minhash")

    def __init__(
        self,
        threshold: float = 0.8,
        num_perm: int = 128,
        ngram: int = 5,
        text_field: str = "response",
        backend: str = "auto",
        against: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.threshold, self.num_perm, self.ngram = threshold, num_perm, ngram
        self.text_field, self.backend = text_field, backend
        self.fields = (
            pa.field("minhash", pa.list_(pa.uint32(), num_perm), metadata={"hashing_scheme": str(SCHEME)}),
            pa.field("duplicate_of", pa.string()),
            pa.field("similarity", pa.float32()),
        )
        self._index = StreamingIndex(num_perm, threshold)
        self._ids: list[str] = []
        # Compile or load the kernels now, not mid-run (loading the index's took seconds there).
        StreamingIndex(num_perm, threshold).add(self.signatures(pa.array(["warm up the kernels"])))
        for path in against or []:
            self._add_corpus(Path(path))

    def signatures(self, texts: pa.Array) -> np.ndarray:
        return minhash_signatures(texts, num_perm=self.num_perm, ngram=self.ngram, backend=self.backend)

    def process(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        signatures = self.signatures(batch.column(self.text_field))
        duplicate_of, similarity = self._index.add(signatures)
        added = duplicate_of < 0
        ids = batch.column("id").to_pylist()
        added_rows = np.flatnonzero(added & ~_empty(signatures))
        self._ids.extend(ids[i] for i in added_rows)
        duplicate_ids = [self._ids[target] if target >= 0 else None for target in duplicate_of.tolist()]
        batch = batch.append_column(self.fields[0], _fixed_size(signatures, self.num_perm))
        batch = batch.append_column(self.fields[1], pa.array(duplicate_ids, pa.string()))
        batch = batch.append_column(self.fields[2], pa.array(similarity, pa.float32(), mask=added))
        reasons = pa.array([None if keep else "near-duplicate" for keep in added.tolist()], pa.string())
        return self.split(batch, reasons)

    def restore(self, committed: pa.Table) -> None:
        if not committed.num_rows:
            return
        scheme = int((committed.schema.field("minhash").metadata or {}).get(b"hashing_scheme", b"1"))
        if scheme != SCHEME:
            raise SynthkilnError(
                f"the committed shards hold MinHash signatures of hashing scheme {scheme}, this synthkiln "
                f"computes scheme {SCHEME}: resume with the synthkiln that wrote them, or start over (--fresh)"
            )
        flat = committed.column("minhash").combine_chunks().flatten().to_numpy()
        signatures = np.concatenate(
            [self._index.signatures, flat.reshape(-1, self.num_perm).astype(np.uint32)]
        )
        ids = self._ids + [
            i
            for i, e in zip(
                committed.column("id").to_pylist(), _empty(signatures[len(self._ids) :]), strict=True
            )
            if not e
        ]
        self._index = StreamingIndex.of(signatures, self.threshold)
        self._ids = ids

    def _add_corpus(self, path: Path) -> None:
        index = corpus_index(path)
        if index is not None:
            signatures, names = load_index(index, self.num_perm, self.ngram)
            self._index = StreamingIndex.of(
                np.concatenate([self._index.signatures, signatures]), self.threshold
            )
            self._ids.extend(names)
            return
        for source in iter_sources([path], self.text_field):
            for batch in source.batches():
                texts = batch.column(self.text_field)
                duplicate_of, _ = self._index.add(self.signatures(texts))
                names = [f"{source.path.name}:{source.row_base + i}" for i in range(len(batch))]
                self._ids.extend(name for name, target in zip(names, duplicate_of, strict=True) if target < 0)


def _empty(signatures: np.ndarray) -> np.ndarray:
    return (signatures == np.uint32(0xFFFFFFFF)).all(axis=1)


def _fixed_size(signatures: np.ndarray, num_perm: int) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(signatures.reshape(-1), pa.uint32()), num_perm)
