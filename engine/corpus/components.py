"""Connected components of a graph no process holds: large-star and small-star rounds
(`kernels.components`) run as tasks, each round a shuffle of the edges through the scratch folder.

A round's tasks each read one range of node partitions from every file of the round before and write
one file of their own (`edges-ROUND-TASK.npy`), so a worker holds one range of edges at a time and the
driver only the counts per partition. The rounds stop when a large-star round finds a forest of stars
around each component's smallest node; that round's input is kept for the caller to read, a range at
a time, with `star_members`. Files of rounds already read are removed as the rounds go.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthkiln.engine.corpus.shuffle import offsets, read_span, save_by_row, spans
from synthkiln.engine.executor import LocalExecutor
from synthkiln.kernels.components import large_star, small_star


@dataclass(frozen=True)
class Round:
    """The edge files one round reads: `edges-NUMBER-TASK.npy` of every task of the round before."""

    work: str
    number: int
    table: np.ndarray  # where each fine partition starts in each file (`shuffle.offsets`)

    def files(self) -> list[Path]:
        return [edge_file(self.work, self.number, task) for task in range(len(self.table))]

    def edges(self, span: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        records = read_span(self.files(), self.table, span, np.int64)
        return records[:, 0], records[:, 1]


def edge_file(work: str, number: int, task: int) -> Path:
    return Path(work) / f"edges-{number}-{task}.npy"


def save_edges(
    work: str, number: int, task: int, larger: np.ndarray, smaller: np.ndarray, both_ways: bool
) -> np.ndarray:
    """A task's edges as round `number`'s input: each edge under both of its nodes (for large-star) or
    under its larger node (for small-star). Returns the count per fine partition."""
    if both_ways:
        larger, smaller = np.concatenate([larger, smaller]), np.concatenate([smaller, larger])
    return save_by_row(edge_file(work, number, task), larger, smaller)


def large_star_task(round_: Round, item: tuple[int, tuple[int, int]]) -> tuple[np.ndarray, bool]:
    task, span = item
    larger, smaller, star = large_star(*round_.edges(span))
    return save_edges(round_.work, round_.number + 1, task, larger, smaller, both_ways=False), star


def small_star_task(round_: Round, item: tuple[int, tuple[int, int]]) -> np.ndarray:
    task, span = item
    larger, smaller = small_star(*round_.edges(span))
    return save_edges(round_.work, round_.number + 1, task, larger, smaller, both_ways=True)


def connected_components(
    executor: LocalExecutor, first: Round, partition_mb: int
) -> tuple[Round, list[tuple[int, int]]]:
    """Rounds from `first` (every edge under both of its nodes) until the components are stars; returns
    the round whose input is those stars, and its partition ranges (one per task to read them)."""
    current = first
    while True:
        ranges = spans(current.table, partition_mb, executor.workers)
        results = [result for _, result in executor.map(large_star_task, current, enumerate(ranges))]
        following = Round(current.work, current.number + 1, offsets([counts for counts, _ in results]))
        if all(star for _, star in results):
            _remove(following)  # the same stars again
            return current, ranges
        _remove(current)
        ranges = spans(following.table, partition_mb, executor.workers)
        counts = [result for _, result in executor.map(small_star_task, following, enumerate(ranges))]
        _remove(following)
        current = Round(current.work, following.number + 1, offsets(counts))


def _remove(round_: Round) -> None:
    for path in round_.files():
        path.unlink()
