"""Near-duplicate removal with MinHash + LSH: the streaming pipeline stage and the corpus command.

Both share the kernels: signatures (:mod:`synthkiln.kernels.minhash`), bands, candidates confirmed by
signature agreement and clusters (:mod:`synthkiln.kernels.lsh`).
"""

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
from synthkiln.engine.stages import Stage
from synthkiln.engine.writer import write_text_atomic
from synthkiln.kernels.lsh import Clusters, StreamingIndex, cluster_duplicates
from synthkiln.kernels.minhash import SCHEME, minhash_signatures, shingle_hashes
from synthkiln.kernels.similarity import shingle_sets


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
        self.signatures(pa.array(["warm up the kernel"]))  # compile or load it now, not mid-run
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
        if (path / INDEX).is_file():
            signatures, names = load_index(path / INDEX, self.num_perm, self.ngram)
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


INDEX = "index.npz"


def save_index(
    path: Path, signatures: np.ndarray, files: list[str], rows: np.ndarray, num_perm: int, ngram: int
) -> None:
    """Signatures of kept documents and where they came from (`files[rows[i, 0]]`, row `rows[i, 1]`),
    reusable as `dedup.against` without re-hashing the corpus."""
    temporary = path.with_name(f".{path.name}.tmp.npz")
    np.savez(
        temporary,
        signatures=signatures,
        files=np.array(files, dtype=str),
        rows=rows,
        num_perm=num_perm,
        ngram=ngram,
        scheme=SCHEME,
    )
    temporary.replace(path)


def load_index(path: Path, num_perm: int, ngram: int) -> tuple[np.ndarray, list[str]]:
    """The signatures and `file:row` names of a saved index; refuses one built with other parameters."""
    with np.load(path, allow_pickle=False) as stored:
        scheme = int(stored["scheme"]) if "scheme" in stored else 1
        if scheme != SCHEME:
            raise SynthkilnError(
                f"{path}: signatures of hashing scheme {scheme}, this synthkiln computes scheme {SCHEME}; "
                "run `synthkiln dedup` on that corpus again to rebuild the index"
            )
        if int(stored["num_perm"]) != num_perm or int(stored["ngram"]) != ngram:
            raise SynthkilnError(
                f"{path}: built with num_perm={int(stored['num_perm'])}, ngram={int(stored['ngram'])}; "
                f"this run uses num_perm={num_perm}, ngram={ngram}"
            )
        files = stored["files"].tolist()
        names = [f"{files[f]}:{r}" for f, r in stored["rows"].tolist()]
        return stored["signatures"], names


def _empty(signatures: np.ndarray) -> np.ndarray:
    return (signatures == np.uint32(0xFFFFFFFF)).all(axis=1)


def _fixed_size(signatures: np.ndarray, num_perm: int) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(signatures.reshape(-1), pa.uint32()), num_perm)


# -- corpus mode ---------------------------------------------------------------------------------------


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
