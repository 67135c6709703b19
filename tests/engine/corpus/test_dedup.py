"""`synthkiln dedup`'s disk-partitioned clusters against the in-memory reference (`cluster_duplicates`)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from synthkiln.engine.corpus import run_corpus_command
from synthkiln.engine.corpus.components import Round, connected_components, save_edges
from synthkiln.engine.corpus.dedup import (
    VERDICT,
    ChunkStore,
    ClusterSpec,
    Dedup,
    Verdicts,
    decide_clusters,
    two_decimals,
    verdict_file,
)
from synthkiln.engine.corpus.index import SignatureFile, load_index
from synthkiln.engine.corpus.shuffle import offsets, save_whole
from synthkiln.engine.executor import LocalExecutor
from synthkiln.kernels.lsh import cluster_duplicates, keepers, union_find
from synthkiln.kernels.minhash import minhash_signatures, shingle_hashes
from synthkiln.kernels.similarity import shingle_sets


def planted_corpus(gsm8k_dir: Path, path: Path, documents: int = 6000) -> list[str]:
    """GSM8K train text with one in five documents copied later with a word or two changed, and some
    copied twice (clusters of three), plus empty and null rows."""
    lines = (gsm8k_dir / "train.jsonl").read_text().splitlines()[:documents]
    texts: list[str | None] = [json.loads(x)["question"] + " " + json.loads(x)["answer"] for x in lines]
    rng = random.Random(7)
    for index in range(0, documents, 5):
        for _ in range(1 + (index % 15 == 0)):
            words = str(texts[index]).split()
            for _ in range(rng.choice([1, 2])):
                words[rng.randrange(len(words))] = rng.choice(["zebra", "quartz", "violin"])
            texts.insert(rng.randrange(index + 1, len(texts) + 1), " ".join(words))
    texts[10], texts[11] = None, ""
    path.write_text("".join(json.dumps({"text": t, "score": i % 11}) + "\n" for i, t in enumerate(texts)))
    return texts  # type: ignore[return-value]


@pytest.fixture(scope="module")
def corpus(gsm8k_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    return path, planted_corpus(gsm8k_dir, path)


@pytest.mark.parametrize(
    ("keep", "exact"), [("first", False), ("longest", False), ("score:score", False), ("first", True)]
)
def test_partitioned_clusters_equal_the_in_memory_ones(
    corpus, tmp_path: Path, keep: str, exact: bool
) -> None:
    """Many signing batches and many partition ranges (band keys, edges, clusters) give exactly the
    in-memory pass's clusters, kept rows, `duplicate_of` and similarities."""
    path, texts = corpus
    lines = path.read_text().splitlines(keepends=True)
    halves = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]  # global row numbers run across inputs
    halves[0].write_text("".join(lines[:3333]))
    halves[1].write_text("".join(lines[3333:]))
    command = Dedup("text", 0.7, keep=keep, exact=exact, partition_mb=1)
    command.batch_rows = 1000
    executor = LocalExecutor()
    executor.workers = 4  # as many ranges as a 4-worker cluster gets, run here one after another
    manifest = run_corpus_command(command, halves, tmp_path / "out", progress=False, executor=executor)
    assert manifest["partitions_grouped"] >= 4
    assert manifest["component_rounds"] >= 2  # clusters across ranges, joined by the rounds

    signatures = minhash_signatures(texts)
    priority = {
        "first": None,
        "longest": np.array([len(t or "") for t in texts], float),
        "score:score": np.array([i % 11 for i in range(len(texts))], float),
    }[keep]
    shingles = shingle_sets(*shingle_hashes([t or "" for t in texts])) if exact else None
    reference = cluster_duplicates(signatures, 0.7, priority, shingles=shingles)
    dropped = np.flatnonzero(~reference.keep & np.array([t is not None for t in texts]))
    assert 1280 <= len(dropped) < 1700  # at least the 1280 planted copies, found
    assert manifest["removed"] == len(dropped)
    assert manifest["clusters_with_duplicates"] == len(np.unique(reference.cluster[dropped]))

    kept = pq.read_table(tmp_path / "out" / "data").column("text").to_pylist()
    assert kept == [t for t, k in zip(texts, reference.keep, strict=True) if k and t is not None]
    removed = [
        r for r in pq.read_table(tmp_path / "out" / "rejected").to_pylist() if r["reason"] == "near-duplicate"
    ]
    assert [r["text"] for r in removed] == [texts[row] for row in dropped]
    assert [r["cluster_id"] for r in removed] == reference.cluster[dropped].tolist()
    np.testing.assert_allclose([r["similarity"] for r in removed], reference.similarity[dropped], rtol=1e-6)
    named = [
        f"{halves[1].name}:{t - 3333}" if t >= 3333 else f"{halves[0].name}:{t}"
        for t in reference.duplicate_of[dropped].tolist()
    ]
    assert [r["duplicate_of"] for r in removed] == named
    assert [r["detail"] for r in removed] == [
        f"near-duplicate of {name} (estimated Jaccard {similarity:.2f})"
        for name, similarity in zip(named, reference.similarity[dropped].tolist(), strict=True)
    ]
    with np.load(tmp_path / "out" / manifest["index"]) as index:  # kept rows, named by input and row
        files, rows = index["files"].tolist(), index["rows"]
    kept_rows = np.flatnonzero(reference.keep & np.array([t is not None for t in texts]))
    assert files == ["a.jsonl", "b.jsonl"] and len(rows) == len(kept_rows)
    np.testing.assert_array_equal(rows[:, 0], kept_rows >= 3333)
    np.testing.assert_array_equal(rows[:, 1], np.where(kept_rows >= 3333, kept_rows - 3333, kept_rows))


def test_index_of_kept_signatures_is_written_from_disk(corpus, tmp_path: Path) -> None:
    """Most rows kept: the signature file the tasks wrote becomes the index's `.npy` (every row's
    signature, removed ones unread), and the kept rows load back with their names."""
    path, texts = corpus
    command = Dedup("text", 0.7)
    command.batch_rows = 2500
    out = tmp_path / "out"
    manifest = run_corpus_command(command, [path], out, progress=False)
    assert manifest["files"] == ["index-r1.npz", "index-r1.npy"]
    reference = cluster_duplicates(minhash_signatures(texts), 0.7)
    kept = np.flatnonzero(reference.keep & np.array([t is not None for t in texts]))
    assert len(kept) < len(texts) - 1000  # duplicates and the null row are not in the index
    assert np.load(out / "index-r1.npy", mmap_mode="r").shape == (len(texts), 128)  # renamed, not copied
    stored, names = load_index(out / manifest["index"], 128, 5)
    assert len(stored) == len(kept) == manifest["kept"]
    assert names == [f"corpus.jsonl:{row}" for row in kept]
    np.testing.assert_array_equal(stored, minhash_signatures([texts[i] for i in kept]))


def test_index_of_a_mostly_duplicated_corpus_holds_the_kept_rows_only(tmp_path: Path) -> None:
    """Fewer than half the rows kept: their signatures are copied out, so the index stays the size of
    what it indexes."""
    originals = [
        f"story {i} of a long series: {' '.join(str(i * k + 7) for k in range(14))}" for i in range(30)
    ]
    texts = [f"{text} copy{copy}" for copy in range(4) for text in originals]  # four near-copies of each
    path = tmp_path / "copies.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    manifest = run_corpus_command(Dedup("text", 0.7), [path], tmp_path / "out", progress=False)
    assert (manifest["kept"], manifest["removed"]) == (30, 90)
    assert np.load(tmp_path / "out" / "index-r1.npy", mmap_mode="r").shape == (30, 128)
    stored, names = load_index(tmp_path / "out" / manifest["index"], 128, 5)
    assert names == [f"copies.jsonl:{row}" for row in range(30)]
    np.testing.assert_array_equal(stored, minhash_signatures(texts[:30]))


def test_scratch_folder_is_inside_the_output_and_removed(corpus, tmp_path: Path, monkeypatch) -> None:
    import synthkiln.engine.corpus.dedup as dedup_module

    path, _ = corpus
    seen: list[list[str]] = []
    group = dedup_module.group_partitions

    def watched(spec, span):  # what the scratch directory holds while the clusters are found
        work = Path(spec.store.work)
        seen.append([str(work.parent.relative_to(tmp_path)), *sorted(p.name for p in work.iterdir())])
        assert work.is_absolute() and re.fullmatch("[0-9a-f]{32}", work.name)  # this command's own
        return group(spec, span)

    monkeypatch.setattr(dedup_module, "group_partitions", watched)
    run_corpus_command(Dedup("text", 0.7), [path], tmp_path / "out", progress=False)
    chunks = len(seen[0]) - 2
    assert chunks >= 1 and seen[0] == [
        "out/.synthkiln-work",
        *sorted([f"bands-{c}.npy" for c in range(chunks)] + ["signatures.npy"]),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert ".synthkiln-work" not in {p.name for p in (tmp_path / "out").iterdir()}

    def failing(spec, span):
        raise RuntimeError("grouping failed")

    monkeypatch.setattr(dedup_module, "group_partitions", failing)
    with pytest.raises(RuntimeError, match="grouping failed"):
        run_corpus_command(Dedup("text", 0.7), [path], tmp_path / "again", progress=False)
    assert list((tmp_path / "again").iterdir()) == []  # no scratch left, nothing written


def test_a_big_input_is_written_in_several_shards(corpus, tmp_path: Path, monkeypatch) -> None:
    """Rows are not all held for one shard: past SHARD_BYTES a piece is written (same rows, same order)."""
    import synthkiln.engine.corpus as corpus_module

    path, _ = corpus
    whole = run_corpus_command(Dedup("text", 0.7), [path], tmp_path / "whole", progress=False)
    monkeypatch.setattr(corpus_module, "SHARD_BYTES", 256 << 10)
    command = Dedup("text", 0.7)
    command.batch_rows = 500
    pieces = run_corpus_command(command, [path], tmp_path / "pieces", progress=False)
    assert len(whole["shards"]["data"]) == 1 and len(pieces["shards"]["data"]) >= 4
    assert [s["path"] for s in pieces["shards"]["data"]][:2] == [
        "data/part-r1-00000.parquet",
        "data/part-r1-00001.parquet",
    ]
    assert pq.read_table(tmp_path / "pieces" / "data").column("text").to_pylist() == (
        pq.read_table(tmp_path / "whole" / "data").column("text").to_pylist()
    )


@pytest.mark.parametrize("keep", ["first", "longest", "score:score"])
def test_a_corpus_without_duplicates_keeps_every_row(tmp_path: Path, keep: str) -> None:
    texts = [
        f"document {i} says something of its own: {' '.join(str(i * k) for k in range(12))}"
        for i in range(50)
    ]
    path = tmp_path / "distinct.jsonl"
    path.write_text("".join(json.dumps({"text": t, "score": i}) + "\n" for i, t in enumerate(texts)))
    manifest = run_corpus_command(Dedup("text", 0.8, keep=keep), [path], tmp_path / "out", progress=False)
    assert (manifest["kept"], manifest["removed"]) == (50, 0)
    assert pq.read_table(tmp_path / "out" / "data").column("text").to_pylist() == texts
    stored, names = load_index(tmp_path / "out" / manifest["index"], 128, 5)
    assert stored.shape == (50, 128) and names == [f"distinct.jsonl:{row}" for row in range(50)]


def test_keepers_after_many_component_rounds(tmp_path: Path) -> None:
    """Clusters that take several rounds (a long chain) get the kept row `keepers` picks on the whole
    graph: highest `--keep longest` priority, ties to the lowest row, with each removed row's estimated
    similarity to it; verdicts read back by row range, an empty verdict file among them."""
    rng = np.random.default_rng(5)
    count = 3000
    signatures = rng.integers(0, 4, size=(count, 128)).astype(np.uint32)  # pairs agree on ~1/4
    priority = rng.integers(0, 4, count).astype(np.float64)  # many ties
    signature_file = SignatureFile(str(tmp_path / "signatures.npy"), 128)
    signature_file.create()
    for chunk in (2, 0, 1):  # tasks finish in any order
        signature_file.write(chunk * 1000, signatures[chunk * 1000 : (chunk + 1) * 1000])
        save_whole(tmp_path / f"priority-{chunk}.npy", priority[chunk * 1000 : (chunk + 1) * 1000])
    signature_file.seal(count)
    store = ChunkStore(str(tmp_path), signature_file, np.array([0, 1000, 2000, 3000]), exact=False)
    chain = rng.permutation(count)[:1200]
    first = np.concatenate([chain[:-1], rng.integers(0, count, 600)])
    second = np.concatenate([chain[1:], rng.integers(0, count, 600)])
    first, second = first[first != second], second[first != second]
    counts = [save_edges(str(tmp_path), 0, 0, first, second, both_ways=True)]
    executor = LocalExecutor()
    executor.workers = 4
    stars, ranges = connected_components(executor, Round(str(tmp_path), 0, offsets(counts)), partition_mb=256)
    assert stars.number >= 4 and len(ranges) >= 4
    decided = [
        r for _, r in executor.map(decide_clusters, ClusterSpec(store, stars, "longest"), enumerate(ranges))
    ]
    save_whole(verdict_file(str(tmp_path), len(ranges)), np.zeros(0, VERDICT))  # a range without centres
    verdicts = Verdicts([verdict_file(str(tmp_path), task) for task in range(len(ranges) + 1)])

    cluster = union_find(count, first, second)
    keeper = keepers(cluster, priority)
    nodes = np.unique(np.concatenate([first, second]))
    dropped = nodes[keeper[nodes] != nodes]
    assert len(dropped) > 1000 and sum(removed for removed, _ in decided) == len(dropped)
    found = verdicts.between(0, count)
    np.testing.assert_array_equal(found.rows, nodes)
    np.testing.assert_array_equal(found.cluster, cluster[nodes])
    np.testing.assert_array_equal(found.duplicate_of, np.where(keeper[nodes] == nodes, -1, keeper[nodes]))
    expected = (signatures[dropped] == signatures[keeper[dropped]]).mean(axis=1)
    np.testing.assert_allclose(found.similarity[~found.keep], expected)
    middle = verdicts.between(1000, 2000)
    np.testing.assert_array_equal(middle.rows, nodes[(nodes >= 1000) & (nodes < 2000)])


def test_similarities_are_written_as_python_formats_them() -> None:
    """Two decimals as `f"{value:.2f}"` gives them, including fractions whose binary value sits just
    below or above the halfway point (scaling by 100 and rounding gets those wrong)."""
    values = np.array([191 / 200, 1 / 40, 0.125, 1.0, 103 / 128, 191 / 200])
    assert two_decimals(values).to_pylist() == ["0.95", "0.03", "0.12", "1.00", "0.80", "0.95"]
