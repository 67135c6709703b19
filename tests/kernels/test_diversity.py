"""Diversity kernels against plain Python: str.split on the same normalisation, Counter, log2, zlib."""

from __future__ import annotations

import json
import math
import random
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from synthkiln.kernels.diversity import (
    STRUCTURES,
    KeyTable,
    LexicalStats,
    add_ngrams,
    filter_novel,
    novelty,
    structure_counts,
    structure_labels,
)
from synthkiln.kernels.text import Normalization


def words(text: str | None) -> list[str]:
    """The default normalisation written out: ASCII letters and digits make words (letters lowercased),
    every other ASCII character separates them, characters beyond ASCII belong to words."""
    if text is None:
        return []
    folded = "".join((c.lower() if c.isalnum() else " ") if c.isascii() else c for c in text)
    return [word for word in folded.split(" ") if word]


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def reference_summary(rows: list[str | None], opening_words: int = 5) -> dict[str, object]:
    tokenized = [words(row) for row in rows]
    expected: dict[str, object] = {}
    for n in (1, 2, 3):
        grams = [gram for tokens in tokenized for gram in ngrams(tokens, n)]
        expected[f"distinct_{n}"] = len(set(grams)) / len(grams)
    bigrams = Counter(gram for tokens in tokenized for gram in ngrams(tokens, 2))
    total = sum(bigrams.values())
    expected["ngram_entropy_2"] = -math.fsum(c / total * math.log2(c / total) for c in bigrams.values())
    raw = "\n".join(row for row in rows if row is not None).encode()
    expected["compression_ratio"] = len(zlib.compress(raw, 6)) / len(raw)
    openings = Counter(" ".join(tokens[:opening_words]) for tokens in tokenized if tokens)
    expected["opening_concentration"] = openings.most_common(1)[0][1] / sum(openings.values())
    expected["openings"] = openings
    return expected


HAND_ROWS: list[str | None] = [
    "Sure! Here is the answer: the total is 42.",
    "Sure, here is the answer: the total is 17.",
    "SURE... here IS the answer -- it's 42!",
    "Let me think. The total is 42.",
    "Let me think: 3 + 4 = 7, so the total is 7.",
    "Café au lait, naïve—test and a\xa0b stay words.",
    "Hi!",
    None,
    "",
    "...",
    "the total is 42 the total is 42",
]


def test_every_metric_equals_plain_python_on_hand_rows() -> None:
    stats = LexicalStats(top_openings=3)
    stats.update(pa.array(HAND_ROWS, pa.large_string()))
    summary = stats.summary()
    expected = reference_summary(HAND_ROWS)
    assert summary["rows"] == len(HAND_ROWS)
    assert summary["words"] == sum(len(words(row)) for row in HAND_ROWS)
    for n in (1, 2, 3):
        assert summary[f"distinct_{n}"] == expected[f"distinct_{n}"], n
    assert summary["ngram_entropy_2"] == pytest.approx(expected["ngram_entropy_2"], rel=1e-12)
    assert summary["compression_ratio"] == expected["compression_ratio"]
    assert summary["opening_concentration"] == expected["opening_concentration"]
    # Openings: "sure here is the answer" x3, "let me think the total" x1, "let me think 3 4" x1, ...
    openings = expected["openings"]
    assert openings.most_common(1) == [("sure here is the answer", 3)]
    top = summary["top_openings"]
    assert len(top) == 3
    assert top[0] == {"opening": "sure here is the answer", "rows": 3, "share": 3 / sum(openings.values())}
    assert all(openings[entry["opening"]] == entry["rows"] == 1 for entry in top[1:])


def test_a_row_shorter_than_the_opening_is_its_own_opening_and_has_no_longer_ngrams() -> None:
    stats = LexicalStats()
    stats.update(["Hi!", "hi", "Hello there"])
    summary = stats.summary()
    assert summary["top_openings"][0] == {"opening": "hi", "rows": 2, "share": 2 / 3}
    assert summary["distinct_1"] == 3 / 4  # hi, hi, hello, there
    assert summary["distinct_2"] == 1.0  # only "hello there"
    assert summary["distinct_3"] == 0.0  # no row has three words


def random_rows(seed: int, rows: int, vocabulary: int) -> list[str]:
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "su", "tor", "vel", "qua", "dri", "pen", "ab", "ox"]
    lexicon = sorted({"".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(vocabulary)})
    return [
        " ".join(rng.choices(lexicon, k=rng.randint(1, 40))).capitalize() + rng.choice([".", "!", "?", ""])
        for _ in range(rows)
    ]


def assert_same_counted_figures(left: dict[str, object], right: dict[str, object]) -> None:
    for key in ("rows", "words", "distinct_1", "distinct_2", "distinct_3", "opening_concentration"):
        assert left[key] == right[key], key
    assert left["ngram_entropy_2"] == pytest.approx(right["ngram_entropy_2"], rel=1e-12)
    assert left["top_openings"] == right["top_openings"]


def test_two_updates_and_a_merge_equal_one_update_over_all_rows() -> None:
    # Enough distinct n-grams and openings to grow every table and the opening pool past their start size.
    rows = random_rows(seed=3, rows=4_000, vocabulary=6_000) + ["Sure here is it"] * 50
    random.Random(5).shuffle(rows)
    first, second = pa.array(rows[:1_500]), pa.array(rows[1_500:])
    whole = LexicalStats()
    whole.update(pa.array(rows))
    streamed = LexicalStats()
    streamed.update(first)
    streamed.update(second)
    left, right = LexicalStats(), LexicalStats()
    left.update(first)
    right.update(second)
    left.merge(right)
    assert whole.ngrams[2].capacity > 1024
    assert whole.pool_state[1] > 1 << 16
    assert whole.top_openings()[0]["opening"] == "sure here is it"
    assert_same_counted_figures(streamed.summary(), whole.summary())
    assert_same_counted_figures(left.summary(), whole.summary())
    expected = reference_summary(rows)
    assert whole.summary()["distinct_3"] == expected["distinct_3"]
    # Compression is per update: the cumulative figure sums compressed and raw bytes over updates.
    parts = ["\n".join(part).encode() for part in (rows[:1_500], rows[1_500:])]
    compressed = sum(len(zlib.compress(part, 6)) for part in parts)
    assert streamed.summary()["compression_ratio"] == compressed / sum(len(part) for part in parts)
    assert left.summary()["compression_ratio"] == streamed.summary()["compression_ratio"]


def test_distinct_counts_are_exact_on_gsm8k_answers(gsm8k_dir: Path) -> None:
    answers = [json.loads(line)["answer"] for line in (gsm8k_dir / "train.jsonl").read_text().splitlines()]
    stats = LexicalStats()
    stats.update(pa.array(answers, pa.large_string()))
    summary = stats.summary()
    expected = reference_summary(answers)
    assert len(answers) == 7473
    assert len(stats.ngrams[2]) > 100_000  # enough distinct keys for a collision to show up if it happened
    for n in (1, 2, 3):
        assert summary[f"distinct_{n}"] == expected[f"distinct_{n}"], n
    assert summary["ngram_entropy_2"] == pytest.approx(expected["ngram_entropy_2"], rel=1e-12)
    assert summary["opening_concentration"] == expected["opening_concentration"]


def test_a_monotone_set_scores_lower_than_varied_text_on_every_metric() -> None:
    templates = ["Sure! Here is the answer. The total is {}.", "Sure! Here is the answer. The result is {}."]
    monotone = [templates[i % 2].format(i % 7) for i in range(400)]
    varied = random_rows(seed=11, rows=400, vocabulary=3_000)
    scores = {}
    for name, rows in (("monotone", monotone), ("varied", varied)):
        stats = LexicalStats()
        stats.update(rows)
        scores[name] = stats.summary()
    low, high = scores["monotone"], scores["varied"]
    for key in ("distinct_1", "distinct_2", "distinct_3", "compression_ratio"):
        assert low[key] < 0.5 * high[key], key
    assert low["ngram_entropy_2"] < high["ngram_entropy_2"] - 5
    assert low["opening_concentration"] == 1.0  # every row opens "sure here is the answer"
    assert high["opening_concentration"] < 0.05


STRUCTURE_EXAMPLES = {
    # One line of each kind is not enough for a feature: every count must reach two.
    "prose": "The **total** is 42.\n---\n- one aside\n3. one number\n| one | row |\nx = 1;\nIf you add 4:\nthat is all; done",
    "list": "Things to pack:\n- a tent\n* a stove\n  + matches\n\u2022 water",
    "numbered": "Steps:\n1. Add 4 and 3.\n2) Multiply by 6.\n10. Done.",
    "table": "| item | price |\n|------|-------|\n| tea  | 3     |",
    "code": "```python\n- not a bullet\n1. not a step\n```\nThat prints it.",
    "mixed": "1. Install it.\n2. Run:\n   - `make`\n   - `make test`",
}


def test_structure_classifier_labels_one_example_of_each_class() -> None:
    unfenced_code = "def total(xs):\n    return sum(xs)\nprint(total([1, 2]))"
    one_code_line = "x = 1;"  # code needs two code-like lines
    texts = [*STRUCTURE_EXAMPLES.values(), unfenced_code, one_code_line, None, ""]
    labels = structure_labels(pa.array(texts, pa.large_string()))
    assert labels.dtype == np.int8
    assert [STRUCTURES[label] for label in labels] == [*STRUCTURE_EXAMPLES, "code", "prose", "prose", "prose"]
    assert structure_counts(texts) == {
        "prose": 4,
        "list": 1,
        "numbered": 1,
        "table": 1,
        "code": 2,
        "mixed": 1,
    }


def reference_novelty(rows: list[str], seen: set[tuple[str, ...]], n: int) -> list[float]:
    scores = []
    for row in rows:
        tokens = words(row)
        grams = ngrams(tokens, min(n, len(tokens))) if tokens else []
        scores.append(sum(gram not in seen for gram in grams) / len(grams) if grams else 0.0)
    return scores


EARLIER = [
    "the farmer sold forty apples at the market on monday",
    "a baker bought twelve eggs and three bags of flour",
    "each bag of flour weighs two kilograms in total",
]


def test_novelty_rejects_rows_stitched_from_accepted_phrases_and_keeps_fresh_ones() -> None:
    seen = KeyTable()
    add_ngrams(seen, EARLIER)
    seen_grams = {gram for row in EARLIER for gram in ngrams(words(row), 3)}
    # Stitched where two accepted rows share two words ("of flour"): every trigram is an accepted one.
    stitched = "A baker bought twelve eggs and three bags of flour weighs two kilograms"
    # Stitched at seams no accepted row holds: only the two trigrams across the seam are new.
    seamed = "The farmer sold forty apples at the market. Each bag of flour weighs two kilograms"
    fresh = "Wind turbines convert kinetic energy into electricity for the grid"
    rows = [stitched, seamed, fresh, seamed]
    expected = reference_novelty(rows[:3], seen_grams, 3)
    assert expected[0] == 0.0
    assert 0 < expected[1] < 0.3
    assert expected[2] == 1.0
    np.testing.assert_array_equal(novelty(rows[:3], seen, 3), expected)
    assert len(seen) == len(seen_grams)  # novelty() leaves `seen` alone

    scores, kept = filter_novel(rows, seen, threshold=0.3, n=3)
    assert kept.tolist() == [False, False, True, False]
    np.testing.assert_array_equal(scores[:3], expected)
    # The repeated seamed row meets the same accepted rows (seen + the fresh row), not the rejected copy.
    assert scores[3] == scores[1]
    assert len(seen) == len(seen_grams | set(ngrams(words(fresh), 3)))


def test_filter_novel_compares_each_row_with_the_rows_kept_before_it_in_the_batch() -> None:
    rows = random_rows(seed=21, rows=300, vocabulary=60)  # few words: later rows repeat earlier bigrams
    rows += [rows[10], " ".join(words(rows[20])[:2]), rows[30] + " " + rows[40]]
    seen = KeyTable()
    scores, kept = filter_novel(pa.array(rows), seen, threshold=0.5, n=2)
    accepted: set[tuple[str, ...]] = set()
    expected_scores, expected_kept = [], []
    for row in rows:
        [score] = reference_novelty([row], accepted, 2)
        expected_scores.append(score)
        expected_kept.append(score >= 0.5)
        if score >= 0.5:
            tokens = words(row)
            accepted.update(ngrams(tokens, min(2, len(tokens))))
    assert 50 < sum(expected_kept) < 250  # rows on both sides of the threshold: the order matters
    assert kept.tolist() == expected_kept
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-15)
    assert len(seen) == len(accepted)


def test_normalization_steps_apply_to_words_but_compression_reads_the_raw_rows() -> None:
    rows = ["It's fine.", "its fine", "Its FINE!"]
    stats = LexicalStats(normalization=Normalization(delete="'"))
    stats.update(rows)
    summary = stats.summary()
    assert summary["distinct_1"] == 2 / 6  # its, fine
    assert summary["top_openings"][0] == {"opening": "its fine", "rows": 3, "share": 1.0}
    raw = "\n".join(rows).encode()
    assert summary["compression_ratio"] == len(zlib.compress(raw, 6)) / len(raw)


def test_merging_refuses_other_settings_and_itself() -> None:
    stats = LexicalStats()
    with pytest.raises(ValueError, match="different settings"):
        stats.merge(LexicalStats(opening_words=3))
    with pytest.raises(ValueError, match="different settings"):
        stats.merge(LexicalStats(compression=False))
    with pytest.raises(ValueError, match="themselves"):
        stats.merge(stats)
    with pytest.raises(ValueError, match="empty slot"):
        KeyTable().add(np.array([5, 0], np.uint64))


def test_add_ngrams_grows_the_set_to_every_distinct_ngram_once() -> None:
    rows = random_rows(seed=31, rows=500, vocabulary=2_000)
    seen = KeyTable()
    add_ngrams(seen, rows, n=2)
    grams = set()
    for row in rows:
        tokens = words(row)
        grams.update(ngrams(tokens, min(2, len(tokens))))
    assert len(grams) > 1_024  # past the starting capacity
    assert len(seen) == len(grams)
    assert not novelty(rows, seen, 2).any()


def test_without_compression_every_other_figure_is_the_same() -> None:
    with_zlib, without = LexicalStats(), LexicalStats(compression=False)
    with_zlib.update(HAND_ROWS)
    without.update(HAND_ROWS)
    assert without.summary()["compression_ratio"] is None
    assert without.summary() == {**with_zlib.summary(), "compression_ratio": None}
