from __future__ import annotations

import itertools
import json
import random

import numba
import numpy as np
import pytest

from synthkiln.kernels.lsh import (
    StreamingIndex,
    band_keys,
    band_records,
    bucket_pairs,
    candidate_pairs,
    cluster_duplicates,
    optimal_bands,
    union_find,
)
from synthkiln.kernels.minhash import EMPTY, minhash_signatures


@pytest.fixture(scope="module")
def corpus(gsm8k_dir) -> tuple[list[str], list[int]]:
    """Real GSM8K text with planted near-duplicate clusters (light word edits) and their cluster ids."""
    rows = [json.loads(line) for line in (gsm8k_dir / "train.jsonl").read_text().splitlines()[:300]]
    rng = random.Random(1)
    texts, truth = [], []
    for index, row in enumerate(rows):
        base = row["question"] + " " + row["answer"]
        texts.append(base)
        truth.append(index)
        if index % 3 == 0:
            for _ in range(rng.choice([1, 2, 3])):
                words = base.split()
                words[rng.randrange(len(words))] = "zebra"
                texts.append(" ".join(words))
                truth.append(index)
    order = list(range(len(texts)))
    rng.shuffle(order)
    return [texts[i] for i in order], [truth[i] for i in order]


def test_optimal_bands_tracks_the_threshold() -> None:
    low_bands, low_rows = optimal_bands(0.5, 128)
    high_bands, high_rows = optimal_bands(0.9, 128)
    assert low_bands * low_rows <= 128 and high_bands * high_rows <= 128
    assert high_rows > low_rows  # stricter threshold: longer bands
    with pytest.raises(ValueError):
        optimal_bands(1.5, 128)


def test_union_find_clusters() -> None:
    clusters = union_find(6, np.array([0, 3, 4]), np.array([1, 4, 5]))
    assert clusters.tolist() == [0, 0, 2, 3, 3, 3]


def test_lsh_finds_planted_clusters(corpus) -> None:
    texts, truth = corpus
    signatures = minhash_signatures(texts)
    lengths = np.array([len(t) for t in texts])
    clusters = cluster_duplicates(signatures, threshold=0.7, priority=lengths)
    truth = np.array(truth)
    found_pairs = clusters.cluster[:, None] == clusters.cluster[None, :]
    true_pairs = truth[:, None] == truth[None, :]
    upper = np.triu(np.ones_like(true_pairs), k=1)
    tp = (found_pairs & true_pairs & upper).sum()
    assert tp / (true_pairs & upper).sum() >= 0.95  # recall
    assert tp / (found_pairs & upper).sum() >= 0.95  # precision
    # An edit can push a short document's true similarity below the threshold: allow a few misses.
    assert 0 <= clusters.keep.sum() - len(set(truth.tolist())) <= 0.02 * len(truth)
    for index in np.flatnonzero(~clusters.keep):  # the longest of each cluster is kept
        assert lengths[clusters.duplicate_of[index]] >= lengths[index]
        # Clusters are transitive (a~b, b~c), so the kept one may be a little further than the threshold.
        keeper = clusters.duplicate_of[index]
        assert clusters.similarity[index] == (signatures[index] == signatures[keeper]).mean() > 0.5


def test_streaming_index_rejects_what_it_has_seen(corpus) -> None:
    texts, truth = corpus
    signatures = minhash_signatures(texts)
    index = StreamingIndex(num_perm=128, threshold=0.7)
    kept_truth: list[int] = []
    for start in range(0, len(texts), 37):
        duplicate_of, similarity = index.add(signatures[start : start + 37])
        for row, target in enumerate(duplicate_of.tolist()):
            if target < 0:
                kept_truth.append(truth[start + row])
            else:
                assert kept_truth[target] == truth[start + row]  # it duplicates a document of its cluster
                assert similarity[row] >= 0.7
    assert len(index) == len(kept_truth)
    # Streaming is not transitive: two edits of one text may both survive when they differ enough.
    assert 0 <= len(kept_truth) - len(set(truth)) <= 0.05 * len(truth)
    agreement = (index.signatures[:, None, :] == index.signatures[None, :, :]).mean(axis=2)
    assert (np.triu(agreement, k=1) >= 0.7).sum() <= 0.02 * len(index)  # LSH may miss pairs near 0.7
    empty = minhash_signatures(["", ""])
    assert (index.add(empty)[0] == -1).all() and len(index) == len(kept_truth)


def test_streaming_index_compares_every_owner_of_a_bucket() -> None:
    """Two accepted documents share band 0's key, only the second is similar to a new one: the lookup
    must reach past the bucket's first owner (the dissimilar one) to find the duplicate."""
    rng = np.random.default_rng(7)
    shared, own_a, own_b = (rng.integers(0, 2**31, size=8, dtype=np.uint32) for _ in range(3))
    edited_b = own_b.copy()
    edited_b[0] += 1  # band 1 of the new document matches no one: band 0 is its only hit
    signatures = np.stack([np.concatenate([shared, own]) for own in (own_a, own_b, edited_b)])
    keys = band_keys(signatures, 2, 8)
    assert keys[0, 0] == keys[0, 1] == keys[0, 2]
    assert len({keys[1, 0], keys[1, 1], keys[1, 2]}) == 3
    index = StreamingIndex(num_perm=16, threshold=0.8, bands=2, rows=8)
    assert index.add(signatures[:2])[0].tolist() == [-1, -1]  # 8 of 16 agree: 0.5, both accepted
    duplicate_of, similarity = index.add(signatures[2:])
    assert duplicate_of.tolist() == [1]
    assert similarity.tolist() == [15 / 16]
    assert len(index) == 2


def test_streaming_index_grows_and_any_batching_decides_alike() -> None:
    """20,000 documents outgrow the initial capacities several times; copies (15 of 16 values kept)
    still find their originals, whether fed in steps of 64, all at once or one row at a time."""
    rng = np.random.default_rng(3)
    originals = rng.integers(0, 2**31, size=(20_000, 16), dtype=np.uint32)
    sources = rng.choice(len(originals), size=2_000, replace=False)
    copies = originals[sources].copy()
    copies[:, 15] += 1
    signatures = np.concatenate([originals, copies])

    def run(step: int) -> tuple[StreamingIndex, np.ndarray, np.ndarray]:
        index = StreamingIndex(num_perm=16, threshold=0.8, bands=2, rows=8)
        results = [index.add(signatures[start : start + step]) for start in range(0, len(signatures), step)]
        return index, np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])

    index, duplicate_of, similarity = run(64)
    assert len(index) == len(originals)
    assert np.array_equal(index.signatures, originals)
    assert np.array_equal(duplicate_of, np.concatenate([np.full(len(originals), -1), sources]))
    assert np.array_equal(similarity[len(originals) :], np.full(len(sources), 15 / 16))
    for step in (len(signatures), 1):
        _, other_duplicate_of, other_similarity = run(step)
        assert np.array_equal(other_duplicate_of, duplicate_of)
        assert np.array_equal(other_similarity, similarity)


def test_streaming_in_steps_keeps_what_batch_clustering_keeps(gsm8k_dir) -> None:
    """Steps of 64 through the streaming index keep the same rows as `cluster_duplicates` with the
    keep-first policy (what `synthkiln dedup --keep first` runs), and point the same rows at them.

    The two agree only where clusters are cliques: batch clusters are transitive (a~b and b~c drop c
    even when c is not similar to a) and join only neighbours in a band bucket, where streaming drops
    a row only for an accepted row it is similar to itself. So every copy replaces the same word of
    its base with a different one: each copy is as similar to the other copies as to the base
    (5-gram exact Jaccard >= 0.92 on texts of 120+ words), and distinct GSM8K problems are far apart.
    Rows are shuffled, so a copy often comes before its base and is the one kept.
    """
    lines = (gsm8k_dir / "train.jsonl").read_text().splitlines()
    texts = [t for t in (" ".join(json.loads(line).values()) for line in lines) if len(t.split()) >= 120]
    rng = random.Random(11)
    bases = texts[:300]
    documents, truth, planted = list(bases), list(range(len(bases))), 0
    for base_index in range(0, len(bases), 3):
        words = bases[base_index].split()
        position = rng.randrange(len(words))
        for replacement in ["zebra", "quartz", "violin"][: rng.choice([1, 2, 3])]:
            documents.append(" ".join([*words[:position], replacement, *words[position + 1 :]]))
            truth.append(base_index)
            planted += 1
    order = list(range(len(documents)))
    rng.shuffle(order)
    documents, truth = [documents[i] for i in order], np.array([truth[i] for i in order])
    signatures = minhash_signatures(documents)

    batch = cluster_duplicates(signatures, threshold=0.8)
    index = StreamingIndex(num_perm=128, threshold=0.8)
    duplicate_of = np.concatenate(
        [index.add(signatures[start : start + 64])[0] for start in range(0, len(signatures), 64)]
    )
    streamed_keep = duplicate_of < 0
    assert planted > 100
    assert (~batch.keep).sum() == planted
    assert (~streamed_keep).sum() == planted
    assert np.array_equal(streamed_keep, batch.keep)
    accepted_rows = np.flatnonzero(streamed_keep)
    dropped = np.flatnonzero(~streamed_keep)
    assert np.array_equal(accepted_rows[duplicate_of[dropped]], batch.duplicate_of[dropped])
    assert np.array_equal(truth[batch.duplicate_of[dropped]], truth[dropped])


def test_bucket_pairs_are_neighbours_in_each_bucket(corpus) -> None:
    """Against buckets built with Python dicts: per band, rows sharing a key, in row order, each paired
    with the next; the partitioned records of `band_records` hold every band key once."""
    texts, _ = corpus
    signatures = minhash_signatures(texts)
    signatures[5] = EMPTY  # an empty document is in no bucket
    bands, rows = optimal_bands(0.8, 128)
    keys = band_keys(signatures, bands, rows)
    expected = set()
    for band in range(bands):
        buckets: dict[int, list[int]] = {}
        for row in range(len(texts)):
            if row != 5:
                buckets.setdefault(int(keys[band, row]), []).append(row)
        expected |= {(a, b) for members in buckets.values() for a, b in itertools.pairwise(members)}
    assert len(expected) > 100  # the planted clusters share buckets

    valid = np.ones(len(texts), bool)
    valid[5] = False
    first, second = candidate_pairs(keys, valid)
    assert set(zip(first.tolist(), second.tolist(), strict=True)) == expected

    records, counts = band_records(signatures, 1000, bands, rows, 16)
    assert counts.sum() == len(records) == bands * (len(texts) - 1)
    stored = {(int(k), int(t)) for k, t in records}
    assert stored == {
        (int(keys[band, row]), band << 56 | (1000 + row))
        for band in range(bands)
        for row in range(len(texts))
        if row != 5
    }
    partitions = ((records[:, 0] >> np.uint64(32)) % np.uint64(16)).astype(np.int64)
    row, band = (records[:, 1] & np.uint64((1 << 56) - 1)).astype(np.int64), records[:, 1] >> np.uint64(56)
    place = partitions * 10**9 + row * bands + band.astype(np.int64)
    assert (np.diff(place) > 0).all()  # sorted by partition, then row and band within one
    assert np.array_equal(np.bincount(partitions, minlength=16), counts)
    threads = numba.get_num_threads()
    assert threads >= 2, "the records above were placed on one thread: nothing to compare"
    numba.set_num_threads(1)  # the records are placed a block at a time: the same on any number of cores
    try:
        one_core = band_records(signatures, 1000, bands, rows, 16)
    finally:
        numba.set_num_threads(threads)
    assert np.array_equal(one_core[0], records) and np.array_equal(one_core[1], counts)
    for few in (signatures[:1], signatures[5:6], signatures[:3]):  # fewer records than blocks, or none
        some, per_partition = band_records(few, 0, bands, rows, 16)
        expected_total = bands * int((few != EMPTY).any(axis=1).sum())
        assert len(some) == per_partition.sum() == expected_total
    shifted = {(a + 1000, b + 1000) for a, b in expected}
    assert set(zip(*(x.tolist() for x in bucket_pairs(records)), strict=True)) == shifted
