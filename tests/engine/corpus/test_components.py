from pathlib import Path

import numpy as np

from synthkiln.engine.corpus.components import Round, connected_components, save_edges
from synthkiln.engine.corpus.shuffle import offsets
from synthkiln.engine.executor import LocalExecutor
from synthkiln.kernels.components import star_members
from synthkiln.kernels.lsh import union_find


class RetriedExecutor(LocalExecutor):
    """Runs every task twice, as Ray does when a node dies after a task wrote its file but before its
    result came back: the retry writes the same file again."""

    def map(self, fn, shared, items, payload=lambda item: item, gpus=0.0):
        for item in items:
            fn(shared, payload(item))  # the attempt whose result was lost with its node
            yield item, fn(shared, payload(item))


def run_rounds(
    tmp_path: Path,
    first: np.ndarray,
    second: np.ndarray,
    producers: int,
    workers: int,
    executor: LocalExecutor | None = None,
):
    """The edges written by `producers` tasks, as dedup's grouping writes them, then the rounds."""
    pieces = np.array_split(np.arange(len(first)), producers)
    counts = [
        save_edges(str(tmp_path), 0, t, first[p], second[p], both_ways=True) for t, p in enumerate(pieces)
    ]
    executor = executor or LocalExecutor()
    executor.workers = workers  # a cluster's number of ranges, run here one after another
    stars, ranges = connected_components(executor, Round(str(tmp_path), 0, offsets(counts)), partition_mb=256)
    found = [star_members(*stars.edges(span)) for span in ranges]
    return stars, ranges, found


def test_rounds_over_partitioned_files_find_the_components(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    chain = rng.permutation(np.arange(10_000, 13_000))  # a component many rounds deep
    first = np.concatenate([rng.integers(0, 10_000, 6000), chain[:-1]])
    second = np.concatenate([rng.integers(0, 10_000, 6000), chain[1:]])
    first, second = first[first != second], second[first != second]
    stars, ranges, found = run_rounds(tmp_path, first, second, producers=3, workers=6)
    assert len(ranges) >= 6 and stars.number >= 4  # partitioned, and several rounds deep
    members = np.concatenate([m for m, _ in found])
    centres = np.concatenate([c for _, c in found])
    order = np.argsort(members)
    reference = union_find(13_000, first, second)
    np.testing.assert_array_equal(members[order], np.unique(np.concatenate([first, second])))
    np.testing.assert_array_equal(centres[order], reference[members[order]])
    assert len(np.unique(members)) == len(members)  # each star read by the one range holding its centre
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(f.name for f in stars.files())  # earlier rounds' files removed as they went


def test_no_edges_no_rounds(tmp_path: Path) -> None:
    empty = np.zeros(0, np.int64)
    stars, ranges, found = run_rounds(tmp_path, empty, empty, producers=2, workers=2)
    assert stars.number == 0 and ranges == [] and found == []


def test_a_round_task_run_again_changes_nothing(tmp_path: Path) -> None:
    """A task retried after its node died (its file possibly written already) writes the same file, so
    the rounds end in the same stars, byte for byte."""
    rng = np.random.default_rng(11)
    chain = rng.permutation(np.arange(3000, 5000))
    first = np.concatenate([rng.integers(0, 3000, 2000), chain[:-1]])
    second = np.concatenate([rng.integers(0, 3000, 2000), chain[1:]])
    first, second = first[first != second], second[first != second]
    (tmp_path / "once").mkdir()
    (tmp_path / "twice").mkdir()
    once, _, _ = run_rounds(tmp_path / "once", first, second, producers=3, workers=4)
    twice, _, found = run_rounds(
        tmp_path / "twice", first, second, producers=3, workers=4, executor=RetriedExecutor()
    )
    assert once.number == twice.number >= 3
    assert [f.read_bytes() for f in once.files()] == [f.read_bytes() for f in twice.files()]
    members = np.concatenate([m for m, _ in found])
    centres = np.concatenate([c for _, c in found])
    np.testing.assert_array_equal(centres, union_find(5000, first, second)[members])
