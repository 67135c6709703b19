"""Bias audit: demographic and sensitive terms per 10,000 words in the seeds, the accepted rows and the
rejected rows, how much generation amplified each group, and rejection and refusal rates per persona.

What a lexicon audit can show: whether the data mentions a group (women, Muslims, older people, ...)
far more or less often than the seeds it came from, and whether the curation stages reject rows
mentioning a group, or written for a persona, more often than others. What it cannot show: how a group
is portrayed (a stereotype uses the same words as a fair description), bias expressed without the
listed words, terms whose sense depends on context ("black coffee"), or anything in languages the
lexicon does not cover. A flag is a prompt to read the rows, not a verdict; no flag is not a clean bill.

Terms are matched as whole words or word sequences under the kernels' normalisation (lowercase, ASCII
punctuation as separators), counted by the n-gram hash kernels over Arrow buffers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synthkiln.engine.config import BiasConfig
from synthkiln.engine.errors import RecipeError

# The documented default lexicon: dimension -> group -> terms. Deliberately short and unambiguous
# (no colour words alone, no "white"/"black" without "people"); replace it with `bias.lexicon_file`.
DEFAULT_LEXICON: dict[str, dict[str, list[str]]] = {
    "gender": {
        "female": ["she", "her", "hers", "herself", "woman", "women", "girl", "girls", "mother", "mothers",
                   "daughter", "daughters", "wife", "wives", "sister", "sisters", "female", "lady", "ladies"],
        "male": ["he", "him", "his", "himself", "man", "men", "boy", "boys", "father", "fathers", "son", "sons",
                 "husband", "husbands", "brother", "brothers", "male", "gentleman", "gentlemen"],
        "gender diverse": ["nonbinary", "non binary", "transgender", "genderqueer", "trans woman", "trans man"],
    },
    "ethnicity": {
        "black": ["black people", "black person", "african american", "african americans"],
        "white": ["white people", "white person", "caucasian", "caucasians"],
        "asian": ["asian", "asians", "asian american", "asian americans"],
        "hispanic": ["hispanic", "hispanics", "latino", "latina", "latinos", "latinas", "latinx"],
        "indigenous": ["indigenous", "native american", "native americans", "aboriginal"],
        "arab": ["arab", "arabs", "arabic people"],
    },
    "religion": {
        "christian": ["christian", "christians", "christianity", "church", "churches"],
        "muslim": ["muslim", "muslims", "islam", "islamic", "mosque", "mosques"],
        "jewish": ["jewish", "jew", "jews", "judaism", "synagogue", "synagogues"],
        "hindu": ["hindu", "hindus", "hinduism", "temple"],
        "buddhist": ["buddhist", "buddhists", "buddhism"],
        "nonreligious": ["atheist", "atheists", "agnostic", "agnostics"],
    },
    "age": {
        "young": ["child", "children", "kid", "kids", "teenager", "teenagers", "teen", "teens", "youth"],
        "old": ["elderly", "old people", "senior citizen", "senior citizens", "retiree", "retirees", "pensioner"],
    },
    "disability": {
        "disability": ["disabled", "disability", "disabilities", "wheelchair", "blind", "deaf", "autistic",
                       "autism", "handicapped", "impairment", "impaired"],
    },
    "nationality": {
        "immigrant": ["immigrant", "immigrants", "refugee", "refugees", "foreigner", "foreigners", "migrant",
                      "migrants"],
        "named nationality": ["american", "americans", "chinese", "indian", "indians", "mexican", "mexicans",
                              "british", "german", "germans", "french", "russian", "russians", "japanese",
                              "nigerian", "nigerians", "brazilian", "brazilians", "african", "africans"],
    },
}  # fmt: skip
LIMITS = (
    "A lexicon audit counts mentions: it shows whether the data names a group far more or less often than "
    "its seeds, and whether curation rejects rows naming a group, or written for a persona, more often. It "
    "cannot show how a group is portrayed (a stereotype uses the same words as a fair description), bias "
    "without the listed words, terms whose sense depends on context, or other languages: a flag is a "
    "reason to read the rows, and no flag is not a clean bill."
)
_WORDS = re.compile(r"[a-z0-9]+")
PER_WORDS = 10_000


def load_lexicon(config: BiasConfig) -> dict[str, dict[str, list[str]]]:
    if config.lexicon_file is None:
        return DEFAULT_LEXICON
    path = Path(config.lexicon_file)
    try:
        lexicon = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RecipeError(f"bias.lexicon_file: {path}: {exc}") from None
    valid = isinstance(lexicon, dict) and all(
        isinstance(groups, dict)
        and all(
            isinstance(terms, list) and all(isinstance(t, str) for t in terms) for terms in groups.values()
        )
        for groups in lexicon.values()
    )
    if not valid:
        raise RecipeError(f"bias.lexicon_file: {path}: expected {{dimension: {{group: [terms]}}}} in JSON")
    return lexicon


class TermCounter:
    """Counts every group's terms and the words in texts, with the n-gram hash kernels."""

    def __init__(self, lexicon: dict[str, dict[str, list[str]]]) -> None:
        from synthkiln.kernels.ngram_index import ngram_hashes  # numba: loaded when a run starts

        self._hashes = ngram_hashes
        self.groups = [f"{dimension}/{group}" for dimension, groups in lexicon.items() for group in groups]
        by_length: dict[int, tuple[list[str], list[int]]] = {}
        for index, terms in enumerate(terms for groups in lexicon.values() for terms in groups.values()):
            for term in terms:
                words = _WORDS.findall(term.lower())
                if words:
                    by_length.setdefault(len(words), ([], []))[0].append(" ".join(words))
                    by_length[len(words)][1].append(index)
        # Per term length: the sorted term hashes and the group of each.
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for length, (terms, groups) in by_length.items():
            hashes = ngram_hashes(pa.array(terms), length).hashes
            order = np.argsort(hashes)
            self._tables[length] = (hashes[order], np.asarray(groups, np.int64)[order])

    def count(self, texts: pa.Array | pa.ChunkedArray) -> tuple[int, np.ndarray]:
        """(words, occurrences per group) over the texts (nulls count nothing)."""
        texts = pa.chunked_array([texts]) if isinstance(texts, pa.Array) else texts
        texts = texts.combine_chunks().fill_null("")
        counts = np.zeros(len(self.groups), np.int64)
        words = len(self._hashes(texts, 1).hashes) if len(texts) else 0
        for length, (keys, groups) in self._tables.items():
            hashes = self._hashes(texts, length).hashes
            at = np.searchsorted(keys, hashes)
            found = (at < len(keys)) & (keys[np.minimum(at, len(keys) - 1)] == hashes)
            counts += np.bincount(groups[at[found]], minlength=len(self.groups))
        return words, counts


class BiasAudit:
    """The writer's commit hook: adds each commit's counts to the manifest's `bias` (counts add up,
    so a resumed run continues them) and recomputes the rates, amplification and flags."""

    def __init__(
        self, config: BiasConfig, seed_texts: Callable[[], Iterable[str]], text_field: str = "response"
    ):
        self.config = config
        self.lexicon = load_lexicon(config)
        self.counter = TermCounter(self.lexicon)
        self._seed_texts, self.text_field = seed_texts, text_field

    def record(self, kept: pa.Table | None, rejected: pa.Table | None, manifest: dict[str, Any]) -> None:
        bias = manifest.get("bias")
        if bias is None:  # the first commit of the first run: the seeds' baseline
            words, counts = self.counter.count(pa.array(list(self._seed_texts()), pa.string()))
            bias = manifest["bias"] = {
                "lexicon": self.config.lexicon_file or "default",
                "counts": {part: {"words": 0, "terms": dict.fromkeys(self.counter.groups, 0)}
                           for part in ("seeds", "accepted", "rejected")},
                "personas": {},
            }  # fmt: skip
            _add(bias["counts"]["seeds"], words, counts, self.counter.groups)
        for part, table in (("accepted", kept), ("rejected", _generated(rejected))):
            if table is not None and table.num_rows:
                words, counts = self.counter.count(table.column(self.text_field))
                _add(bias["counts"][part], words, counts, self.counter.groups)
        _count_personas(bias["personas"], kept, rejected)
        bias.update(self._figures(bias))

    def _figures(self, bias: dict[str, Any]) -> dict[str, Any]:
        counts = bias["counts"]
        rates = {
            part: {g: _per_10k(counts[part]["terms"][g], counts[part]["words"]) for g in self.counter.groups}
            for part in counts
        }
        amplification = {}
        flags = []
        for group in self.counter.groups:
            accepted, seeds = counts["accepted"]["terms"][group], counts["seeds"]["terms"][group]
            if not counts["accepted"]["words"] or not counts["seeds"]["words"]:
                continue
            # Half a count added to both sides, so that a group absent from the seeds has a finite ratio.
            ratio = ((accepted + 0.5) / counts["accepted"]["words"]) / (
                (seeds + 0.5) / counts["seeds"]["words"]
            )
            amplification[group] = round(ratio, 3)
            if accepted >= self.config.min_count and ratio >= self.config.amplification:
                flags.append({"kind": "amplified", "group": group, "ratio": round(ratio, 3),
                              "accepted_per_10k_words": rates["accepted"][group],
                              "seeds_per_10k_words": rates["seeds"][group]})  # fmt: skip
        personas = {
            persona: {
                "samples": c["samples"],
                "rejected_share": round(c["rejected"] / c["samples"], 4) if c["samples"] else None,
                "refused_share": round(c["refused"] / c["samples"], 4) if c["samples"] else None,
            }
            for persona, c in bias["personas"].items()
        }
        return {
            "per_10k_words": rates,
            "amplification": amplification,
            "flags": flags,
            "persona_rates": personas,
        }


REFUSALS = frozenset({("seeds", "teacher-refused"), ("refusal", "refusal")})


def _generated(rejected: pa.Table | None) -> pa.Table | None:
    """Rejected rows that hold a generated text (not prompts quarantined before generation)."""
    if rejected is None:
        return None
    return rejected.filter(pc.is_valid(rejected.column("sample_index")))


def _count_personas(
    personas: dict[str, dict[str, int]], kept: pa.Table | None, rejected: pa.Table | None
) -> None:
    for table, outcome in ((kept, "kept"), (rejected, "rejected")):
        if table is None or not table.num_rows:
            continue
        stages = table.column("stage").to_pylist() if outcome == "rejected" else [None] * table.num_rows
        reasons = table.column("reason").to_pylist() if outcome == "rejected" else [None] * table.num_rows
        for persona, stage, reason in zip(table.column("persona").to_pylist(), stages, reasons, strict=True):
            if outcome == "rejected" and stage == "seeds" and reason != "teacher-refused":
                continue  # never generated: says nothing of the persona
            counts = personas.setdefault(persona or "(none)", {"samples": 0, "rejected": 0, "refused": 0})
            counts["samples"] += 1
            counts["rejected"] += outcome == "rejected"
            counts["refused"] += (stage, reason) in REFUSALS


def _add(part: dict[str, Any], words: int, counts: np.ndarray, groups: list[str]) -> None:
    part["words"] += words
    for group, count in zip(groups, counts.tolist(), strict=True):
        part["terms"][group] = part["terms"].get(group, 0) + count  # a lexicon may grow between runs


def _per_10k(count: int, words: int) -> float | None:
    return round(PER_WORDS * count / words, 3) if words else None
