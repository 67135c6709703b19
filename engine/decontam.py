"""Benchmark decontamination: a registry of evaluation sets, an index of their items, and the stage and
corpus command that remove rows containing any of them.

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
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from synthkiln.engine.config import BenchmarkConfig, DecontaminateConfig
from synthkiln.engine.corpus import Source, iter_sources, prepare_output, write_parts
from synthkiln.engine.errors import SynthkilnError
from synthkiln.engine.models import cache_dir
from synthkiln.engine.stages import Stage
from synthkiln.engine.writer import write_text_atomic
from synthkiln.kernels.minhash import SCHEME
from synthkiln.kernels.ngram_index import NgramIndex, densest_windows, ngram_hashes, run_starts
from synthkiln.kernels.text import Normalization, TextBuffers, as_text_buffers

# bump when the index layout changes (a hashing change bumps minhash.SCHEME): old entries are ignored
_INDEX_FORMAT = 1
_SPAN_CHARS = 300
_WINDOW_STRETCH = 1.5  # a fuzzy window may be this much longer than the item (inserted words)


@dataclass(frozen=True)
class BuiltinBenchmark:
    fields: tuple[str, ...]
    id_field: str | None
    hf_dataset: str
    hf_config: str | None
    split: str


BUILTIN: dict[str, BuiltinBenchmark] = {
    "gsm8k": BuiltinBenchmark(("question", "answer"), None, "openai/gsm8k", "main", "test"),
    "math": BuiltinBenchmark(("problem", "solution"), "unique_id", "HuggingFaceH4/MATH-500", None, "test"),
    "humaneval": BuiltinBenchmark(
        ("prompt", "canonical_solution"), "task_id", "openai/openai_humaneval", None, "test"
    ),
    "mbpp": BuiltinBenchmark(("text", "code"), "task_id", "google-research-datasets/mbpp", "full", "test"),
    "mmlu": BuiltinBenchmark(("question", "choices"), None, "cais/mmlu", "all", "test"),
    "arc": BuiltinBenchmark(("question", "choices"), "id", "allenai/ai2_arc", "ARC-Challenge", "test"),
    "hellaswag": BuiltinBenchmark(("ctx", "endings"), "ind", "Rowan/hellaswag", None, "validation"),
    "truthfulqa": BuiltinBenchmark(
        ("question", "best_answer"), None, "truthfulqa/truthful_qa", "generation", "validation"
    ),
    "gpqa": BuiltinBenchmark(
        ("Question", "Correct Answer"), "Record ID", "Idavidrein/gpqa", "gpqa_diamond", "train"
    ),
}

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


# -- the registry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkSource:
    """Where a benchmark's rows come from and which fields are protected (None: every string field)."""

    name: str
    path: Path | None
    fields: tuple[str, ...] | None
    id_field: str | None
    hf: tuple[str, str | None, str] | None  # dataset, config, split

    @classmethod
    def of(cls, config: BenchmarkConfig) -> BenchmarkSource:
        builtin = BUILTIN.get(config.name.lower())
        fields = tuple(config.fields) if config.fields else (builtin.fields if builtin else None)
        id_field = config.id_field or (builtin.id_field if builtin else None)
        if config.path is not None:
            return cls(config.name, Path(config.path), fields, id_field, None)
        if config.hf_dataset is not None:
            return cls(
                config.name,
                None,
                fields,
                id_field,
                (config.hf_dataset, config.hf_config, config.split or "test"),
            )
        if builtin is None:
            known = ", ".join(sorted(BUILTIN))
            raise SynthkilnError(
                f"benchmark '{config.name}': not a built-in benchmark ({known}); give its file as NAME=PATH"
            )
        return cls(config.name, None, fields, id_field,
                   (builtin.hf_dataset, builtin.hf_config, config.split or builtin.split))  # fmt: skip

    @property
    def location(self) -> str:
        if self.path is not None:
            return str(self.path)
        dataset, config, split = self.hf  # type: ignore[misc]
        return f"hf:{dataset}" + (f"/{config}" if config else "") + f":{split}"

    def table(self) -> pa.Table:
        if self.path is not None:
            if not self.path.is_file():
                raise SynthkilnError(f"benchmark '{self.name}': {self.path}: no such file")
            return Source(self.path).table()
        return self._hf_table()

    def digest(self) -> str:
        """sha256 of the file (or the Hugging Face dataset's fingerprint): what the index is keyed by."""
        if self.path is None:
            return f"hf-fingerprint:{self._hf_dataset()._fingerprint}"
        if not self.path.is_file():
            raise SynthkilnError(f"benchmark '{self.name}': {self.path}: no such file")
        digest = hashlib.sha256()
        with open(self.path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def _hf_dataset(self) -> Any:
        dataset, config, split = self.hf  # type: ignore[misc]
        try:
            import datasets
        except ImportError:
            raise SynthkilnError(
                f"benchmark '{self.name}' comes from Hugging Face ({dataset}) and needs `datasets`: "
                f"pip install 'synthkiln[hf]', or give a local copy as {self.name}=PATH"
            ) from None
        try:
            return datasets.load_dataset(dataset, config, split=split)
        except Exception as exc:  # the hub raises many types (offline, gated, missing split)
            raise SynthkilnError(
                f"benchmark '{self.name}': cannot load {self.location} ({type(exc).__name__}: {exc}); "
                f"give a local copy as {self.name}=PATH"
            ) from None

    def _hf_table(self) -> pa.Table:
        return pa.Table.from_pylist(self._hf_dataset().to_list())


@dataclass
class Items:
    """Every protected text of the benchmarks: one item per (benchmark row, field)."""

    texts: list[str] = field(default_factory=list)
    benchmark: list[int] = field(default_factory=list)
    item_id: list[str] = field(default_factory=list)
    field_name: list[str] = field(default_factory=list)


def _read_items(source: BenchmarkSource, number: int, items: Items) -> dict[str, Any]:
    table = source.table()
    if table.num_rows == 0:
        raise SynthkilnError(f"benchmark '{source.name}': {source.location} holds no rows")
    fields = source.fields or tuple(
        f.name
        for f in table.schema
        if (pa.types.is_string(f.type) or pa.types.is_large_string(f.type)) and f.name != source.id_field
    )
    missing = [f for f in fields if f not in table.schema.names]
    if missing or not fields:
        raise SynthkilnError(
            f"benchmark '{source.name}': {source.location} has no field {', '.join(map(repr, missing))} "
            f"(fields: {', '.join(table.schema.names)}); choose with --benchmark-fields or `fields`"
        )
    if source.id_field is not None and source.id_field not in table.schema.names:
        raise SynthkilnError(
            f"benchmark '{source.name}': {source.location} has no id field '{source.id_field}'"
        )
    ids = (
        [str(v) for v in table.column(source.id_field).to_pylist()]
        if source.id_field
        else [str(r) for r in range(table.num_rows)]
    )
    before = len(items.texts)
    for name in fields:
        for row, value in enumerate(table.column(name).to_pylist()):
            text = _as_text(value)
            if text:
                items.texts.append(text)
                items.benchmark.append(number)
                items.item_id.append(ids[row])
                items.field_name.append(name)
    return {"rows": table.num_rows, "fields": list(fields), "items": len(items.texts) - before}


def _as_text(value: Any) -> str | None:
    """Strings as they are; lists (choices) and mappings (ARC's choices) as their joined strings."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        parts = [_as_text(v) for v in value]
        return "\n".join(p for p in parts if p)
    return str(value)


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
            read = _read_items(source, number, items)
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
        order = np.lexsort((position, item, document))
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


# -- corpus mode -------------------------------------------------------------------------------------


@dataclass
class DecontaminationReport:
    rows: int = 0
    kept: int = 0
    removed: int = 0
    quarantined: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    benchmarks: list[dict[str, Any]] = field(default_factory=list)


_CORPUS_FORMAT = "synthkiln-decontaminate/1"


def decontaminate_corpus(
    inputs: list[Path],
    out_dir: Path,
    config: DecontaminateConfig,
    text_field: str = "text",
    progress: bool = True,
) -> DecontaminationReport:
    """One pass: each input file's rows split into `data/` and `rejected/` shards, then the manifest."""
    sources = iter_sources(inputs, text_field)  # every input is found before anything is written
    report = DecontaminationReport()
    started = time.perf_counter()
    index = ContaminationIndex.for_config(config, progress=progress)
    report.seconds["index"] = time.perf_counter() - started
    mark = time.perf_counter()
    hit_items: dict[str, set[str]] = {b["name"]: set() for b in index.benchmarks}
    removed: dict[str, int] = dict.fromkeys(hit_items, 0)
    prepare_output(out_dir, _CORPUS_FORMAT)
    with tqdm(desc="decontaminate", unit="row", disable=not progress) as bar:
        for number, source in enumerate(sources):
            kept_parts, rejected_parts = [], []
            for batch in source.batches():
                texts = batch.column(text_field)
                null = pc.is_null(texts).to_numpy(zero_copy_only=False)
                matches = index.find(pc.fill_null(texts, ""))
                for match in matches:
                    if match is not None:
                        hit_items[match.benchmark].add(f"{match.item_id}/{match.field}")
                        removed[match.benchmark] += 1
                dropped = null | np.array([m is not None for m in matches], bool)
                kept_parts.append(batch.filter(pa.array(~dropped)))
                if dropped.any():
                    rejected = batch.append_column("contamination", contamination_column(matches))
                    reasons = [
                        f"null {text_field}" if n else (f"contaminated:{m.benchmark}" if m else None)
                        for n, m in zip(null, matches, strict=True)
                    ]
                    rejected = rejected.append_column("reason", pa.array(reasons, pa.string()))
                    rejected_parts.append(rejected.filter(pa.array(dropped)))
                report.rows += len(batch)
                report.quarantined += int(null.sum())
                report.removed += int((dropped & ~null).sum())
                bar.update(len(batch))
            write_parts(out_dir, number, kept_parts, rejected_parts)
    report.kept = report.rows - report.removed - report.quarantined
    report.seconds["check"] = time.perf_counter() - mark
    report.benchmarks = [
        {**b, "items_hit": len(hit_items[b["name"]]), "rows_removed": removed[b["name"]]}
        for b in index.describe()
    ]
    manifest = {
        "format": _CORPUS_FORMAT,
        "inputs": [str(s.path) for s in sources],
        "parameters": {"text_field": text_field, **config.model_dump(mode="json", exclude={"benchmarks", "text_field", "seeds"})},
        "rows": report.rows, "kept": report.kept, "removed": report.removed, "quarantined": report.quarantined,
        "decontaminated_against": report.benchmarks,
        "seconds": {k: round(v, 3) for k, v in report.seconds.items()},
    }  # fmt: skip
    write_text_atomic(out_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return report
