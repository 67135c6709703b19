"""The one output guard: never touch a directory we did not write; lock; replace corpus outputs whole."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synthkiln.engine.errors import OutputError
from synthkiln.engine.output.directory import LOCK, OutputDirectory
from synthkiln.engine.output.writer import FORMAT, DatasetWriter
from tests.conftest import synthkiln_command, write_recipe
from tests.engine.output.test_writer import RUN_INFO, recipe, rows


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*synthkiln_command(), *args], capture_output=True, text=True, timeout=300)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def hf_folder(path: Path) -> dict[str, bytes]:
    """A Hugging Face dataset folder: data/ with parquet shards and a card, no synthkiln manifest."""
    (path / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["mine"]}), path / "data" / "train-00000-of-00001.parquet")
    (path / "README.md").write_text("---\nlicense: mit\n---\n# my dataset\n")
    return snapshot(path)


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_hugging_face_folder_survives_the_writer_with_and_without_fresh(tmp_path: Path) -> None:
    before = hf_folder(tmp_path / "hf")
    assert len(before) == 2
    for fresh in (False, True):
        with pytest.raises(OutputError, match=r"holds no synthkiln manifest \(found: README.md, data/train-"):
            DatasetWriter(tmp_path / "hf", recipe(), RUN_INFO, fresh=fresh)
        assert snapshot(tmp_path / "hf") == before


def test_fresh_removes_only_the_files_our_manifest_lists(tmp_path: Path) -> None:
    out = tmp_path / "out"
    writer = DatasetWriter(out, recipe(shard_rows=2), RUN_INFO)
    writer.add(rows("a", 3), rows("x", 0))
    writer.close(complete=True)
    shards = sorted(p.name for p in (out / "data").iterdir())
    assert shards == ["part-00000.parquet"]
    (out / "notes.txt").write_text("the user's")
    (out / "data" / "mine.txt").write_text("the user's too")

    writer = DatasetWriter(out, recipe(shard_rows=2), RUN_INFO, fresh=True)
    assert writer.completed_prompts == set()  # the earlier rows are gone
    writer.add(rows("b", 1), rows("x", 0))
    writer.close(complete=True)
    assert (out / "notes.txt").read_text() == "the user's"
    assert (out / "data" / "mine.txt").read_text() == "the user's too"
    ids = pq.read_table(out / "data" / "part-00000.parquet").column("id").to_pylist()
    assert ids == ["b0"]
    assert not (out / LOCK).exists()  # released on close


def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with OutputDirectory(out, "synthkiln-dedup/1"):
        with pytest.raises(OutputError, match=rf"another synthkiln process \(pid {os.getpid()}"):
            OutputDirectory(out, "synthkiln-dedup/1")
        corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": "one two three four five six"}])
        result = cli("dedup", str(corpus), "--out", str(out), "--quiet")
        assert result.returncode == 2, result.stderr
        assert f"pid {os.getpid()}" in result.stderr and "Traceback" not in result.stderr
    with OutputDirectory(out, "synthkiln-dedup/1"):  # released: free again
        pass


def test_an_interrupted_first_run_is_recognised_as_ours(tmp_path: Path) -> None:
    """SIGKILL before the first commit leaves our lock file and a shard; no manifest."""
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / LOCK).write_text("12345\n")
    pq.write_table(pa.table({"x": [1]}), out / "data" / "part-00000.parquet")
    (out / "data" / ".part-00001.parquet.tmp").write_bytes(b"half")
    with OutputDirectory(out, FORMAT) as directory:
        assert directory.previous is None
        assert list((out / "data").iterdir()) == []
    assert list(out.iterdir()) == []  # nothing committed: the run's folders and lock went with it
    # Without our lock file the same shard is someone else's.
    (out / "data").mkdir()
    pq.write_table(pa.table({"x": [1]}), out / "data" / "part-00000.parquet")
    with pytest.raises(OutputError, match=r"found: data/part-00000\.parquet"):
        OutputDirectory(out, FORMAT)


def test_a_corpus_command_refuses_a_dataset_directory_and_a_foreign_one(tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    writer = DatasetWriter(dataset, recipe(), RUN_INFO)
    writer.add(rows("a", 2), rows("x", 0))
    writer.close(complete=True)
    before = snapshot(dataset)
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": "one two three four five six"}])
    refused = cli("dedup", str(corpus), "--out", str(dataset), "--quiet")
    assert refused.returncode == 2
    assert f"holds synthkiln output of another kind ({FORMAT}" in refused.stderr
    assert snapshot(dataset) == before

    hf = tmp_path / "hf"
    hf_before = hf_folder(hf)
    refused = cli("dedup", str(corpus), "--out", str(hf), "--quiet")
    assert refused.returncode == 2 and "holds no synthkiln manifest" in refused.stderr
    assert snapshot(hf) == hf_before


def test_a_corpus_rerun_replaces_its_output_whole(tmp_path: Path) -> None:
    texts = [f"document number {i} says something different from the others {i * 7}" for i in range(6)]
    first = write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in texts[:3]])
    second = write_jsonl(tmp_path / "b.jsonl", [{"text": t} for t in texts[3:]])
    out = tmp_path / "out"
    assert cli("dedup", str(first), str(second), "--out", str(out), "--quiet").returncode == 0
    assert len(list((out / "data").glob("*.parquet"))) == 2
    result = cli("dedup", str(second), "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    parts = sorted((out / "data").glob("*.parquet"))
    assert [p.name for p in parts] == ["part-r2-00000.parquet"]
    assert pq.read_table(out / "data").column("text").to_pylist() == texts[3:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runs"] == 2 and manifest["inputs"] == [str(second)]


def test_a_wrong_field_writes_nothing_and_the_corrected_rerun_works(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"body": "one two three four five six"}])
    out = tmp_path / "out"
    wrong = cli("dedup", str(corpus), "--out", str(out), "--quiet")
    assert wrong.returncode == 2 and "c.jsonl: no field 'text' (fields: body)" in wrong.stderr
    assert not out.exists() or list(out.iterdir()) == []
    right = cli("dedup", str(corpus), "--out", str(out), "--text-field", "body", "--quiet")
    assert right.returncode == 0, right.stderr
    assert pq.read_table(out / "data").num_rows == 1


def test_a_misspelt_verifier_field_is_refused_before_anything_runs(tmp_path: Path) -> None:
    corpus = write_jsonl(
        tmp_path / "c.jsonl", [{"code": "def f():\n    return 1\n", "tests": "assert f() == 1"}]
    )
    out = tmp_path / "out"
    result = cli(
        "verify", str(corpus), "--out", str(out), "--verifier", "python-tests", "--code-field", "cdoe"
    )
    assert result.returncode == 2, result.stderr
    assert "c.jsonl: no field 'cdoe' (from --code-field of python-tests)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() or list(out.iterdir()) == []
    # The entry point is optional (plain asserts, MBPP style): rows without one are checked, not refused.
    result = cli("verify", str(corpus), "--out", str(out), "--verifier", "python-tests", "--quiet")
    assert result.returncode == 0, result.stderr
    assert pq.read_table(out / "data").num_rows == 1


def test_a_text_field_holding_numbers_is_named_with_its_row(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": "words here"}, {"text": "more words"}, {"text": 42}])
    result = cli("dedup", str(corpus), "--out", str(tmp_path / "out"), "--quiet")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "c.jsonl: row 3: field 'text' holds a number, row 1 a str" in result.stderr
    only_numbers = write_jsonl(tmp_path / "n.jsonl", [{"text": 1}, {"text": 2}])
    result = cli("dedup", str(only_numbers), "--out", str(tmp_path / "out"), "--quiet")
    assert result.returncode == 2 and "n.jsonl: field 'text' holds int64, not text" in result.stderr


def test_decontaminate_rejected_rows_say_why_in_detail(tmp_path: Path) -> None:
    benchmark = write_jsonl(
        tmp_path / "bench.jsonl", [{"question": "what is the capital city of the country france"}]
    )
    corpus = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"text": "Q: what is the capital city of the country france? A: Paris"},
            {"text": "unrelated words"},
        ],
    )
    out = tmp_path / "out"
    result = cli(
        "decontaminate", str(corpus), "--out", str(out), "--benchmark", f"mine={benchmark}", "--quiet"
    )
    assert result.returncode == 0, result.stderr
    rejected = pq.read_table(out / "rejected").to_pylist()
    assert len(rejected) == 1
    assert rejected[0]["reason"] == "contaminated:mine"
    assert "match of mine item 0 (question)" in rejected[0]["detail"]


def test_a_hugging_face_folder_survives_synthkiln_run_and_fresh(tmp_path: Path) -> None:
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"instruction": "Say hello."}])
    recipe_file = write_recipe(
        tmp_path,
        f'name = "guard"\n[seeds]\npath = "{seeds}"\n[task]\nkind = "instruction"\n[sampling]\nmax_tokens = 4\n',
    )
    hf = tmp_path / "hf"
    before = hf_folder(hf)
    for extra in ([], ["--fresh"]):
        result = cli("run", str(recipe_file), "--out", str(hf), "--quiet", *extra)
        assert result.returncode == 2, result.stderr
        assert "holds no synthkiln manifest (found: README.md, data/train-" in result.stderr
        assert "Traceback" not in result.stderr
        assert snapshot(hf) == before


def test_a_manifest_cannot_point_our_deletions_outside_our_names(tmp_path: Path) -> None:
    out = tmp_path / "out"
    writer = DatasetWriter(out, recipe(), RUN_INFO)
    writer.add(rows("a", 1), rows("x", 0))
    writer.close(complete=True)
    victim = tmp_path / "victim.parquet"
    victim.write_bytes(b"the user's")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"]["data"].append({"path": "../victim.parquet", "rows": 1})
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(OutputError, match=r"lists shard '\.\./victim\.parquet', not a name synthkiln writes"):
        DatasetWriter(out, recipe(), RUN_INFO, fresh=True)
    assert victim.read_bytes() == b"the user's"
    manifest["shards"]["data"].pop()
    manifest["files"] = ["/etc/hostname"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(OutputError, match="lists file '/etc/hostname'"):
        OutputDirectory(out, FORMAT, fresh=True)


def test_files_named_like_ours_but_not_ours_survive(tmp_path: Path) -> None:
    """pyarrow's `write_dataset` names files `part-0.parquet`; a user's `.notes.tmp` is not our temporary."""
    out = tmp_path / "out"
    writer = DatasetWriter(out, recipe(), RUN_INFO)
    writer.add(rows("a", 1), rows("x", 0))
    writer.close(complete=True)
    planted = [out / "data" / "part-0.parquet", out / "data" / "part-00000.parquet.bak", out / ".notes.tmp"]
    for path in planted:
        path.write_bytes(b"the user's")
    DatasetWriter(out, recipe(), RUN_INFO).close(complete=True)  # reopen: leftovers of ours are removed
    DatasetWriter(out, recipe(), RUN_INFO, fresh=True).close(complete=True)
    assert [path.read_bytes() for path in planted] == [b"the user's"] * 3


def test_symlinks_are_refused_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    precious = elsewhere / "precious.txt"
    precious.write_text("keep me")
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / LOCK).symlink_to(precious)
    with pytest.raises(OutputError, match=r"\.synthkiln\.lock is a symlink"):
        OutputDirectory(locked, FORMAT)
    assert precious.read_text() == "keep me"

    out = tmp_path / "out"
    writer = DatasetWriter(out, recipe(), RUN_INFO)
    writer.add(rows("a", 1), rows("x", 0))
    writer.close(complete=True)
    (elsewhere / "part-00007.parquet").write_bytes(b"not ours")
    for shard in (out / "data").iterdir():
        shard.rename(elsewhere / shard.name)
    (out / "data").rmdir()
    (out / "data").symlink_to(elsewhere)
    with pytest.raises(OutputError, match=r"/data is a symlink"):
        DatasetWriter(out, recipe(), RUN_INFO, fresh=True)
    assert sorted(p.name for p in elsewhere.iterdir()) == [
        "part-00000.parquet",
        "part-00007.parquet",
        "precious.txt",
    ]


def test_a_corpus_rerun_replaces_the_dedup_index_too(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": "one two three four five six seven"}])
    out = tmp_path / "out"
    assert cli("dedup", str(corpus), "--out", str(out), "--quiet").returncode == 0
    assert (out / "index-r1.npz").is_file()
    assert cli("dedup", str(corpus), "--out", str(out), "--quiet").returncode == 0
    assert sorted(p.name for p in out.glob("index*")) == ["index-r2.npy", "index-r2.npz"]
    assert json.loads((out / "manifest.json").read_text())["files"] == ["index-r2.npz", "index-r2.npy"]


def test_a_manifest_that_cannot_be_written_loses_nothing_committed(tmp_path: Path, monkeypatch) -> None:
    """The shard is written, then the disk fills before the manifest (the commit point) is: the error
    names the manifest, the earlier commit stands, and the next open removes the orphan shard."""
    from synthkiln.engine.output import directory

    out = tmp_path / "out"
    writer = DatasetWriter(out, recipe(), RUN_INFO)
    writer.add(rows("a", 2), rows("x", 0))
    writer.commit()
    committed = {k: v for k, v in snapshot(out).items() if k != LOCK}
    real = directory._fsync

    def disk_full(path: Path) -> None:  # the disk is outside our control: fake only it
        if path.name == ".manifest.json.tmp":
            raise OSError(28, "No space left on device")
        real(path)

    monkeypatch.setattr(directory, "_fsync", disk_full)
    writer.add(rows("b", 2), rows("x", 0))
    with pytest.raises(OutputError, match=r"manifest\.json: cannot write \(No space left on device\)"):
        writer.close(complete=True)
    assert (out / "data" / "part-00001.parquet").is_file()  # the orphan: written, never committed
    assert not (out / LOCK).exists()  # released all the same
    monkeypatch.setattr(directory, "_fsync", real)
    reopened = DatasetWriter(out, recipe(), RUN_INFO)
    assert reopened.completed_prompts == {"a0", "a1"}
    assert not (out / "data" / "part-00001.parquet").exists()
    reopened.directory.close()
    assert snapshot(out) == committed


def killed_dedup_leftovers(out: Path) -> Path:
    """What a `dedup` SIGKILLed while signing leaves: its lock file (the flock died with it) and its
    scratch folder with a signed batch and a half-written one."""
    work = out / ".synthkiln-work" / ("0f" * 16)
    work.mkdir(parents=True)
    (out / LOCK).write_text("12345\n")
    (work / "signatures.npy").write_bytes(b"\x93NUMPY")
    (work / "bands-0.npy").write_bytes(b"\x93NUMPY")
    (work / f"bands-1.npy.{'ab' * 16}.partial").write_bytes(b"\x93NU")
    return work


def test_a_killed_runs_scratch_goes_when_the_directory_is_next_opened(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": "one two three four five six seven"}])
    out = tmp_path / "out"
    work = killed_dedup_leftovers(out)
    done = cli("dedup", str(corpus), "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    assert not work.parent.exists()
    assert sorted(p.name for p in out.iterdir()) == ["data", "index-r1.npy", "index-r1.npz", "manifest.json"]

    work = killed_dedup_leftovers(tmp_path / "again")
    (work / "embeddings.npy").write_bytes(b"\x93NUMPY")  # in our folder, but not a name we write
    with pytest.raises(
        OutputError, match=r"holds no synthkiln manifest \(found: \.synthkiln-work/0f0f.*/embeddings\.npy\)"
    ):
        OutputDirectory(tmp_path / "again", "synthkiln-dedup/1")
    assert (work / "signatures.npy").is_file()  # refused: nothing touched

    work = killed_dedup_leftovers(tmp_path / "ours")
    (tmp_path / "ours" / "manifest.json").write_text((out / "manifest.json").read_text())
    (work / "embeddings.npy").write_bytes(b"\x93NUMPY")
    with OutputDirectory(tmp_path / "ours", "synthkiln-dedup/1") as directory:
        assert sorted(p.name for p in work.iterdir()) == ["embeddings.npy"]  # ours went, the user's stays
        with pytest.raises(RuntimeError), directory.scratch() as scratch:
            (scratch / "bands-3.npy").write_bytes(b"\x93NUMPY")
            raise RuntimeError("a failing command")
        assert scratch.parent == work.parent and not scratch.exists()
    assert sorted(p.name for p in work.iterdir()) == ["embeddings.npy"]


def test_a_scratch_folder_symlinked_in_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "sig-0.npy").write_bytes(b"the user's")
    out = tmp_path / "out"
    with OutputDirectory(out, "synthkiln-dedup/1") as directory:
        (out / ".synthkiln-work").symlink_to(elsewhere)  # after the opening check
        with pytest.raises(OutputError, match=r"\.synthkiln-work is a symlink"), directory.scratch():
            pass
    assert (elsewhere / "sig-0.npy").read_bytes() == b"the user's"
    with pytest.raises(OutputError, match=r"\.synthkiln-work is a symlink"):
        OutputDirectory(out, "synthkiln-dedup/1")
