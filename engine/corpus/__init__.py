"""Corpus input shared by the corpus commands: JSONL / JSONL.gz / Parquet files or dataset directories.

Files are read as Arrow record batches; a malformed file is named with its bad line, and text stored as
binary is decoded (invalid UTF-8 becomes null, for the caller to quarantine).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from synthkiln.engine.errors import SynthkilnError


@dataclass
class Source:
    """One input file, read in record batches; `row_base` counts rows read before the current batch."""

    path: Path
    text_field: str | None = None  # when set, every batch must hold it as text
    row_base: int = 0

    def batches(self, batch_rows: int = 65536) -> Iterator[pa.RecordBatch]:
        self.row_base = 0
        for batch in self._read(batch_rows):
            if self.text_field is None:
                yield batch
                self.row_base += len(batch)
                continue
            if batch.schema.get_field_index(self.text_field) < 0:
                fields = ", ".join(batch.schema.names)
                raise SynthkilnError(
                    f"{self.path}: no field '{self.text_field}' (fields: {fields}); use --text-field"
                )
            column = batch.column(self.text_field)
            if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
                batch = _decode_binary(batch, self.text_field)
            elif not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                raise SynthkilnError(f"{self.path}: field '{self.text_field}' holds {column.type}, not text")
            yield batch
            self.row_base += len(batch)

    def table(self) -> pa.Table:
        """The whole file as one table."""
        batches = list(self._read(1 << 20))
        return pa.Table.from_batches(batches) if batches else pa.table({})

    def _read(self, batch_rows: int) -> Iterator[pa.RecordBatch]:
        name = self.path.name
        try:
            if name.endswith(".parquet"):
                yield from pq.ParquetFile(self.path).iter_batches(batch_size=batch_rows)
            elif name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
                yield from _read_jsonl(self.path, batch_rows)
            else:
                raise SynthkilnError(f"{self.path}: unknown format (use .jsonl, .jsonl.gz or .parquet)")
        except (pa.ArrowInvalid, OSError) as exc:
            raise SynthkilnError(f"{self.path}: cannot read: {exc}") from None


def _read_jsonl(path: Path, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Arrow's fast JSON reader; on a malformed file, a line-by-line read that names the bad line."""
    try:
        table = pa_json.read_json(path)
        table.validate(full=True)  # the reader passes invalid UTF-8 through; full validation catches it
    except pa.ArrowInvalid:
        import gzip

        opener = gzip.open if path.name.endswith(".gz") else open
        rows = []
        with opener(path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise SynthkilnError(f"{path}: line {number}: invalid JSON ({exc})") from None
        table = pa.Table.from_pylist(rows)
    yield from table.to_batches(max_chunksize=batch_rows)


def _decode_binary(batch: pa.RecordBatch, name: str) -> pa.RecordBatch:
    """Binary text (from Parquet files written without a string type): invalid UTF-8 becomes null."""
    values = []
    for raw in batch.column(name).to_pylist():
        try:
            values.append(raw.decode("utf-8") if raw is not None else None)
        except UnicodeDecodeError:
            values.append(None)
    index = batch.schema.get_field_index(name)
    return batch.set_column(index, pa.field(name, pa.large_string()), pa.array(values, pa.large_string()))


def iter_sources(inputs: list[Path], text_field: str | None = None) -> list[Source]:
    """Files named, or the data files inside directories (a synthkiln dataset's `data/`, else all)."""
    sources = []
    for path in inputs:
        if path.is_dir():
            root = path / "data" if (path / "data").is_dir() else path
            files = sorted(
                p
                for p in root.rglob("*")
                if p.is_file() and p.name.endswith((".parquet", ".jsonl", ".jsonl.gz"))
            )
            if not files:
                raise SynthkilnError(f"{path}: no .parquet or .jsonl files inside")
            sources.extend(Source(f, text_field) for f in files)
        elif path.is_file():
            sources.append(Source(path, text_field))
        else:
            raise SynthkilnError(f"{path}: no such file or directory")
    return sources


def prepare_output(out_dir: Path, output_format: str) -> None:
    """An empty or new directory, or an earlier output of the same command (its shards are replaced)."""
    manifest = out_dir / "manifest.json"
    if manifest.is_file():
        try:
            earlier = json.loads(manifest.read_text()).get("format")
        except (json.JSONDecodeError, AttributeError):
            earlier = None
        if earlier != output_format:
            raise SynthkilnError(f"{out_dir} holds other output ({manifest}); choose another --out")
        manifest.unlink()  # the old manifest goes first: a half-replaced directory never looks complete
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise SynthkilnError(f"{out_dir} exists and is not empty; choose another --out")
    for folder in ("data", "rejected"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
        for shard in (out_dir / folder).glob("part-*.parquet"):
            shard.unlink()


def write_parts(
    out_dir: Path, number: int, kept: list[pa.RecordBatch], rejected: list[pa.RecordBatch]
) -> None:
    """Input file `number`'s kept rows to `data/` and removed ones to `rejected/` (atomic; empty: none)."""
    from synthkiln.engine.output.writer import write_parquet_atomic

    for folder, batches in (("data", kept), ("rejected", rejected)):
        if sum(len(b) for b in batches):
            write_parquet_atomic(
                pa.Table.from_batches(batches), out_dir / folder / f"part-{number:05d}.parquet"
            )
