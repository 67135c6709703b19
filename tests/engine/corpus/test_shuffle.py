import itertools
from pathlib import Path

import numpy as np

from synthkiln.engine.corpus.shuffle import (
    FINE_PARTITIONS,
    RECORD_BYTES,
    offsets,
    read_span,
    save_by_row,
    spans,
)


def test_partition_ranges_give_every_worker_one() -> None:
    counts = np.full((3, FINE_PARTITIONS), 640)  # 3 batches, 30 MB of records in all
    table = offsets(list(counts))
    assert spans(table, 256, workers=1) == [(0, FINE_PARTITIONS)]  # one range fits the budget
    for workers in (2, 8):
        ranges = spans(table, 256, workers)
        assert len(ranges) == workers and ranges[0][0] == 0 and ranges[-1][1] == FINE_PARTITIONS
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))  # consecutive, none skipped
    assert counts.sum() * RECORD_BYTES == 30 << 20
    assert len(spans(table, 10, workers=1)) == 4  # the budget still caps a range: 341 partitions each


def test_each_range_reads_its_rows_records_from_every_producer(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    produced = [rng.integers(0, 5000, size=(n, 2)) for n in (700, 0, 1300)]
    files = [tmp_path / f"p{i}.npy" for i in range(3)]
    table = offsets([save_by_row(f, p[:, 0], p[:, 1]) for f, p in zip(files, produced, strict=True)])
    ranges = [(0, 100), (100, 101), (101, 700), (700, FINE_PARTITIONS)]
    read = [read_span(files, table, r, np.int64) for r in ranges]
    everything = np.concatenate(produced)
    assert sum(len(r) for r in read) == len(everything) == 2000
    key = everything[:, 0] * 5000 + everything[:, 1]
    assert sorted(np.concatenate([r[:, 0] * 5000 + r[:, 1] for r in read]).tolist()) == sorted(key.tolist())
    owners = [set(r[:, 0].tolist()) for r in read if len(r)]
    assert len(owners) >= 3  # rows spread over the ranges, and no row in two of them
    assert all(not (a & b) for a, b in itertools.combinations(owners, 2))
