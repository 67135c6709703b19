"""`synthkiln dedup`: near-duplicate clusters over a whole corpus, one row kept per cluster.

Memory is bounded by design, not by the corpus. Signatures and band keys go to files in a scratch
folder as batches are signed: each batch's band keys sorted into 1024 fine hash partitions. Ranges of
partitions that fit `partition_mb` are then grouped one at a time (or side by side on a cluster): a
bucket lives in one partition, so each range gives exactly the candidate pairs an in-memory pass gives
for its buckets, confirmed against signatures read back from disk. The confirmed pairs are shuffled on to the
connected-components rounds (`components`), and the stars they end in are read a range at a time to
decide each cluster's kept row (`decide_clusters`), written as verdicts by row. No process holds the
corpus's signatures, pairs or clusters: the driver holds counts per partition, and reads the verdicts
of one batch at a time as it writes it. The executor runs every task; each decides on global row
numbers only, so the kept set is the same whatever ran them.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from synthkiln.engine.corpus import CorpusCommand, Source, compact, read_ahead
from synthkiln.engine.corpus.components import Round, connected_components, save_edges
from synthkiln.engine.corpus.index import SignatureFile, save_index
from synthkiln.engine.corpus.shuffle import FINE_PARTITIONS, offsets, read_span, save_whole, spans
from synthkiln.engine.errors import SynthkilnError
from synthkiln.engine.executor import LocalExecutor
from synthkiln.engine.output.directory import OutputDirectory
from synthkiln.kernels.components import sorted_edges, star_members
from synthkiln.kernels.lsh import band_records, bucket_pairs, keepers, optimal_bands, union_find
from synthkiln.kernels.minhash import minhash_signatures, shingle_hashes
from synthkiln.kernels.similarity import exact_jaccard_pairs, jaccard_pairs, shingle_sets

PAIRS_PER_STEP = 1 << 18  # candidate pairs confirmed at a time: bounds the signatures read back


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
        partition_mb: int = 256,
    ) -> None:
        super().__init__()
        if keep not in ("first", "longest") and not keep.startswith("score:"):
            raise SynthkilnError(f"--keep must be first, longest or score:COLUMN, got {keep!r}")
        if partition_mb < 1:
            raise SynthkilnError(f"--partition-mb must be at least 1, got {partition_mb}")
        self.text_field, self.threshold, self.num_perm, self.ngram = text_field, threshold, num_perm, ngram
        self.keep, self.backend, self.exact, self.partition_mb = keep, backend, exact, partition_mb
        self.seconds: dict[str, float] = {}

    def fields(self) -> dict[str, str]:
        named = {self.text_field: "--text-field"}
        if self.keep.startswith("score:"):
            named[self.keep.split(":", 1)[1]] = f"--keep {self.keep}"
        return named

    def prepare(self, sources: list[Source], progress: bool, executor: LocalExecutor, work: Path) -> None:
        started = time.perf_counter()
        bands, rows = optimal_bands(self.threshold, self.num_perm)
        backend, gpus = executor.kernels(self.backend)
        signatures = SignatureFile(str(work / "signatures.npy"), self.num_perm)
        signatures.create()
        spec = SignSpec(str(work), signatures, self.ngram, backend, bands, rows, self.exact)
        bases, counts, quarantined = [0], [], []
        source_rows = np.zeros(len(sources), np.int64)
        chunks = read_ahead(_numbered(sources, self.batch_rows))
        with contextlib.closing(chunks), tqdm(desc="signatures", unit="doc", disable=not progress) as bar:
            for (number, batch, (chunk, base, _)), partition_counts in executor.map(
                sign_chunk, spec, chunks, payload=lambda item: item[2], gpus=gpus
            ):
                source_rows[number] += len(batch)
                if self.keep != "first":  # read back for the rows that have near-duplicates only
                    priority = _priority(batch, self.keep, self.text_field, sources[number].path)
                    save_whole(work / f"priority-{chunk}.npy", priority)
                nulls = pc.is_null(batch.column(self.text_field)).to_numpy(zero_copy_only=False)
                quarantined.append(base + np.flatnonzero(nulls))
                counts.append(partition_counts)
                bases.append(base + len(batch))
                bar.update(len(batch))
        signatures.seal(bases[-1])
        self.seconds["signatures"] = time.perf_counter() - started
        mark = time.perf_counter()
        store = ChunkStore(str(work), signatures, np.array(bases, np.int64), self.exact)
        plan = GroupSpec(store, offsets(counts), self.threshold)
        ranges = spans(plan.table, self.partition_mb, executor.workers)
        edge_counts = [found for _, found in executor.map(group_partitions, plan, enumerate(ranges))]
        stars, star_ranges = connected_components(
            executor, Round(str(work), 0, offsets(edge_counts)), self.partition_mb
        )
        decided = [
            found
            for _, found in executor.map(
                decide_clusters, ClusterSpec(store, stars, self.keep), enumerate(star_ranges)
            )
        ]
        self.verdicts = Verdicts([verdict_file(str(work), task) for task in range(len(star_ranges))])
        self.removed = sum(removed for removed, _ in decided)
        self.clusters_with_duplicates = sum(clusters for _, clusters in decided)
        self.quarantined = np.concatenate(quarantined) if quarantined else np.zeros(0, np.int64)
        self.seconds["clusters"] = time.perf_counter() - mark
        self.store, self.partitions, self.rounds = store, len(ranges), stars.number + 1
        self.sources = sources
        self.starts = np.concatenate([[0], np.cumsum(source_rows)]).astype(np.int64)
        self.offset = 0

    def split(
        self, batch: pa.RecordBatch, source: Source, judged: Any = None
    ) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        start, stop = self.offset, self.offset + len(batch)
        self.offset = stop
        found = self.verdicts.between(start, stop)
        local = found.rows - start
        quarantined = pc.is_null(batch.column(self.text_field)).to_numpy(zero_copy_only=False)
        keep = ~quarantined
        keep[local] &= found.keep
        cluster, duplicate_of = np.arange(start, stop), np.full(len(batch), -1)
        similarity = np.ones(len(batch))
        cluster[local], duplicate_of[local], similarity[local] = (
            found.cluster,
            found.duplicate_of,
            found.similarity,
        )
        dropped = ~keep
        is_null = quarantined[dropped]
        names = self._names(duplicate_of[dropped])
        similar = similarity[dropped]
        null_rows = pa.array(is_null)
        columns = {
            "cluster_id": pa.array(cluster[dropped], pa.int64()),
            "duplicate_of": pc.if_else(null_rows, pa.scalar(None, pa.string()), names),
            "similarity": pa.array(similar, pa.float32(), mask=is_null),
            "reason": pc.if_else(null_rows, f"null {self.text_field}", "near-duplicate"),
            "detail": pc.if_else(
                null_rows,
                pa.scalar(None, pa.string()),
                pc.binary_join_element_wise(
                    "near-duplicate of ", names, " (estimated Jaccard ", two_decimals(similar), ")", ""
                ),
            ),
        }
        removed = batch.filter(pa.array(dropped))
        for name, values in columns.items():
            removed = removed.append_column(name, values)
        return (batch if keep.all() else batch.filter(pa.array(keep))), removed  # no copy of a clean batch

    def _names(self, rows: np.ndarray) -> pa.Array:
        """Global row numbers -> `file:row`, the names a removed row's `duplicate_of` points to (any
        name for -1, a quarantined row's, which the caller masks)."""
        located = self._locate(np.maximum(rows, 0))
        files = pa.array([s.path.name for s in self.sources], pa.string())
        return pc.binary_join_element_wise(
            files.take(pa.array(located[:, 0])), pa.array(located[:, 1]).cast(pa.string()), ":"
        )

    def _locate(self, rows: np.ndarray) -> np.ndarray:
        """Global row numbers -> (input number, row in that input) pairs."""
        owners = np.searchsorted(self.starts, rows, side="right") - 1
        return np.stack([owners, rows - self.starts[owners]], axis=1)

    def extra_files(self, directory: OutputDirectory, run: int) -> list[str]:
        self.index_name = f"index-r{run}.npz"
        quarantined = self.quarantined

        def kept_by_chunk() -> Iterator[np.ndarray]:
            for low, high in itertools.pairwise(self.store.bases.tolist()):
                found = self.verdicts.between(low, high)
                kept = np.ones(high - low, bool)
                kept[found.rows[~found.keep] - low] = False
                kept[
                    quarantined[np.searchsorted(quarantined, low) : np.searchsorted(quarantined, high)] - low
                ] = False
                yield low + np.flatnonzero(kept)

        return save_index(
            directory.path / self.index_name,
            self.store.signatures,
            int(self.store.bases[-1]) - self.removed - len(quarantined),
            kept_by_chunk,
            self._locate,
            [s.path.name for s in self.sources],
            self.ngram,
        )

    def summary(self) -> dict[str, Any]:
        return {
            "parameters": {"text_field": self.text_field, "threshold": self.threshold, "num_perm": self.num_perm,
                           "ngram": self.ngram, "keep": self.keep, "backend": self.backend, "exact": self.exact,
                           "partition_mb": self.partition_mb},
            "removed": self.removed,
            "quarantined": len(self.quarantined),
            "clusters_with_duplicates": self.clusters_with_duplicates,
            "index": self.index_name,
            "partitions_grouped": self.partitions,
            "component_rounds": self.rounds,
            "seconds_by_pass": {k: round(v, 3) for k, v in self.seconds.items()},
        }  # fmt: skip


def _numbered(
    sources: list[Source], batch_rows: int
) -> Iterator[tuple[int, pa.RecordBatch, tuple[int, int, pa.Array]]]:
    """(source number, batch, (chunk number, first global row, texts)) for every batch of every source;
    the texts copied out of the file's buffers (a slice would ship them whole to a cluster)."""
    chunk = base = 0
    for number, source in enumerate(sources):
        for batch in source.batches(batch_rows):
            yield number, batch, (chunk, base, compact(batch, [source.text_field]).column(0))
            chunk, base = chunk + 1, base + len(batch)


@dataclass(frozen=True)
class SignSpec:
    work: str
    signatures: SignatureFile
    ngram: int
    backend: str
    bands: int
    rows: int
    exact: bool


def sign_chunk(spec: SignSpec, chunk: tuple[int, int, pa.Array]) -> np.ndarray:
    """Sign one batch; write its signatures at its rows of the signature file, its shingle sets and its
    band keys, sorted by fine partition, to `work`. Returns the number of band keys per fine partition."""
    number, base, texts = chunk
    work = Path(spec.work)
    num_perm = spec.signatures.num_perm
    signatures = minhash_signatures(texts, num_perm=num_perm, ngram=spec.ngram, backend=spec.backend)
    spec.signatures.write(base, signatures)
    if spec.exact:
        hashes, shingle_offsets = shingle_sets(*shingle_hashes(texts, ngram=spec.ngram))
        save_whole(work / f"shingles-{number}.npy", hashes)
        save_whole(work / f"shingle-offsets-{number}.npy", shingle_offsets)
    records, counts = band_records(signatures, base, spec.bands, spec.rows, FINE_PARTITIONS)
    save_whole(work / f"bands-{number}.npy", records)
    return counts


@dataclass(frozen=True)
class ChunkStore:
    """Signatures (and shingle sets, and priorities) of the signed batches, read back by global row
    number."""

    work: str
    signatures: SignatureFile
    bases: np.ndarray  # first global row of each chunk, and the total at the end
    exact: bool

    def similarity(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Estimated (or exact) Jaccard of row pairs, reading a bounded number of rows at a time."""
        out = np.empty(len(first))
        for start in range(0, len(first), PAIRS_PER_STEP):
            a, b = first[start : start + PAIRS_PER_STEP], second[start : start + PAIRS_PER_STEP]
            rows, local = np.unique(np.concatenate([a, b]), return_inverse=True)
            ia, ib = local[: len(a)], local[len(a) :]
            if self.exact:
                out[start : start + len(a)] = exact_jaccard_pairs(*self._sets(rows), ia, ib)
            else:
                out[start : start + len(a)] = jaccard_pairs(self.signatures.read(rows), ia, ib)
        return out

    def _chunks_of(self, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(chunk, positions in `rows`, rows local to the chunk) for sorted global `rows`."""
        bounds = np.searchsorted(rows, self.bases)
        for chunk in np.flatnonzero(bounds[1:] > bounds[:-1]):
            where = np.arange(bounds[chunk], bounds[chunk + 1])
            yield int(chunk), where, rows[where] - self.bases[chunk]

    def gather(self, name: str, rows: np.ndarray) -> np.ndarray:
        """The rows (sorted) of the per-batch arrays `NAME-CHUNK.npy` (`priority`)."""
        out: np.ndarray | None = None
        for chunk, where, local in self._chunks_of(rows):
            stored = np.load(Path(self.work) / f"{name}-{chunk}.npy", mmap_mode="r")
            if out is None:
                out = np.empty((len(rows), *stored.shape[1:]), stored.dtype)
            out[where] = stored[local]
            del stored  # unmapped: pages read stay out of this process's memory
        if out is None:
            raise ValueError("gather needs at least one row")  # its shape and type come from a file
        return out

    def _sets(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pieces: list[tuple[np.ndarray, np.ndarray]] = []
        for chunk, where, local in self._chunks_of(rows):
            hashes = np.load(Path(self.work) / f"shingles-{chunk}.npy", mmap_mode="r")
            offsets = np.load(Path(self.work) / f"shingle-offsets-{chunk}.npy")
            starts, ends = offsets[local], offsets[local + 1]
            lengths = ends - starts
            flat = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + np.arange(
                lengths.sum()
            )
            pieces.append((where, lengths, np.asarray(hashes[flat])))
            del hashes
        lengths = np.zeros(len(rows), np.int64)
        for where, piece_lengths, _ in pieces:
            lengths[where] = piece_lengths
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        hashes = np.empty(offsets[-1], np.uint32)
        for where, piece_lengths, values in pieces:
            targets = np.repeat(offsets[where], piece_lengths) + (
                np.arange(len(values))
                - np.repeat(np.concatenate([[0], np.cumsum(piece_lengths)[:-1]]), piece_lengths)
            )
            hashes[targets] = values
        return hashes, offsets


@dataclass(frozen=True)
class GroupSpec:
    store: ChunkStore
    table: np.ndarray  # where each fine partition starts in each chunk's band file
    threshold: float


def group_partitions(spec: GroupSpec, item: tuple[int, tuple[int, int]]) -> np.ndarray:
    """The confirmed near-duplicate pairs among the buckets of fine partitions [span): band keys read
    from every chunk, bucket neighbours paired, pairs kept whose similarity reaches the threshold.
    Their components are written as the first connected-components round's input; returns its count
    per partition."""
    task, span = item
    work = spec.store.work
    files = [Path(work) / f"bands-{chunk}.npy" for chunk in range(len(spec.table))]
    first, second = bucket_pairs(read_span(files, spec.table, span, np.uint64))
    first, second = sorted_edges(first, second)
    confirmed = spec.store.similarity(first, second) >= spec.threshold
    # The range's own components as stars around their smallest rows: the same components in fewer
    # edges, and where a cluster's pairs all fall in one range it is finished before the first round.
    rows, local = np.unique(np.concatenate([first[confirmed], second[confirmed]]), return_inverse=True)
    centre = union_find(len(rows), local[: len(local) // 2], local[len(local) // 2 :])
    leaf = centre != np.arange(len(rows))
    return save_edges(work, 0, task, rows[leaf], rows[centre[leaf]], both_ways=True)


def two_decimals(values: np.ndarray) -> pa.Array:
    """`f"{value:.2f}"` of every value, formatted once per distinct value (a batch's similarities are
    a few hundred distinct fractions)."""
    distinct_values, positions = np.unique(values, return_inverse=True)
    return pa.array([f"{value:.2f}" for value in distinct_values.tolist()], pa.string()).take(positions)


def _priority(batch: pa.RecordBatch, keep: str, text_field: str, path: object) -> np.ndarray:
    if keep == "longest":
        return pc.fill_null(pc.utf8_length(batch.column(text_field)), 0).to_numpy().astype(np.float64)
    column = keep.split(":", 1)[1]  # present: the skeleton checked every input's fields
    try:
        scores = pc.cast(batch.column(column), pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SynthkilnError(
            f"{path}: field '{column}' (from --keep {keep}) must hold numbers; it holds "
            f"{batch.schema.field(column).type}: {str(exc).splitlines()[0]}"
        ) from None
    return pc.fill_null(scores, -np.inf).to_numpy()


@dataclass(frozen=True)
class Duplicates:
    """The clusters of the rows that have a confirmed near-duplicate, by global row number; every other
    row is a cluster of its own and kept."""

    rows: np.ndarray  # sorted
    cluster: np.ndarray  # the cluster's smallest row
    keep: np.ndarray  # the row kept for its cluster
    duplicate_of: np.ndarray  # the kept row of the cluster, -1 where kept
    similarity: np.ndarray  # to the kept row, 1.0 where kept


VERDICT = np.dtype(
    [("row", np.int64), ("cluster", np.int64), ("duplicate_of", np.int64), ("similarity", np.float64)]
)


def verdict_file(work: str, task: int) -> Path:
    return Path(work) / f"verdict-{task}.npy"


@dataclass(frozen=True)
class ClusterSpec:
    store: ChunkStore
    stars: Round  # the connected-components round whose input is the finished stars
    keep: str


def decide_clusters(spec: ClusterSpec, item: tuple[int, tuple[int, int]]) -> tuple[int, int]:
    """The clusters whose smallest rows fall in fine partitions [span): the row each keeps (highest
    priority, read back for these rows only, then lowest row, as `cluster_duplicates` decides on the
    whole corpus) and every other member's similarity to it, written by row to this task's verdict
    file. Returns the rows removed and the clusters decided."""
    task, span = item
    rows, centre = star_members(*spec.stars.edges(span))
    by_order = spec.keep == "first" or not len(rows)  # no priorities to read: lowest row wins
    priority = np.zeros(len(rows)) if by_order else spec.store.gather("priority", rows)
    keeper = keepers(np.searchsorted(rows, centre), priority)
    kept = keeper == np.arange(len(rows))
    dropped = np.flatnonzero(~kept)
    verdicts = np.empty(len(rows), VERDICT)
    verdicts["row"], verdicts["cluster"] = rows, centre
    verdicts["duplicate_of"] = np.where(kept, -1, rows[keeper])
    verdicts["similarity"] = 1.0
    verdicts["similarity"][dropped] = spec.store.similarity(rows[dropped], rows[keeper[dropped]])
    save_whole(verdict_file(spec.store.work, task), verdicts)
    return len(dropped), int(kept.sum())


@dataclass(frozen=True)
class Verdicts:
    """The verdict files of every cluster-deciding task, read one range of rows at a time."""

    files: list[Path]

    def between(self, start: int, stop: int) -> Duplicates:
        pieces = []
        for path in self.files:
            stored = np.load(path, mmap_mode="r")
            low, high = np.searchsorted(stored["row"], [start, stop])
            pieces.append(np.array(stored[low:high]))
            del stored
        found = np.concatenate(pieces) if pieces else np.zeros(0, VERDICT)
        found = found[np.argsort(found["row"], kind="stable")]
        keep = found["duplicate_of"] == -1
        return Duplicates(found["row"], found["cluster"], keep, found["duplicate_of"], found["similarity"])
