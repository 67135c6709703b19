from __future__ import annotations

import random
import re

import numpy as np
import pyarrow as pa
import pytest

from synthkiln.kernels.ngram_index import NgramIndex, densest_windows, ngram_hashes
from synthkiln.kernels.text import Normalization


def words(text: str) -> list[str]:
    """Reference tokenizer: the default byte table (ASCII letters/digits kept, lowercased)."""
    return re.findall(r"[a-z0-9\x80-\xff]+", text.lower().encode().decode("latin-1"))


def reference_hits(items: list[str], documents: list[str | None], n: int) -> set[tuple[int, int, int]]:
    """(document, word position, item) for every item n-gram (or whole short item) in each document."""
    grams: dict[tuple[str, ...], set[int]] = {}
    for item, text in enumerate(items):
        tokens = words(text)
        span = min(n, len(tokens))
        for i in range(len(tokens) - span + 1):
            grams.setdefault(tuple(tokens[i : i + span]), set()).add(item)
    spans = {len(g) for g in grams}
    found = set()
    for d, text in enumerate(documents):
        tokens = words(text or "")
        for span in spans:
            for i in range(len(tokens) - span + 1):
                for item in grams.get(tuple(tokens[i : i + span]), ()):
                    found.add((d, i, item))
    return found


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], list[str | None]]:
    rng = random.Random(7)
    vocabulary = [f"w{i}" for i in range(40)]  # small: n-grams repeat across items by chance
    items = [" ".join(rng.choices(vocabulary, k=rng.randint(2, 30))) for _ in range(300)]
    documents: list[str | None] = []
    for _ in range(200):
        parts = [" ".join(rng.choices(vocabulary, k=rng.randint(0, 40)))]
        if rng.random() < 0.5:
            item = rng.choice(items).split()
            start = rng.randrange(len(item))
            parts.append(", ".join(item[start : start + rng.randint(1, 12)]).upper())
        parts.append(" ".join(rng.choices(vocabulary, k=rng.randint(0, 10))))
        documents.append(" ... ".join(parts))
    documents += [None, "", "!!!"]
    return items, documents


@pytest.mark.parametrize("n", [1, 3, 5])
def test_probe_finds_exactly_the_reference_hits(corpus, n: int) -> None:
    items, documents = corpus
    hashes = ngram_hashes(items, n)
    owners = np.repeat(np.arange(len(items)), np.diff(hashes.offsets))
    index = NgramIndex.build(hashes.hashes, owners, np.minimum(hashes.words, n))
    hits = index.probe(pa.array(documents, pa.large_string()))
    found = set(zip(hits.document.tolist(), hits.position.tolist(), hits.posting.tolist(), strict=True))
    expected = reference_hits(items, documents, n)
    assert found == expected
    assert len(found) > 100  # the corpus plants many
    assert len(hits) == len(found)  # one row per (document, position, posting)


@pytest.mark.parametrize("n", [5, 13])
def test_short_texts_found_whole_through_their_prefix(corpus, n: int) -> None:
    items, documents = corpus
    hashes = ngram_hashes(items, n)
    prefixes = ngram_hashes(items, 2)
    owners = np.repeat(np.arange(len(items)), np.diff(hashes.offsets))
    short = hashes.words < n
    lengths = np.where(short, hashes.words, 0)[owners]
    first_words = prefixes.hashes[prefixes.offsets[:-1]][owners]
    index = NgramIndex.build(hashes.hashes, owners, np.array([n]), lengths, first_words, prefix_span=2)
    assert index.spans.tolist() == [n]  # one pass for every short length
    hits = index.probe(pa.array(documents, pa.large_string()))
    found = set(zip(hits.document.tolist(), hits.position.tolist(), hits.posting.tolist(), strict=True))
    assert found == reference_hits(items, documents, n)
    short_hits = short[hits.posting]
    assert short_hits.any() and np.array_equal(hits.span[short_hits], hashes.words[hits.posting[short_hits]])


def test_ngram_hashes_normalise_and_match_short_texts_whole() -> None:
    hashes = ngram_hashes(
        ["The cat, SAT on the mat!", "the cat sat on the mat", "on the mat", None, " ,. "], 3
    )
    assert hashes.words.tolist() == [6, 6, 3, 0, 0]
    assert np.array_equal(hashes.of(0), hashes.of(1))
    assert len(hashes.of(0)) == 4
    assert hashes.of(2).tolist() == hashes.of(0)[-1:].tolist()  # "on the mat" is the last trigram
    assert len(hashes.of(3)) == len(hashes.of(4)) == 0
    deleted = Normalization(delete="'")
    assert np.array_equal(
        ngram_hashes(["it's done now"], 3, deleted).hashes, ngram_hashes(["its done now"], 3, deleted).hashes
    )
    assert not np.array_equal(
        ngram_hashes(["it's done now"], 3).hashes, ngram_hashes(["its done now"], 3).hashes
    )


def test_a_key_with_several_postings_reports_each() -> None:
    hashes = ngram_hashes(["alpha beta gamma", "alpha beta gamma", "delta epsilon zeta"], 3)
    index = NgramIndex.build(hashes.hashes, np.array([10, 11, 12]), np.array([3]))
    hits = index.probe(["x alpha beta gamma y", "delta epsilon zeta", "gamma beta alpha"])
    assert sorted(zip(hits.document.tolist(), hits.posting.tolist(), strict=True)) == [
        (0, 10),
        (0, 11),
        (1, 12),
    ]
    assert hits.position[hits.document == 0].tolist() == [1, 1]


def test_index_survives_saving_as_arrays() -> None:
    hashes = ngram_hashes([f"item number {i} of many" for i in range(5000)], 4)
    owners = np.repeat(np.arange(5000), np.diff(hashes.offsets))
    index = NgramIndex.build(hashes.hashes, owners, np.array([4]))
    loaded = NgramIndex.from_arrays(index.arrays())
    hits = loaded.probe(["so item number 4321 of many indeed"])
    assert set(hits.posting.tolist()) == {4321}


def test_densest_windows_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 40, size=50)
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    positions = np.concatenate([np.sort(rng.integers(0, 200, size=s)) for s in sizes]).astype(np.int64)
    labels = rng.integers(0, 16, size=len(positions)).astype(np.int64)
    widths = rng.integers(0, 60, size=len(sizes)).astype(np.int64)
    best, first, last = densest_windows(starts, positions, labels, widths, 16)
    for g in range(len(sizes)):
        p, lab = positions[starts[g] : starts[g + 1]], labels[starts[g] : starts[g + 1]]
        expected = max(len(set(lab[(p >= p[i]) & (p <= p[i] + widths[g])])) for i in range(len(p)))
        assert best[g] == expected
        window = (p >= first[g]) & (p <= last[g])
        assert last[g] - first[g] <= widths[g] and len(set(lab[window])) == expected
