"""Diversity of accepted rows: per shard and cumulative as a run commits them, on any dataset
(`synthkiln diversity`), and flagged where it concentrates.

Lexical figures come from `kernels/diversity.py` on Arrow buffers (`distinct_1..3`, `ngram_entropy_2`,
`compression_ratio`: zlib level 6, `opening_concentration`) and the response structure classifier;
embedding figures (`embedding_spread`, `vendi_score`, `cluster_coverage`) from MiniLM on a reservoir
sample of the accepted rows (`kernels/embedding_diversity.py`), each row embedded once, at the commit
that brings it into the sample. `near_duplicate_rate` is the dedup stage's
rejections over the rows that reached it, per shard and cumulative.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synthkiln.engine.config import ConcentrationConfig, DiversityConfig
from synthkiln.engine.errors import SynthkilnError
from synthkiln.engine.executor import LocalExecutor
from synthkiln.kernels.diversity import LexicalStats, structure_counts
from synthkiln.kernels.embedding_diversity import (
    DEFAULT_CLUSTERS,
    Reservoir,
    embedding_spread,
    kmeans,
    unit_rows,
    vendi_score,
)

if TYPE_CHECKING:
    from synthkiln.engine.output.writer import DatasetWriter

CATEGORIES = ("format", "difficulty", "persona")  # rendered choices recorded on rows
MIN_CLUSTER_SHARE = 0.01  # a cluster counts as covered from this share of the sample
_EXAMPLES = 3


class DiversityTracker:
    """Diversity of the rows passed to `update`, shard by shard; `summary` gives the cumulative figures
    and the concentration flags. A resumed run replays its committed rows through `restore`."""

    def __init__(
        self,
        config: DiversityConfig | None = None,
        text_field: str = "response",
        executor: LocalExecutor | None = None,
    ) -> None:
        self.config = config or DiversityConfig()
        self.executor = executor or LocalExecutor()  # where the sample is embedded
        self.embeddings = embeddings_on(self.config)
        self.text_field = text_field
        self.lexical = LexicalStats()
        self.reservoir: Reservoir[str] = Reservoir(self.config.sample_size, seed=0)
        self.distributions: dict[str, Counter[str]] = {name: Counter() for name in (*CATEGORIES, "structure")}
        self.near_duplicates = self.reached_dedup = 0
        self.deduplicated = False  # rows came from a run with its dedup stage's rejections
        self._vectors: dict[int, np.ndarray] = {}  # MiniLM vectors by stream position
        prepare(self.config)

    def update(self, kept: pa.Table, rejected: pa.Table | None = None) -> dict[str, Any]:
        """Add one shard's accepted rows (and its rejected ones, for the near-duplicate rate); return
        the shard's own figures."""
        texts = _texts(kept, self.text_field)
        shard = LexicalStats()
        shard.update(texts)
        self.lexical.merge(shard)
        self.reservoir.add(texts.fill_null("").to_pylist())
        structure = Counter({label: count for label, count in structure_counts(texts).items() if count})
        self.distributions["structure"].update(structure)
        for name in CATEGORIES:
            if name in kept.column_names:
                self.distributions[name].update(v for v in kept.column(name).to_pylist() if v is not None)
        near = self._count_near_duplicates(rejected, kept.num_rows)
        lexical = shard.summary()
        return {
            **{key: _rounded(value) for key, value in lexical.items() if key != "top_openings"},
            "near_duplicate_rate": (
                _rounded(near / (near + kept.num_rows))
                if self.deduplicated and near + kept.num_rows
                else None
            ),
            "structure": dict(sorted(structure.items())),
        }

    def record(self, kept: pa.Table | None, rejected: pa.Table | None, manifest: dict[str, Any]) -> None:
        """A run's commit (the writer's `on_commit`): the shard's figures, the cumulative ones and the
        flags, into the manifest's `diversity`. The reservoir's new rows are embedded here, as they
        come, so the run's end does not wait for the whole sample to be embedded."""
        self.deduplicated = bool(manifest["recipe"]["dedup"]["enabled"])
        diversity = manifest.setdefault("diversity", {"shards": [], "cumulative": {}})
        if kept is not None and kept.num_rows:
            diversity["shards"].append({"commit": manifest["commits"], **self.update(kept, rejected)})
        elif rejected is not None:
            self._count_near_duplicates(rejected, 0)
        diversity["cumulative"] = self.summary()

    def restore_run(self, writer: DatasetWriter) -> None:
        """Rebuild the cumulative state of a resumed run from its committed rows (in commit order)."""
        if not writer.manifest["commits"]:
            return
        self.deduplicated = bool(writer.manifest["recipe"]["dedup"]["enabled"])
        committed = writer.committed_rows([self.text_field, *CATEGORIES])
        if committed.num_rows:
            self.update(committed)
        near = writer.manifest["funnel"]["rejected"].get("dedup", {}).get("near-duplicate", 0)
        self.near_duplicates += near
        self.reached_dedup += near

    def _count_near_duplicates(self, rejected: pa.Table | None, kept: int) -> int:
        near = 0
        if rejected is not None and rejected.num_rows:
            near = pc.sum(pc.equal(rejected.column("reason"), "near-duplicate")).as_py() or 0
        self.near_duplicates += near
        self.reached_dedup += near + kept
        return near

    def summary(self) -> dict[str, Any]:
        """The cumulative figures (the MiniLM ones too, unless the config turns them off)."""
        lexical = self.lexical.summary()
        figures: dict[str, Any] = {
            key: _rounded(value) for key, value in lexical.items() if key != "top_openings"
        }
        figures["near_duplicate_rate"] = (  # None: not measured (a corpus, or dedup off)
            _rounded(self.near_duplicates / self.reached_dedup)
            if self.deduplicated and self.reached_dedup
            else None
        )
        figures["distributions"] = {
            name: dict(counts.most_common()) for name, counts in self.distributions.items() if counts
        }
        clusters: list[tuple[float, list[str]]] = []
        if self.embeddings and len(self.reservoir) >= 2:
            figures.update(self._embedding_figures(clusters))
        figures["flags"] = self._flags(lexical, figures["distributions"], clusters)
        return figures

    def _embedding_figures(self, clusters: list[tuple[float, list[str]]]) -> dict[str, Any]:
        sample = self.reservoir.items
        rows = unit_rows(self._sample_vectors())
        k = min(DEFAULT_CLUSTERS, len(rows))
        _, labels = kmeans(rows, k, 0)
        counts = np.bincount(labels, minlength=k)
        for cluster in np.argsort(-counts, kind="stable")[:1]:
            members = [sample[i] for i in np.flatnonzero(labels == cluster)[:_EXAMPLES]]
            clusters.append((float(counts[cluster] / len(rows)), members))
        return {
            "embedding_spread": _rounded(embedding_spread(rows)),
            "vendi_score": _rounded(vendi_score(rows)),
            "cluster_coverage": _rounded(
                float(np.count_nonzero(counts >= MIN_CLUSTER_SHARE * len(rows)) / k)
            ),
            "sample_size": len(rows),
        }

    def _sample_vectors(self) -> np.ndarray:
        """MiniLM vectors of the reservoir's rows, embedding only those not embedded at an earlier call."""
        positions = self.reservoir.indices.tolist()
        new = [slot for slot, position in enumerate(positions) if position not in self._vectors]
        chunks = [new[start : start + EMBED_CHUNK] for start in range(0, len(new), EMBED_CHUNK)]
        for slots, vectors in self.executor.map(
            embed_texts,
            None,
            chunks,
            payload=lambda slots: [self.reservoir.items[s] for s in slots],
            gpus=self.executor.gpu_share(),
        ):
            for slot, vector in zip(slots, vectors, strict=True):
                self._vectors[positions[slot]] = vector
        self._vectors = {position: self._vectors[position] for position in positions}  # drop replaced rows
        return np.stack([self._vectors[position] for position in positions])

    def _flags(
        self,
        lexical: dict[str, Any],
        distributions: dict[str, dict[str, int]],
        clusters: list[tuple[float, list[str]]],
    ) -> list[dict[str, Any]]:
        """A breach of a `max_share` limit: what, its share, the limit, and examples."""
        limits: ConcentrationConfig = self.config.max_share
        flags: list[dict[str, Any]] = []
        if self.lexical.rows < limits.min_rows:  # a share of a handful of rows says nothing yet
            return flags
        top = lexical["top_openings"]
        if top and top[0]["share"] > limits.opening:
            flags.append(_flag("opening", top[0]["share"], limits.opening, [top[0]["opening"]]))
        _, bigram_counts = self.lexical.ngrams[1].stored()  # the bigrams are the counted n-grams
        bigrams = int(self.lexical.totals[1])
        if bigrams and bigram_counts.max() / bigrams > limits.ngram:
            flags.append(_flag("ngram", float(bigram_counts.max() / bigrams), limits.ngram, []))
        for share, members in clusters:
            if share > limits.cluster:
                flags.append(_flag("cluster", share, limits.cluster, members))
        for name in ("format", "persona"):
            counts = distributions.get(name)
            if not counts or len(counts) < 2:  # one listed value is the recipe's choice, not a drift
                continue
            value, count = next(iter(counts.items()))
            share = count / sum(counts.values())
            if share > getattr(limits, name):
                flags.append(_flag(name, share, getattr(limits, name), [value]))
        return flags


EMBED_CHUNK = 512  # sample rows embedded per call (per Ray task)


def embed_texts(_: None, texts: list[str]) -> np.ndarray:
    """MiniLM vectors of `texts`, with this process's model (a Ray worker loads its own once)."""
    from synthkiln.engine.embeddings import embed  # loads MiniLM: only when asked

    return embed(texts)


def embeddings_on(config: DiversityConfig) -> bool:
    """Whether the MiniLM figures are measured: as set, or (auto) where a GPU is present."""
    if config.embeddings != "auto":
        return config.embeddings
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def prepare(config: DiversityConfig) -> None:
    """Load MiniLM and the lexical kernels now, before generation (as the teachers are), not at the
    first commit; a missing MiniLM wheel stops the run before anything is generated."""
    from synthkiln.engine.embeddings import shared_embedder

    warm = pa.array(["warm up the kernels"])
    shard, cumulative = LexicalStats(), LexicalStats()
    shard.update(warm)
    cumulative.merge(shard)
    cumulative.summary()
    structure_counts(warm)
    if not embeddings_on(config):
        return
    try:
        shared_embedder()
    except SynthkilnError as exc:
        raise SynthkilnError(f"{exc}; or set diversity.embeddings = false") from None


def _flag(kind: str, share: float, limit: float, examples: list[str]) -> dict[str, Any]:
    return {"kind": kind, "share": _rounded(share), "max_share": limit, "examples": examples}


def _texts(table: pa.Table, field: str) -> pa.Array:
    column = table.column(field)
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _rounded(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value
