"""Benchmark decontamination: an index of the benchmark items (the registry is
:mod:`synthkiln.engine.benchmarks`) and the stage that removes rows containing any of them.

Every protected field of every benchmark row is an *item*. Texts are compared as normalised words
(lowercase, punctuation as separators, apostrophes dropped so "it's" and "its" agree), two ways:

- exact: word n-grams (default 13, the GPT-3 / lm-eval rule) looked up in a hash table by a Numba
  kernel; n-grams shared by too many items are ignored; items shorter than n words match whole;
  optionally an item must be covered to a fraction (`min_coverage`) rather than by any n-gram;
- fuzzy: MinHash containment. Each item keeps a bottom-k sketch of its word-shingle hashes (a uniform
  sample of its shingles); the fraction of that sample found inside one window of the text (about the
  item's length) estimates how much of the item the window contains, which survives edits that break
  every 13-gram.

A benchmark that cannot be loaded stops everything (fail closed); nothing is skipped silently.
Indexes are cached under ``$SYNTHKILN_CACHE_DIR/decontam``, keyed by file hashes and parameters.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from synthkiln.engine.benchmarks import BenchmarkSource, Items, read_items
from synthkiln.engine.config import DecontaminateConfig
from synthkiln.engine.errors import SynthkilnError
from synthkiln.engine.models import cache_dir
from synthkiln.engine.stages.base import Stage
from synthkiln.kernels.minhash import SCHEME
from synthkiln.kernels.ngram_index import NgramIndex, densest_windows, ngram_hashes, run_starts
from synthkiln.kernels.text import Normalization, TextBuffers, as_text_buffers

# bump when the index layout changes (a hashing change bumps minhash.SCHEME): old entries are ignored
_INDEX_FORMAT = 1
_SPAN_CHARS = 300
_WINDOW_STRETCH = 1.5  # a fuzzy window may be this much longer than the item (inserted words)


CONTAMINATION = pa.struct(
    [
        pa.field("benchmark", pa.string()),
        pa.field("item_id", pa.string()),
        pa.field("field", pa.string()),
        pa.field("method", pa.string()),  # "ngram" or "minhash"
        pa.field("score", pa.float32()),  # n-gram coverage of the item, or estimated containment
        pa.field("span", pa.string()),  # the matching stretch of the checked text (normalised spacing kept)
    ]
)


def normalization(config: DecontaminateConfig) -> Normalization:
    return Normalization(
        lowercase=True, punctuation=True, unicode=config.unicode, delete="'\u2019"
    )  # ASCII and typographic apostrophes


# -- the index ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    benchmark: str
    item_id: str
    field: str
    method: str
    score: float
    span: str

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("benchmark", "item_id", "field", "method", "score", "span")}

    def describe(self) -> str:
        return (
            f"{self.method} match of {self.benchmark} item {self.item_id} ({self.field}), "
            f"score {self.score:.2f}: {self.span!r}"
        )


EXACT, FUZZY = 0, 1


@dataclass
class ContaminationIndex:
    """Items of every benchmark, their n-grams and sketches in one table, and what was indexed."""

    config: DecontaminateConfig
    ngrams: NgramIndex
    posting_item: np.ndarray  # int64 per posting
    posting_kind: np.ndarray  # int8: EXACT or FUZZY
    posting_label: np.ndarray  # int64: sketch slot of a FUZZY posting
    item_benchmark: np.ndarray  # int64 per item
    item_id: np.ndarray  # str per item
    item_field: np.ndarray  # str per item
    item_words: np.ndarray  # int64 per item
    item_ngrams: np.ndarray  # int64: n-grams kept for the exact method
    item_sketch: np.ndarray  # int64: sketch size for the fuzzy method
    benchmarks: list[dict[str, Any]]  # name, source, sha256, fields, rows, items, indexed, too_short

    @property
    def normalization(self) -> Normalization:
        return normalization(self.config)

    @classmethod
    def for_config(cls, config: DecontaminateConfig, progress: bool = False) -> ContaminationIndex:
        """The index of `config.benchmarks`, from the disk cache when built before with the same inputs."""
        if not config.benchmarks:
            raise SynthkilnError("no benchmark to decontaminate against")
        sources = [BenchmarkSource.of(b) for b in config.benchmarks]
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise SynthkilnError(f"benchmark names must be unique, got {names}")
        digests = [s.digest() for s in sources]
        key = _cache_key(config, sources, digests)
        if key in _LOADED:
            return replace(_LOADED[key], config=config)  # same index; the config may pick another backend
        path = cache_dir() / "decontam" / f"{key}.npz"
        index = cls._load(path, config) if path.is_file() else None
        if index is None:
            index = cls.build(config, sources, digests, progress)
            index._save(path)
        _LOADED[key] = index
        return index

    @classmethod
    def build(
        cls,
        config: DecontaminateConfig,
        sources: list[BenchmarkSource],
        digests: list[str],
        progress: bool = False,
    ) -> ContaminationIndex:
        items = Items()
        described = []
        for number, (source, digest) in enumerate(
            tqdm(list(zip(sources, digests, strict=True)), desc="benchmarks", disable=not progress)
        ):
            read = read_items(source, number, items)
            described.append({"name": source.name, "source": source.location, "sha256": digest, **read})
        norm = normalization(config)
        texts = pa.array(items.texts, pa.large_string())
        exact = ngram_hashes(texts, config.ngram, norm)
        words = exact.words
        indexed = words >= config.min_item_words
        hashes, owners = _pairs(exact, indexed)
        hashes, owners = _drop_common(hashes, owners, config.max_item_frequency)
        item_ngrams = np.bincount(owners, minlength=len(words))
        # Items shorter than an n-gram are one whole-text hash each, found through their first words.
        short = indexed & (words < config.ngram)
        prefixes = ngram_hashes(texts, config.min_item_words, norm)
        whole_prefix = np.zeros(len(words), np.uint64)
        whole_prefix[short] = prefixes.hashes[prefixes.offsets[:-1][short]]
        whole_lengths = [np.where(short, words, 0)[owners]]
        whole_prefixes = [whole_prefix[owners]]
        spans = np.array([config.ngram] if (indexed & ~short).any() else [], np.int64)
        kinds = [np.full(len(hashes), EXACT, np.int8)]
        labels = [np.zeros(len(hashes), np.int64)]
        all_hashes, all_owners = [hashes], [owners]
        item_sketch = np.zeros(len(words), np.int64)
        if config.fuzzy:
            shingles = ngram_hashes(texts, config.fuzzy_ngram, norm)
            # Items shorter than an n-gram match whole (exact); short sketches would match common code.
            f_hashes, f_owners = _pairs(shingles, indexed & (words >= config.ngram))
            f_hashes, f_owners = _drop_common(f_hashes, f_owners, config.max_item_frequency)
            # Pairs are sorted by (hash, owner); re-sort by (owner, hash) so each item's smallest hashes
            # (a uniform sample: the hashes are mixed) come first: its bottom-k sketch.
            order = np.lexsort((f_hashes, f_owners))
            f_hashes, f_owners = f_hashes[order], f_owners[order]
            first_of_item = np.searchsorted(f_owners, f_owners, side="left")
            rank = np.arange(len(f_owners)) - first_of_item
            sketch = rank < config.sketch_size
            all_hashes.append(f_hashes[sketch])
            all_owners.append(f_owners[sketch])
            kinds.append(np.full(int(sketch.sum()), FUZZY, np.int8))
            labels.append(rank[sketch])
            item_sketch = np.bincount(f_owners[sketch], minlength=len(words))
            whole_lengths.append(np.zeros(int(sketch.sum()), np.int64))
            whole_prefixes.append(np.zeros(int(sketch.sum()), np.uint64))
            spans = np.append(spans, config.fuzzy_ngram)
        posting_item = np.concatenate(all_owners)
        ngrams = NgramIndex.build(
            np.concatenate(all_hashes), np.arange(len(posting_item)), spans,
            np.concatenate(whole_lengths), np.concatenate(whole_prefixes), config.min_item_words,
        )  # fmt: skip
        item_benchmark = np.array(items.benchmark, np.int64)
        for number, description in enumerate(described):
            mine = item_benchmark == number
            description["indexed"] = int((mine & indexed).sum())
            description["too_short"] = int((mine & ~indexed).sum())
        return cls(
            config, ngrams, posting_item, np.concatenate(kinds), np.concatenate(labels), item_benchmark,
            np.array(items.item_id, dtype=str), np.array(items.field_name, dtype=str), words, item_ngrams, item_sketch,
            described,
        )  # fmt: skip

    def find(self, texts: pa.Array | TextBuffers) -> list[Match | None]:
        """The strongest benchmark match of each text, or None where it is clean."""
        norm = self.normalization
        buffers = texts if isinstance(texts, TextBuffers) else as_text_buffers(texts, norm)
        hits = self.ngrams.probe(buffers, norm, self.config.backend)
        found: list[Match | None] = [None] * len(buffers)
        if not len(hits):
            return found
        item = self.posting_item[hits.posting]
        kind = self.posting_kind[hits.posting]
        candidates = [self._exact(hits, item, kind == EXACT)]
        if self.config.fuzzy:
            candidates.append(self._fuzzy(hits, item, kind == FUZZY))
        # Per document: exact beats fuzzy, then the higher score.
        document, item_of, method, score, first, end = (
            np.concatenate(c) for c in zip(*candidates, strict=True)
        )
        order = np.lexsort((-score, method, document))
        chosen = order[run_starts(document[order])]
        table = norm.byte_table()
        for c in chosen:
            d = int(document[c])
            found[d] = Match(
                benchmark=self.benchmarks[int(self.item_benchmark[item_of[c]])]["name"],
                item_id=str(self.item_id[item_of[c]]),
                field=str(self.item_field[item_of[c]]),
                method="ngram" if method[c] == EXACT else "minhash",
                score=round(float(score[c]), 4),
                span=_span_text(buffers, table, d, int(first[c]), int(end[c])),
            )
        return found

    def _exact(self, hits: Any, item: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, ...]:
        document, item, position = hits.document[mask], item[mask], hits.position[mask]
        end, posting = position + hits.span[mask], hits.posting[mask]
        items = len(self.item_words)
        groups, inverse = np.unique(document * items + item, return_inverse=True)
        postings = len(self.posting_item)
        distinct = np.unique(inverse * postings + posting) // postings
        group_item = groups % items
        coverage = np.bincount(distinct, minlength=len(groups)) / np.maximum(self.item_ngrams[group_item], 1)
        first = np.full(len(groups), np.iinfo(np.int64).max)
        last = np.zeros(len(groups), np.int64)
        np.minimum.at(first, inverse, position)
        np.maximum.at(last, inverse, end)
        ok = coverage >= (self.config.min_coverage or 0.0)
        return (
            groups[ok] // items,
            group_item[ok],
            np.full(int(ok.sum()), EXACT),
            coverage[ok],
            first[ok],
            last[ok],
        )

    def _fuzzy(self, hits: Any, item: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, ...]:
        document, item, position = hits.document[mask], item[mask], hits.position[mask]
        label = self.posting_label[hits.posting[mask]]
        order = _order_by(document, item, position)
        document, item, position, label = document[order], item[order], position[order], label[order]
        boundary = run_starts(document, item)
        starts = np.append(np.flatnonzero(boundary), len(document)).astype(np.int64)
        group_document, group_item = document[boundary], item[boundary]
        widths = np.ceil(self.item_words[group_item] * _WINDOW_STRETCH).astype(np.int64)
        distinct, first, last = densest_windows(starts, position, label, widths, self.config.sketch_size)
        score = distinct / np.maximum(self.item_sketch[group_item], 1)
        ok = score >= self.config.fuzzy_threshold
        end = last + self.config.fuzzy_ngram
        return (
            group_document[ok],
            group_item[ok],
            np.full(int(ok.sum()), FUZZY),
            score[ok],
            first[ok],
            end[ok],
        )

    # -- cache ---------------------------------------------------------------------------------------

    _ARRAYS = ("posting_item", "posting_kind", "posting_label", "item_benchmark", "item_id", "item_field",
               "item_words", "item_ngrams", "item_sketch")  # fmt: skip

    def _save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.stem}.tmp.npz")
        arrays = {f"ngrams_{k}": v for k, v in self.ngrams.arrays().items()}
        arrays.update({name: getattr(self, name) for name in self._ARRAYS})
        np.savez(temporary, benchmarks=np.array(json.dumps(self.benchmarks)), **arrays)
        temporary.replace(path)

    @classmethod
    def _load(cls, path: Path, config: DecontaminateConfig) -> ContaminationIndex | None:
        try:
            with np.load(path, allow_pickle=False) as stored:
                ngrams = NgramIndex.from_arrays(
                    {k.removeprefix("ngrams_"): stored[k] for k in stored.files if k.startswith("ngrams_")}
                )
                arrays = {name: stored[name] for name in cls._ARRAYS}
                benchmarks = json.loads(str(stored["benchmarks"]))
        except (OSError, KeyError, ValueError):
            return None  # a damaged cache entry is rebuilt, never trusted
        return cls(config, ngrams, benchmarks=benchmarks, **arrays)

    def describe(self) -> list[dict[str, Any]]:
        """What the data was checked against, for the manifest and the dataset card."""
        methods = [f"ngram (n={self.config.ngram})"]
        if self.config.fuzzy:
            methods.append(
                f"minhash containment (shingle {self.config.fuzzy_ngram}, >= {self.config.fuzzy_threshold})"
            )
        return [{**b, "methods": methods} for b in self.benchmarks]


_LOADED: dict[str, ContaminationIndex] = {}


def _cache_key(config: DecontaminateConfig, sources: list[BenchmarkSource], digests: list[str]) -> str:
    parameters = config.model_dump(mode="json", exclude={"benchmarks", "text_field", "seeds", "backend"})
    described = [
        {"name": s.name, "digest": d, "fields": s.fields, "id_field": s.id_field}
        for s, d in zip(sources, digests, strict=True)
    ]
    canonical = json.dumps([_INDEX_FORMAT, SCHEME, parameters, described], sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def _pairs(hashes: Any, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (hash, item) pairs of the items selected by the mask `items`, sorted by hash."""
    owners = np.repeat(np.arange(len(hashes.words)), np.diff(hashes.offsets))
    keep = items[owners]
    h, o = hashes.hashes[keep], owners[keep]
    order = np.lexsort((o, h))
    h, o = h[order], o[order]
    distinct = run_starts(h, o)
    return h[distinct], o[distinct]


def _drop_common(hashes: np.ndarray, owners: np.ndarray, max_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove hashes found in more than `max_items` items (pairs sorted by hash, distinct)."""
    _, counts = np.unique(hashes, return_counts=True)
    common = np.repeat(counts > max_items, counts)
    return hashes[~common], owners[~common]


def _span_text(buffers: TextBuffers, table: np.ndarray, document: int, first: int, end: int) -> str:
    """The text of words [first, end) of a document, as the kernels tokenised it."""
    raw = buffers.data[buffers.offsets[document] : buffers.offsets[document + 1]]
    inside = table[raw] != 0
    edges = np.diff(np.r_[0, inside.astype(np.int8), 0])
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    end = min(end, len(ends))
    if first >= end:
        return ""
    text = bytes(raw[starts[first] : ends[end - 1]]).decode("utf-8", errors="replace")
    return text if len(text) <= _SPAN_CHARS else text[: _SPAN_CHARS - 1] + "…"


# -- the stage ---------------------------------------------------------------------------------------


class Decontaminate(Stage):
    """Reject rows whose text contains a benchmark item; the match is recorded in `contamination`."""

    name = "decontaminate"
    fields = (pa.field("contamination", CONTAMINATION),)

    def __init__(self, index: ContaminationIndex, text_field: str = "response") -> None:
        super().__init__()
        self.index, self.text_field = index, text_field
        self.benchmarks = tuple(index.describe())

    def process(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        matches = self.index.find(pc.fill_null(batch.column(self.text_field), ""))
        batch = batch.append_column(self.fields[0], contamination_column(matches))
        reasons = pa.array(
            [None if m is None else f"contaminated:{m.benchmark}" for m in matches], pa.string()
        )
        details = pa.array([None if m is None else m.describe() for m in matches], pa.string())
        return self.split(batch, reasons, details)


def contamination_column(matches: list[Match | None]) -> pa.Array:
    return pa.array([None if m is None else m.as_dict() for m in matches], CONTAMINATION)


def _order_by(*keys: np.ndarray) -> np.ndarray:
    """`np.lexsort` order of non-negative integer keys, most significant first: one stable sort of the
    keys packed into 64 bits where they fit (three sorting passes over every hit, otherwise)."""
    widths = [int(k.max()).bit_length() if len(k) else 0 for k in keys]
    if sum(widths) > 64:
        return np.lexsort(keys[::-1])
    packed = np.zeros(len(keys[0]), np.uint64)
    for key, width in zip(keys, widths, strict=True):
        packed = (packed << np.uint64(width)) | key.astype(np.uint64)
    return np.argsort(packed, kind="stable")
