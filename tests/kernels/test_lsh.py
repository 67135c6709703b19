from __future__ import annotations

import json
import random

import numpy as np
import pytest

from synthkiln.kernels.lsh import StreamingIndex, cluster_duplicates, optimal_bands, union_find
from synthkiln.kernels.minhash import minhash_signatures


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
