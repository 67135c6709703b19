from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synthkiln.verifiers import Judge, KnowledgeBase, RewardModel, VerifierError, VerifierPool
from synthkiln.verifiers.judges import Embedder, parse_score


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("The answer is right.\nScore: 8", 8),
        ("Rating: 6/10 because it misses units", 6),
        ("I'd give it [[9]].", 9),
        ('{"score": 7.5, "reason": "ok"}', 7.5),
        ("First I thought 3 out of 10, but on reflection Score: 5", 5),
        ("Score: 42", None),  # outside the scale
        ("It mentions 2 apples and 10 pears.", None),
    ],
)
def test_parse_score(reply: str, score: float | None) -> None:
    assert parse_score(reply, 10) == score


QUESTIONS = [
    {
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "response": "Paris is the capital of France.",
    },
    {"messages": [{"role": "user", "content": "What is 2 + 2?"}], "response": "Bananas are yellow."},
]


def scripted(replies: dict[str, str], default: str = "Score: 1") -> tuple[list[str], object]:
    """A judge model that answers deterministically: the reply of the first key found in the prompt."""
    prompts: list[str] = []

    def generate(batch: list[str]) -> list[str]:
        prompts.extend(batch)
        return [next((r for key, r in replies.items() if key in p), default) for p in batch]

    return prompts, generate


def test_judge_grades_what_its_model_says() -> None:
    prompts, generate = scripted(
        {"Paris is the capital": "Correct and complete.\nScore: 9", "Bananas": "Off topic. 2/10"}
    )
    released: list[bool] = []
    judge = Judge(generate, threshold=5, release=lambda: released.append(True))
    with VerifierPool(workers=1) as pool:
        verdicts = pool.check_batch(judge, QUESTIONS)
    assert [v.status for v in verdicts] == ["passed", "failed"]
    assert verdicts[0].detail.startswith("score 9/10 (threshold 5)") and "score 2/10" in verdicts[1].detail
    assert "What is the capital of France?" in prompts[0] and "Paris is the capital of France." in prompts[0]
    unscored = Judge(scripted({}, default="I cannot say.")[1]).verdicts(QUESTIONS[:1])[0]
    assert unscored.status == "failed" and unscored.detail.startswith("no score")
    judge.close()
    assert released == [True]
    with pytest.raises(VerifierError, match="threshold"):
        Judge(generate, threshold=11)


def test_judge_refuses_a_model_that_drops_prompts() -> None:
    with pytest.raises(VerifierError, match="answered 0 of 2"):
        Judge(lambda prompts: []).verdicts(QUESTIONS)


@pytest.mark.slow
def test_judge_grades_with_a_real_model(hf_teacher) -> None:
    """A real model's replies reach the verdicts. What a reply says is read independently of `parse_score`
    (the code under test): a verdict's score must be a number written in the reply, and the threshold
    applied to it; a reply without any digit cannot have a score."""
    from synthkiln.engine.stages.verify import _generate

    replies: list[str] = []
    real = _generate(lambda: hf_teacher, 96)
    judge = Judge(lambda prompts: replies.extend(real(prompts)) or replies[-len(prompts) :], threshold=5)
    with VerifierPool(workers=1) as pool:
        verdicts = pool.check_batch(judge, QUESTIONS)
    assert len(verdicts) == 2 and len(replies) == 2 and all(isinstance(r, str) and r for r in replies)
    for verdict, reply in zip(verdicts, replies, strict=True):
        scored = re.match(r"score (\d+(?:\.\d+)?)/10 \(threshold 5\)", verdict.detail)
        if scored is None:
            assert verdict.status == "failed" and verdict.detail.startswith("no score"), verdict
            continue
        score = float(scored.group(1))
        written = {float(n) for n in re.findall(r"\d+(?:\.\d+)?", reply)}
        assert score in written and 0 <= score <= 10, (verdict, reply)
        assert verdict.passed is (score >= 5), verdict  # (a reply without a digit can only be "no score")


@pytest.fixture(scope="module")
def reward_model_dir(embedded_model_dir: Path, tmp_path_factory) -> Path:
    """A real sequence-classification checkpoint: the embedded SmolLM2 with a seeded scalar head."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(embedded_model_dir, num_labels=1)
    directory = tmp_path_factory.mktemp("reward")
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(embedded_model_dir).save_pretrained(directory)
    return directory


@pytest.mark.slow
def test_reward_model_scores_in_batches_as_one_by_one(reward_model_dir: Path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": f"Question {i}?"}], "response": "word " * (1 + 7 * i)}
        for i in range(6)
    ]
    batched = RewardModel(str(reward_model_dir), batch_size=4)
    scores = batched.scores(rows)
    single = np.concatenate([RewardModel(str(reward_model_dir), batch_size=1).scores([row]) for row in rows])
    assert np.allclose(scores, single, atol=1e-4)  # padding must not change a row's score
    assert len(set(np.round(scores, 4))) == 6
    threshold = float(np.median(scores))
    verdicts = RewardModel(str(reward_model_dir), threshold=threshold).verdicts(rows)
    assert [v.passed for v in verdicts] == [bool(s >= threshold) for s in scores]


FACTS = [
    {"subject": "Eiffel Tower", "relation": "located in", "object": "Paris"},
    {"subject": "Mount Everest", "relation": "height in metres", "object": "8849"},
    {
        "passage": "The Great Barrier Reef is the largest coral reef system in the world, off Queensland, Australia."
    },
    {"passage": "Photosynthesis converts light energy into chemical energy stored in glucose."},
]


def write_facts(directory: Path, kind: str) -> Path:
    if kind == "jsonl":
        path = directory / "facts.jsonl"
        path.write_text("".join(json.dumps(f) + "\n" for f in FACTS))
    elif kind == "parquet":
        path = directory / "facts.parquet"
        pq.write_table(pa.Table.from_pylist(FACTS), path)
    else:
        path = directory / "facts.sqlite"
        with sqlite3.connect(path) as connection:
            connection.execute("create table facts (subject text, relation text, object text, passage text)")
            connection.executemany("insert into facts values (:subject, :relation, :object, :passage)",
                                   [{"subject": None, "relation": None, "object": None, "passage": None, **f} for f in FACTS])  # fmt: skip
    return path


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "sqlite"])
def test_knowledge_base_structured_claims(tmp_path: Path, kind: str) -> None:
    base = KnowledgeBase(str(write_facts(tmp_path, kind)))
    verdicts = base.verdicts([
        {"subject": "eiffel tower", "relation": "Located  in", "object": "Paris."},
        {"subject": "Eiffel Tower", "relation": "located in", "object": "Rome"},
        {"subject": "Big Ben", "relation": "located in", "object": "London"},
        {"response": None},
    ])  # fmt: skip
    assert [v.status for v in verdicts] == ["passed", "failed", "failed", "failed"]
    assert verdicts[1].detail.startswith("contradicted") and "paris" in verdicts[1].detail
    assert verdicts[2].detail.startswith("unsupported")
    assert (
        base.verdicts([{"response": "The Eiffel Tower is in Paris."}])[0].status == "error"
    )  # no judge given


def test_knowledge_base_refuses_a_missing_or_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(VerifierError, match="no such file"):
        KnowledgeBase(str(tmp_path / "missing.jsonl"))
    broken = tmp_path / "facts.jsonl"
    broken.write_text('{"subject": "a"}\nnot json\n')
    with pytest.raises(VerifierError, match="line 2: not JSON"):
        KnowledgeBase(str(broken))
    (tmp_path / "facts.csv").write_text("subject\n")
    with pytest.raises(VerifierError, match="unknown format"):
        KnowledgeBase(str(tmp_path / "facts.csv"))


def test_knowledge_base_free_text_retrieves_evidence_for_the_judge(tmp_path: Path) -> None:
    # The judge supports a claim only when the retrieved evidence holds the fact it is about.
    prompts, generate = scripted(
        {"- The Great Barrier Reef": "Supported. Score: 10", "- Photosynthesis": "Score: 1"}
    )
    base = KnowledgeBase(str(write_facts(tmp_path, "jsonl")), judge=Judge(generate, threshold=5), top_k=1)
    claims = [
        {"response": "The biggest coral reef on Earth lies off the coast of Australia."},
        {"response": "Plants turn sunlight into sugar."},
    ]
    verdicts = base.verdicts(claims)
    assert "Great Barrier Reef" in verdicts[0].detail and "Photosynthesis" in verdicts[1].detail
    assert [v.status for v in verdicts] == ["passed", "failed"]
    assert all(v.verifier == "knowledge-base" for v in verdicts)
    assert "Claim to check:" in prompts[0] and "coral reef on Earth" in prompts[0]


def test_embedder_ranks_related_sentences_first() -> None:
    embedder = Embedder()
    vectors = embedder.encode(
        ["A cat sits on the mat.", "A kitten is resting on a rug.", "Stock markets fell sharply."]
    )
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
