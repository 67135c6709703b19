from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pytest

from synthkiln.kernels.minhash import EMPTY, minhash_signatures, shingle_hashes, signatures_from_hashes
from synthkiln.kernels.similarity import jaccard_from_signatures
from synthkiln.kernels.text import Normalization


@pytest.fixture(scope="module")
def documents(gsm8k_dir) -> list[str]:
    rows = [json.loads(line) for line in (gsm8k_dir / "train.jsonl").read_text().splitlines()[:400]]
    return [row["question"] + " " + row["answer"] for row in rows]


GOLDEN = 0x9E3779B97F4A7C15
MASK64 = 2**64 - 1


def reference_token_hash(token: bytes) -> int:
    """The scheme's token hash, from its definition: 8-byte little-endian chunks, polynomial in K."""
    h = 0
    for j in range(0, len(token), 8):
        chunk = int.from_bytes(token[j : j + 8], "little")
        h = (h + chunk * pow(GOLDEN, (j // 8 + 1) % 256, 2**64)) & MASK64
    return h


def reference_finish(s: int) -> int:
    s = (s * GOLDEN) & MASK64
    h = (s ^ (s >> 32)) & 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def rotl(x: int, bits: int) -> int:
    bits %= 64
    return ((x << bits) | (x >> (64 - bits))) & MASK64 if bits else x


def reference_shingles(text: str, ngram: int, chars: bool = False) -> list[int]:
    folded = bytes(Normalization().byte_table()[list(text.encode())])
    if chars:
        words = [w.decode() for w in folded.split(b"\0") if w]
        tokens = [c.encode() for c in " ".join(words)]  # separator runs fold to one space
    else:
        tokens = [w for w in folded.split(b"\0") if w]
    hashes = [reference_token_hash(t) for t in tokens]
    span = min(ngram, len(hashes))
    shingles = []
    for i in range(len(hashes) - span + 1 if hashes else 0):
        s = 0
        for k in range(span):
            s ^= rotl(hashes[i + k], (span - 1 - k) * 27)
        shingles.append(reference_finish(s))
    return shingles


def test_shingle_hashes_follow_the_scheme_at_every_word_length_and_block_edge() -> None:
    rng = random.Random(3)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789éü中😀"
    separators = [" ", "  ", "\n", ", ", "...", "\t-"]
    texts = ["", "   ", "x", "a" * 63, "b" * 64, "c" * 65, ("w" * 7 + " ") * 16, "q" * 2100 + " tail"]
    for _ in range(60):
        parts = [
            "".join(rng.choice(alphabet) for _ in range(rng.choice([1, 2, 7, 8, 9, 15, 16, 17, 24, 40])))
            for _ in range(rng.randrange(1, 30))
        ]
        texts.append(rng.choice(["", " ", "!"]) + "".join(p + rng.choice(separators) for p in parts))
    for ngram, chars in ((5, False), (1, False), (3, True)):
        hashes, offsets = shingle_hashes(texts, ngram=ngram, tokens="chars" if chars else "words")
        for d, text in enumerate(texts):
            got = hashes[offsets[d] : offsets[d + 1]].tolist()
            assert got == reference_shingles(text, ngram, chars), (ngram, chars, text[:80])


def exact_jaccard(a: str, b: str, ngram: int = 5) -> float:
    hashes, offsets = shingle_hashes([a, b], ngram=ngram)
    first, second = (
        set(hashes[offsets[0] : offsets[1]].tolist()),
        set(hashes[offsets[1] : offsets[2]].tolist()),
    )
    return len(first & second) / len(first | second)


def edit(text: str, fraction: float, rng: random.Random) -> str:
    words = text.split()
    for _ in range(max(1, int(len(words) * fraction))):
        words[rng.randrange(len(words))] = rng.choice(["alpha", "beta", "gamma", "delta", "omega"])
    return " ".join(words)


def test_estimate_tracks_exact_jaccard(documents: list[str]) -> None:
    rng = random.Random(0)
    originals = documents[:150]
    edited = [edit(d, rng.choice([0.01, 0.03, 0.06, 0.1]), rng) for d in originals]
    signatures = minhash_signatures(originals + edited, num_perm=128)
    estimates = jaccard_from_signatures(signatures[:150], signatures[150:])
    exact = np.array([exact_jaccard(a, b) for a, b in zip(originals, edited, strict=True)])
    assert exact.min() < 0.8 < exact.max()  # the pairs span a real range of similarity
    assert np.abs(estimates - exact).mean() <= 0.03


def test_unrelated_documents_estimate_near_zero(documents: list[str]) -> None:
    signatures = minhash_signatures(documents[:100])
    estimates = jaccard_from_signatures(signatures[:50], signatures[50:])
    assert estimates.mean() < 0.02


def test_normalisation_folds_case_whitespace_and_punctuation() -> None:
    a, b, c = minhash_signatures(
        [
            "The cat sat on the mat, quietly.",
            "the CAT   sat on\nthe mat quietly!!",
            "A dog ran in the park today.",
        ]
    )
    assert (a == b).all()
    assert (a != c).any()
    digits = Normalization(digits=True)
    x, y = minhash_signatures(
        ["paid 42 dollars for 3 books", "paid 17 dollars for 9 books"], normalization=digits
    )
    assert (x == y).all()
    accented = Normalization(unicode=True)
    fullwidth_cafe = "\uff23\uff21\uff26\uff25"
    u, v = minhash_signatures([f"{fullwidth_cafe} au lait", "cafe au lait"], ngram=2, normalization=accented)
    assert (u == v).all()


def test_short_empty_and_null_documents() -> None:
    short, empty, blank, null, two = minhash_signatures(
        pa.array(["only three words", "", "  ...  ", None, "only three words"]), ngram=5
    )
    assert (short != EMPTY).all() and (short == two).all()  # fewer than n words: one shingle
    for signature in (empty, blank, null):
        assert (signature == EMPTY).all()
    pair = jaccard_from_signatures(np.stack([empty]), np.stack([blank]))
    assert pair[0] == 0.0  # empty documents never match, not even each other


def test_inputs_arrow_slices_lists_and_numpy_agree(documents: list[str]) -> None:
    texts = documents[:40]
    from_list = minhash_signatures(texts)
    chunked = pa.chunked_array([pa.array(texts[:15]), pa.array(texts[15:])])
    assert (minhash_signatures(chunked) == from_list).all()
    sliced = pa.array(["padding", *texts], pa.string()).slice(1)
    assert (minhash_signatures(sliced) == from_list).all()
    assert (minhash_signatures(np.array(texts, dtype=object)) == from_list).all()
    assert (minhash_signatures(pa.array(texts, pa.large_string())) == from_list).all()


def test_widths_seeds_chars_and_the_permutation_stage(documents: list[str]) -> None:
    texts = documents[:20]
    for width in (64, 256, 100):
        assert minhash_signatures(texts, num_perm=width).shape == (20, width)
    assert (minhash_signatures(texts, seed=2) != minhash_signatures(texts, seed=1)).any()
    chars = minhash_signatures(texts, tokens="chars", ngram=7)
    assert chars.shape == (20, 128) and (chars != minhash_signatures(texts)).any()
    hashes, offsets = shingle_hashes(texts)
    assert (signatures_from_hashes(hashes, offsets) == minhash_signatures(texts)).all()
    with pytest.raises(ValueError, match="tokens"):
        minhash_signatures(texts, tokens="bytes")
    with pytest.raises(TypeError, match="expected a string array"):
        minhash_signatures(pa.array([1, 2]))
