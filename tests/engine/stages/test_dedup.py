from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synthkiln.engine import Pipeline
from synthkiln.engine.corpus.index import load_index
from synthkiln.engine.errors import SynthkilnError
from synthkiln.engine.schema import ROW_SCHEMA
from synthkiln.engine.stages.dedup import NearDuplicates
from synthkiln.kernels.minhash import shingle_hashes
from tests.conftest import REPO, synthkiln_command


@pytest.fixture(scope="module")
def planted(gsm8k_dir, tmp_path_factory) -> tuple[Path, dict[int, int]]:
    """A JSONL corpus of GSM8K text where every fourth document has an edited copy later on."""
    rows = [json.loads(line) for line in (gsm8k_dir / "train.jsonl").read_text().splitlines()[:200]]
    rng = random.Random(3)
    texts = [r["question"] + " " + r["answer"] for r in rows]
    copies = {}
    for index in range(0, 200, 4):
        words = texts[index].split()
        words[rng.randrange(len(words))] = "hippopotamuses"
        copies[len(texts)] = index
        texts.append(" ".join(words) + " too")  # one more word: the copy is at least as long
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t, "score": i % 7}) + "\n" for i, t in enumerate(texts)))
    return path, copies


def exact_jaccard(a: str, b: str) -> float:
    hashes, offsets = shingle_hashes([a, b])
    first, second = (
        set(hashes[offsets[0] : offsets[1]].tolist()),
        set(hashes[offsets[1] : offsets[2]].tolist()),
    )
    return len(first & second) / len(first | second)


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*synthkiln_command(), *args], capture_output=True, text=True, cwd=REPO, check=check
    )


def test_corpus_dedup_removes_planted_copies(planted, tmp_path: Path) -> None:
    corpus, copies = planted
    out = tmp_path / "first"
    done = run("dedup", str(corpus), "--out", str(out), "--threshold", "0.7", "--quiet")
    assert "removed" in done.stdout
    kept = pq.read_table(out / "data").column("text").to_pylist()
    removed = pq.read_table(out / "rejected").to_pylist()
    assert len(kept) + len(removed) == 250
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    clear = [c for c, o in copies.items() if exact_jaccard(texts[c], texts[o]) >= 0.75]
    assert len(clear) >= 0.7 * len(copies)  # most plants are clearly above the threshold...
    removed_texts = {row["text"] for row in removed}
    assert all(texts[c] in removed_texts for c in clear)  # ...and every one of those is removed
    for row in removed:
        assert row["reason"] == "near-duplicate" and row["similarity"] >= 0.7
        source, line = row["duplicate_of"].split(":")
        assert source == "corpus.jsonl" and int(line) in copies.values()  # keep=first keeps the original
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == 250 and manifest["removed"] == len(removed)

    exact = tmp_path / "exact"
    run("dedup", str(corpus), "--out", str(exact), "--threshold", "0.7", "--exact", "--quiet")
    exact_removed = pq.read_table(exact / "rejected").to_pylist()
    assert len(exact_removed) >= len(clear)
    for row in exact_removed:
        kept_text = texts[int(row["duplicate_of"].split(":")[1])]
        assert row["similarity"] == pytest.approx(exact_jaccard(row["text"], kept_text), abs=1e-6)

    longest = tmp_path / "longest"
    run("dedup", str(corpus), "--out", str(longest), "--threshold", "0.7", "--keep", "longest", "--quiet")
    by_text = {row["text"]: row for row in pq.read_table(longest / "rejected").to_pylist()}
    kept_longest = set(pq.read_table(longest / "data").column("text").to_pylist())
    # a copy has one more word (as many characters where the replaced word was long): the longer copy
    # stays and its original goes, pointing at it
    longer = [c for c in clear if len(texts[c]) > len(texts[copies[c]])]
    assert len(longer) >= 0.9 * len(clear)
    assert [int(by_text[texts[copies[c]]]["duplicate_of"].split(":")[1]) for c in longer] == longer
    assert all(texts[c] in kept_longest for c in longer)


def test_corpus_index_is_reused_by_the_stage(planted, tmp_path: Path) -> None:
    corpus, _ = planted
    out = tmp_path / "indexed"
    run("dedup", str(corpus), "--out", str(out), "--threshold", "0.7", "--quiet")
    index = out / "index-r1.npz"
    assert json.loads((out / "manifest.json").read_text())["index"] == index.name and index.is_file()
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    stage = NearDuplicates(threshold=0.7, text_field="text", against=[str(out)])
    _, rejected = stage.process(pa.RecordBatch.from_pylist([{"id": "new", "text": texts[5]}]))
    assert rejected.column("duplicate_of").to_pylist() == ["corpus.jsonl:5"]
    with pytest.raises(SynthkilnError, match="built with num_perm=128"):
        NearDuplicates(num_perm=64, text_field="text", against=[str(out)])
    signatures, names = load_index(index, 128, 5)
    with np.load(index) as stored:  # as synthkiln wrote it before the signatures had a file of their own
        small = {k: stored[k] for k in ("files", "rows", "num_perm", "ngram", "scheme")}
    (out / "index-r1.npy").rename(tmp_path / "moved.npy")
    with pytest.raises(SynthkilnError, match=r"index-r1\.npy: cannot read the index's signatures"):
        NearDuplicates(text_field="text", against=[str(out)])
    np.savez(index, signatures=signatures, **small)
    older = NearDuplicates(threshold=0.7, text_field="text", against=[str(out)])
    _, rejected = older.process(pa.RecordBatch.from_pylist([{"id": "new", "text": texts[5]}]))
    assert rejected.column("duplicate_of").to_pylist() == ["corpus.jsonl:5"]
    assert len(names) == len(signatures) > 100
    np.savez(index, signatures=signatures, **{k: v for k, v in small.items() if k != "scheme"})  # scheme 1
    with pytest.raises(SynthkilnError, match=r"hashing scheme 1.*rebuild"):
        NearDuplicates(text_field="text", against=[str(out)])


def test_restore_keeps_ids_aligned_past_empty_rows(tmp_path: Path) -> None:
    first = NearDuplicates(threshold=0.7)
    kept, _ = first.process(
        rows(["...", "alpha beta gamma delta epsilon zeta eta", "one two three four five six"], "a")
    )
    assert len(kept) == 3  # punctuation only: an empty signature, kept but never matched
    pq.write_table(pa.Table.from_batches([kept.select(["id", "minhash"])]), tmp_path / "shard.parquet")
    committed = pq.read_table(tmp_path / "shard.parquet")  # as the writer's shards come back
    restored = NearDuplicates(threshold=0.7)
    restored.restore(committed)
    _, rejected = restored.process(rows(["one two three four five six"], "b"))
    assert rejected.column("duplicate_of").to_pylist() == ["a2"]
    older = committed.cast(
        pa.schema([committed.schema.field("id"), committed.schema.field("minhash").remove_metadata()])
    )
    with pytest.raises(SynthkilnError, match=r"hashing scheme 1.*--fresh"):
        NearDuplicates(threshold=0.7).restore(older)  # shards of a synthkiln before the scheme was recorded


def test_keep_by_score_column(planted, tmp_path: Path) -> None:
    corpus, _ = planted
    out = tmp_path / "score"
    run("dedup", str(corpus), "--out", str(out), "--threshold", "0.7", "--keep", "score:score", "--quiet")
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    rejected = pq.read_table(out / "rejected").to_pylist()
    assert len(rejected) >= 45  # 50 planted copies, recall ~0.98 at this threshold
    scores = [(rows[int(r["duplicate_of"].split(":")[1])]["score"], r["score"]) for r in rejected]
    assert all(kept >= removed for kept, removed in scores)  # the highest score of a cluster stays
    # `--keep first` would keep the original whatever its score: here the copy won where it scored higher
    assert sum(rows[int(r["duplicate_of"].split(":")[1])]["text"].endswith(" too") for r in rejected) >= 10
    bad = run(
        "dedup", str(corpus), "--out", str(tmp_path / "x"), "--keep", "score:missing", "--quiet", check=False
    )
    assert (
        bad.returncode == 2 and "corpus.jsonl: no field 'missing' (from --keep score:missing)" in bad.stderr
    )
    words = tmp_path / "words.jsonl"  # a score field of words, not numbers
    words.write_text(
        "".join(json.dumps({"text": f"row {n} of a corpus", "score": "high"}) + "\n" for n in range(3))
    )
    bad = run(
        "dedup", str(words), "--out", str(tmp_path / "y"), "--keep", "score:score", "--quiet", check=False
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert (
        f"error: {words}: field 'score' (from --keep score:score) must hold numbers; it holds string"
        in bad.stderr
    )
    assert not (tmp_path / "y" / "manifest.json").exists()


def test_bad_input_is_named_or_quarantined(tmp_path: Path) -> None:
    wrong_field = tmp_path / "a.jsonl"
    wrong_field.write_text('{"body": "hello there"}\n')
    failed = run("dedup", str(wrong_field), "--out", str(tmp_path / "o1"), "--quiet", check=False)
    assert failed.returncode == 2 and "a.jsonl: no field 'text'" in failed.stderr
    assert not (tmp_path / "o1").exists()  # nothing half-written
    broken = tmp_path / "b.jsonl"
    broken.write_bytes(b'{"text": "fine"}\n{"text": "bad \xff\xfe bytes"}\n')
    failed = run("dedup", str(broken), "--out", str(tmp_path / "o2"), "--quiet", check=False)
    assert failed.returncode == 2 and "b.jsonl: line 2" in failed.stderr
    nulls = tmp_path / "c.parquet"
    pq.write_table(
        pa.table({"text": pa.array([b"one two three four five", None, b"\xff\xfe"], pa.binary())}), nulls
    )
    run("dedup", str(nulls), "--out", str(tmp_path / "o3"), "--quiet")
    assert pq.read_table(tmp_path / "o3" / "data").num_rows == 1
    quarantined = pq.read_table(tmp_path / "o3" / "rejected")
    assert quarantined.column("reason").to_pylist() == ["null text", "null text"]
    for column in ("duplicate_of", "detail", "similarity"):
        assert quarantined.column(column).to_pylist() == [None, None]


def rows(texts: list[str], prefix: str) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(
        [{"id": f"{prefix}{i}", "prompt_id": f"{prefix}{i}", "response": t} for i, t in enumerate(texts)],
        ROW_SCHEMA,
    )


def test_stage_rejects_regenerated_near_duplicates(planted) -> None:
    corpus, _ = planted
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()[:40]]
    stage = NearDuplicates(threshold=0.7)
    kept, rejected = stage.process(rows(texts[:20], "a"))
    assert len(kept) == 20 and kept.column("minhash").type.list_size == 128
    regenerated = [t.replace(" the ", " a ", 1) for t in texts[:5]] + texts[20:25]
    kept, rejected = stage.process(rows(regenerated, "b"))
    assert rejected.column("duplicate_of").to_pylist() == ["a0", "a1", "a2", "a3", "a4"]
    assert set(rejected.column("reason").to_pylist()) == {"near-duplicate"}
    assert kept.column("id").to_pylist() == ["b5", "b6", "b7", "b8", "b9"]

    against = NearDuplicates(threshold=0.7, text_field="text", against=[str(corpus)])
    _, rejected = against.process(pa.RecordBatch.from_pylist([{"id": "x", "text": texts[3]}]))
    assert rejected.column("duplicate_of").to_pylist() == ["corpus.jsonl:3"]


@pytest.mark.slow
def test_dedup_stage_survives_resume(tmp_path: Path, hf_teacher) -> None:
    seeds = tmp_path / "seeds.jsonl"
    questions = ["Name a colour.", "Name a fruit.", "Name an animal."]
    seeds.write_text("".join(json.dumps({"instruction": q}) + "\n" for q in questions))
    # Deduplicating on the `task` column makes every row a duplicate of the first accepted one,
    # whatever the model writes: only a restored index can reject the rows of the resumed run.
    recipe = {
        "name": "dedup-resume",
        "seeds": {"path": str(seeds)},
        "task": {"kind": "instruction"},
        "sampling": {"temperature": 0, "max_tokens": 8},
        "generation": {"batch_size": 1},
        "filters": {"unterminated": False},
        "dedup": {"text_field": "task"},
        "output": {"shard_rows": 1},
    }
    out = tmp_path / "out"
    with Pipeline.from_recipe(recipe, teachers=[hf_teacher]) as pipeline:
        first = pipeline.run(out, limit=1, progress=False)
    assert first["funnel"]["accepted"] == 1 and not first["complete"]
    with Pipeline.from_recipe(recipe, teachers=[hf_teacher]) as pipeline:  # a new process would do the same
        final = pipeline.run(out, progress=False)
    assert pq.read_table(out / "data").num_rows == 1  # the resumed rows were matched against committed ones
    rejected = pq.read_table(out / "rejected").to_pylist()
    assert {r["reason"] for r in rejected} == {"near-duplicate"}
    assert final["funnel"]["rejected"]["dedup"]["near-duplicate"] == 2
