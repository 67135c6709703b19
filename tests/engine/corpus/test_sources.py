"""`Source`: input files read as Arrow batches, a bounded piece at a time, bad input named."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import synthkiln.engine.corpus as corpus_module
from synthkiln.engine.corpus import Source
from synthkiln.engine.errors import SynthkilnError


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def documents(count: int) -> list[dict]:
    return [{"text": f"document {i} " + "words " * 150, "n": i} for i in range(count)]


def test_a_big_jsonl_file_is_never_held_whole(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(corpus_module, "JSON_BLOCK", 1 << 16)  # Arrow parses ~30 blocks ahead
    path = tmp_path / "big.jsonl"
    rows = documents(40_000)
    write_jsonl(path, rows)
    assert path.stat().st_size > 35 << 20
    before = pa.total_allocated_bytes()
    peak, sizes, numbers, texts = 0, [], [], []
    for batch in Source(path, "text").batches(1000):
        peak = max(peak, pa.total_allocated_bytes() - before)
        sizes.append(len(batch))
        numbers += batch.column("n").to_pylist()
        texts += batch.column("text").to_pylist()
    assert sizes == [1000] * 40
    assert peak < 12 << 20  # blocks parsed ahead and a batch, not the 35+ MiB file
    assert numbers == list(range(40_000))
    assert texts == [row["text"] for row in rows]


def test_a_field_that_changes_type_after_the_first_block_keeps_every_row(tmp_path: Path, monkeypatch) -> None:
    """Arrow's streaming reader types fields on the first block; the rest is read line by line."""
    monkeypatch.setattr(corpus_module, "JSON_BLOCK", 1 << 16)
    path = tmp_path / "mixed.jsonl"
    rows = [*documents(2000), {"text": "a float", "n": 1.5}, {"text": "a new field", "later": True}]
    write_jsonl(path, rows)
    source = Source(path, "text")
    batches = list(source.batches(500))
    assert [len(b) for b in batches] == [500] * 4 + [2]
    table = source.table()
    assert table.num_rows == 2002
    assert table.column("n").to_pylist() == [*list(range(2000)), 1.5, None]
    assert table.column("later").to_pylist() == [None] * 2001 + [True]
    assert table.column("text").to_pylist() == [row["text"] for row in rows]


@pytest.mark.parametrize(
    ("last_line", "message"),
    [
        ("{not json", "line 2001: invalid JSON"),
        ('{"text": "x", "n": "seven"}', r"row 2001: field 'n' holds a str, row \d+ a number"),
        ("[1, 2]", "line 2001: not a JSON object"),
    ],
)
def test_a_bad_row_after_the_first_block_is_named(
    tmp_path: Path, monkeypatch, last_line: str, message: str
) -> None:
    monkeypatch.setattr(corpus_module, "JSON_BLOCK", 1 << 16)
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, documents(2000))
    with path.open("a") as handle:
        handle.write(last_line + "\n")
    with pytest.raises(SynthkilnError, match=f"bad.jsonl: {message}"):
        list(Source(path, "text").batches(500))


def test_rows_read_line_by_line_keep_the_fields_and_types_of_the_rows_before(
    tmp_path: Path, monkeypatch
) -> None:
    """A batch of the line-by-line part lacking the text field gets it as null (quarantined, not
    refused), and a field Arrow typed as a timestamp stays one."""
    monkeypatch.setattr(corpus_module, "JSON_BLOCK", 1 << 16)
    path = tmp_path / "dated.jsonl"
    rows = [{**row, "day": f"2024-01-{1 + row['n'] % 28:02d}"} for row in documents(2000)]
    write_jsonl(path, [*rows, {"n": 1.5, "day": "2024-02-01"}])
    batches = list(Source(path, "text").batches(1000))
    assert [len(b) for b in batches] == [1000, 1000, 1]
    assert batches[0].schema.field("day").type == batches[2].schema.field("day").type == pa.timestamp("s")
    assert batches[2].column("text").to_pylist() == [None]
    table = Source(path).table()
    assert table.column("day")[2000].as_py().isoformat() == "2024-02-01T00:00:00"

    write_jsonl(path, [*rows, {"text": "x", "n": 1.5, "day": "soon"}])
    with pytest.raises(SynthkilnError, match=r"dated\.jsonl: rows 2001-2001: field 'day' holds string"):
        list(Source(path, "text").batches(1000))


def test_gzipped_jsonl_is_read_in_batches(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(corpus_module, "JSON_BLOCK", 1 << 16)
    path = tmp_path / "small.jsonl.gz"
    rows = [*documents(2500), {"text": "a float at the end", "n": 0.5}]
    with gzip.open(path, "wt") as handle:
        handle.write("".join(json.dumps(row) + "\n" for row in rows))
    batches = list(Source(path, "text").batches(1000))
    assert [len(b) for b in batches] == [1000, 1000, 501]
    table = pa.concat_tables([pa.Table.from_batches([b]) for b in batches], promote_options="permissive")
    assert table.column("n").to_pylist() == [*range(2500), 0.5]
    assert table.column("text").to_pylist() == [row["text"] for row in rows]


@pytest.mark.parametrize("suffix", ["parquet", "jsonl"])
def test_long_documents_come_in_batches_of_about_batch_bytes(
    tmp_path: Path, monkeypatch, suffix: str
) -> None:
    """A batch of `batch_rows` long documents is cut into even pieces of at most about `BATCH_BYTES`,
    every row once and in order, `row_base` counting the rows before each piece."""
    monkeypatch.setattr(corpus_module, "BATCH_BYTES", 64 << 10)
    rows = documents(300)  # ~1 KB each: a 256-row batch is ~4 pieces
    path = tmp_path / f"docs.{suffix}"
    if suffix == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        write_jsonl(path, rows)
    source = Source(path, "text")
    sizes, bases, numbers = [], [], []
    for batch in source.batches(256):
        bases.append(source.row_base)
        sizes.append(len(batch))
        numbers += batch.column("n").to_pylist()
        assert batch.nbytes <= 80 << 10
    assert numbers == list(range(300))
    assert len(sizes) >= 5 and max(sizes) - min(sizes[:-1]) <= 1  # even pieces of the first batch
    assert bases == [sum(sizes[:i]) for i in range(len(sizes))]


def test_short_documents_keep_whole_batches(tmp_path: Path) -> None:
    path = tmp_path / "short.jsonl"
    write_jsonl(path, [{"text": f"line {i}"} for i in range(2500)])
    assert [len(batch) for batch in Source(path, "text").batches(1000)] == [1000, 1000, 500]
