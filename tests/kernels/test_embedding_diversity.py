"""Embedding diversity kernels against plain computations on hand-made matrices, and the reservoir."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from synthkiln.kernels.embedding_diversity import (
    Reservoir,
    cluster_coverage,
    embedding_spread,
    kmeans,
    vendi_score,
)


def random_unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def pairwise_spread(rows: np.ndarray) -> float:
    """Mean of 1 - cos over the pairs i < j, one pair at a time."""
    distances = [
        1 - float(np.dot(a, b)) / (float(np.linalg.norm(a)) * float(np.linalg.norm(b)))
        for a, b in itertools.combinations(rows.astype(np.float64), 2)
    ]
    return sum(distances) / len(distances)


def full_vendi(rows: np.ndarray) -> float:
    """Vendi from the whole n x n similarity matrix, as in the paper."""
    unit = rows.astype(np.float64) / np.linalg.norm(rows.astype(np.float64), axis=1, keepdims=True)
    eigenvalues = np.linalg.eigvalsh(unit @ unit.T / len(unit))
    return math.exp(-sum(value * math.log(value) for value in eigenvalues if value > 1e-12))


def blobs(centres: list[int], sizes: list[int], d: int, noise: float, seed: int) -> np.ndarray:
    """Rows around the one-hot axes `centres`, `sizes` rows each, with Gaussian `noise`."""
    rng = np.random.default_rng(seed)
    parts = []
    for axis, size in zip(centres, sizes, strict=True):
        part = np.zeros((size, d))
        part[:, axis] = 1.0
        parts.append(part + noise * rng.normal(size=(size, d)))
    return np.concatenate(parts).astype(np.float32)


def test_identical_rows_have_no_spread_and_one_effective_item() -> None:
    rows = np.tile(random_unit_rows(1, 16, seed=3), (40, 1))
    assert embedding_spread(rows) == pytest.approx(0.0, abs=1e-12)
    assert vendi_score(rows) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("count", [1, 5, 12])
def test_orthogonal_rows_are_count_items(count: int) -> None:
    assert vendi_score(np.eye(count, 12, dtype=np.float32)) == pytest.approx(count, rel=1e-9)


@pytest.mark.parametrize("count", [2, 5, 12])
def test_orthogonal_rows_are_at_distance_one(count: int) -> None:
    assert embedding_spread(np.eye(count, 12, dtype=np.float32)) == pytest.approx(1.0, abs=1e-12)


def test_spread_and_vendi_of_fewer_than_two_rows() -> None:
    assert embedding_spread(np.eye(1, 8)) == 0.0
    assert embedding_spread(np.zeros((0, 8))) == 0.0
    assert vendi_score(np.zeros((0, 8))) == 0.0


@pytest.mark.parametrize(("n", "d"), [(7, 32), (50, 8), (120, 16)])
def test_spread_equals_the_pairwise_mean(n: int, d: int) -> None:
    rows = random_unit_rows(n, d, seed=n)
    assert embedding_spread(rows) == pytest.approx(pairwise_spread(rows), abs=1e-9)


def test_spread_is_a_cosine_distance_whatever_the_norms() -> None:
    rows = random_unit_rows(30, 8, seed=1)
    scaled = rows * np.random.default_rng(2).uniform(0.1, 10, size=(30, 1)).astype(np.float32)
    assert embedding_spread(scaled) == pytest.approx(pairwise_spread(rows), abs=1e-6)
    assert vendi_score(scaled) == pytest.approx(vendi_score(rows), rel=1e-6)


@pytest.mark.parametrize(("n", "d"), [(7, 32), (32, 32), (50, 8), (300, 16)])
def test_vendi_equals_the_full_similarity_matrix(n: int, d: int) -> None:
    # n > d takes the d x d Gram path; n <= d the n x n one
    rows = random_unit_rows(n, d, seed=n + d)
    assert vendi_score(rows) == pytest.approx(full_vendi(rows), rel=1e-9)


def test_vendi_counts_the_groups_of_a_duplicated_set() -> None:
    # 3 orthogonal directions, 10 rows each: K / n has eigenvalues 1/3 (x3), so exactly 3 items
    rows = np.repeat(np.eye(3, 6), 10, axis=0)
    assert vendi_score(rows) == pytest.approx(3.0, rel=1e-9)
    assert vendi_score(rows) == pytest.approx(full_vendi(rows), rel=1e-9)


def test_a_zero_row_is_refused() -> None:
    rows = np.eye(3, 4)
    rows[1] = 0
    with pytest.raises(ValueError, match="row 1"):
        embedding_spread(rows)


def test_coverage_of_a_few_distinct_rows_is_their_share_of_k() -> None:
    # 4 distinct rows, 50 copies each: k-means++ picks each of them (the copies have distance 0), the
    # other 28 centres stay empty, so 4 of 32 clusters hold 25% each
    rows = np.repeat(random_unit_rows(4, 24, seed=5), 50, axis=0)
    assert cluster_coverage(rows, k=32) == 4 / 32
    _, labels = kmeans(rows, 32)
    assert np.bincount(labels, minlength=32).tolist().count(50) == 4


def test_coverage_counts_only_clusters_over_the_min_share() -> None:
    # 3 groups of 100 and a single row: 1/301 = 0.3% < 1%, so 3 of 4 clusters count
    rows = np.repeat(np.eye(4, 8), [100, 100, 100, 1], axis=0)
    assert cluster_coverage(rows, k=4) == 0.75
    assert cluster_coverage(rows, k=4, min_share=0.001) == 1.0


def test_tight_blobs_fill_their_clusters() -> None:
    rows = blobs([0, 3, 5, 7], [60, 40, 80, 20], d=16, noise=0.01, seed=0)
    for seed in range(5):
        _, labels = kmeans(rows, 4, seed=seed)
        assert sorted(np.bincount(labels, minlength=4).tolist()) == [20, 40, 60, 80]
        assert cluster_coverage(rows, k=4, seed=seed) == 1.0


def test_coverage_against_reference_clusters() -> None:
    # the reference has 8 tight blobs; a sample from 2 of them reaches 2 of its 8 clusters
    reference = blobs(list(range(8)), [25] * 8, d=16, noise=0.01, seed=1)
    narrow = blobs([2, 6], [30, 30], d=16, noise=0.01, seed=2)
    broad = blobs(list(range(8)), [10] * 8, d=16, noise=0.01, seed=3)
    assert cluster_coverage(narrow, k=8, reference=reference) == 2 / 8
    assert cluster_coverage(broad, k=8, reference=reference) == 1.0
    # fitted on itself, the narrow sample fills all 8 of its own clusters: no sense of scale
    assert cluster_coverage(narrow, k=8) == 1.0


def test_kmeans_is_deterministic_for_a_seed() -> None:
    rows = random_unit_rows(200, 12, seed=9)
    first_centres, first_labels = kmeans(rows, 10, seed=4)
    again_centres, again_labels = kmeans(rows, 10, seed=4)
    assert np.array_equal(first_labels, again_labels)
    assert np.array_equal(first_centres, again_centres)
    assert not np.array_equal(first_labels, kmeans(rows, 10, seed=5)[1])


def test_reservoir_keeps_everything_below_its_capacity() -> None:
    reservoir: Reservoir[int] = Reservoir(capacity=10)
    reservoir.add(list(range(4)))
    reservoir.add(list(range(4, 7)))
    assert reservoir.items == list(range(7))
    assert reservoir.indices.tolist() == list(range(7))
    assert reservoir.seen == 7


def test_reservoir_is_deterministic_for_a_seed() -> None:
    samples = []
    for seed in (0, 0, 1):
        reservoir: Reservoir[int] = Reservoir(capacity=50, seed=seed)
        reservoir.add(list(range(1_000)))
        samples.append(reservoir.items)
    assert samples[0] == samples[1]
    assert samples[0] != samples[2]


@pytest.mark.parametrize("batch_size", [1, 7, 50, 333])
def test_reservoir_does_not_depend_on_the_batches(batch_size: int) -> None:
    stream = [f"row {index}" for index in range(1_000)]
    whole: Reservoir[str] = Reservoir(capacity=50, seed=3)
    whole.add(stream)
    batched: Reservoir[str] = Reservoir(capacity=50, seed=3)
    for start in range(0, len(stream), batch_size):
        batched.add(stream[start : start + batch_size])
    assert batched.items == whole.items
    assert batched.indices.tolist() == whole.indices.tolist()
    assert len(whole) == 50
    assert [stream[index] for index in whole.indices] == whole.items


def test_reservoir_samples_uniformly() -> None:
    stream_length, capacity, seeds = 200, 20, 1_000
    kept = np.zeros(stream_length)
    means = []
    for seed in range(seeds):
        reservoir: Reservoir[int] = Reservoir(capacity=capacity, seed=seed)
        for start in range(0, stream_length, 37):
            reservoir.add(list(range(start, min(start + 37, stream_length))))
        assert len(reservoir) == capacity
        kept[reservoir.indices] += 1
        means.append(np.mean(reservoir.items))
    # each item is kept with probability 20/200: 100 of 1,000 samples, standard deviation ~9.5
    expected = seeds * capacity / stream_length
    assert abs(kept[:20].mean() - expected) < 10  # the first rows, kept at first then replaced
    assert abs(kept[-20:].mean() - expected) < 10  # the last rows, offered with small odds
    assert np.abs(kept - expected).max() < 5 * math.sqrt(expected)
    # the sample's mean is near the stream's (99.5); one sample's own deviation is ~13
    assert abs(np.mean(means) - (stream_length - 1) / 2) < 2
