"""The one skeleton of the corpus commands (`dedup`, `decontaminate`, `verify`, and those to come).

A command is a :class:`CorpusCommand`: the fields it reads, an optional pass over the whole corpus
(dedup's clusters), a split of each batch into kept and rejected rows, and what its manifest says. The
skeleton does the rest the same way for all of them: inputs (JSONL / JSONL.gz / Parquet files or dataset
directories) found and every named field checked in every file *before* anything is written; the output
directory claimed through the one guard (:class:`~synthkiln.engine.output.directory.OutputDirectory`);
each input's rows written as `data/` and `rejected/` shards (rejected rows always with `reason` and
`detail`); the manifest committed last, which replaces an earlier output of the same command atomically.

Files are read as Arrow record batches; a malformed file is named with its bad line, and text stored as
binary is decoded (invalid UTF-8 becomes null, for the command to quarantine).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from synthkiln.engine.errors import SynthkilnError
from synthkiln.engine.executor import LocalExecutor
from synthkiln.engine.output.directory import OutputDirectory

BATCH_BYTES = 16 << 20  # a batch's Arrow data, about: 8k documents of 2 KB, all 64k short ones


@dataclass
class Source:
    """One input file, read in record batches; `row_base` counts rows read before the current batch."""

    path: Path
    text_field: str | None = None  # when set, every batch must hold it as text
    row_base: int = 0

    def batches(self, batch_rows: int = 65536) -> Iterator[pa.RecordBatch]:
        """Batches of at most `batch_rows` rows and about `BATCH_BYTES` (long documents come in more,
        smaller batches: a cluster's tasks stay small enough to spread evenly over its workers)."""
        self.row_base = 0
        for batch in self._read(batch_rows):
            if self.text_field is not None and self._text_type(batch.schema) == "binary":
                batch = _decode_binary(batch, self.text_field)
            pieces = max(1, -(-batch.nbytes // BATCH_BYTES))
            step = max(1, -(-len(batch) // pieces))
            for start in range(0, max(len(batch), 1), step):  # an empty batch still carries its schema
                piece = batch.slice(start, step)
                yield piece
                self.row_base += len(piece)

    def field_names(self) -> list[str] | None:
        """The file's fields, read cheaply (a Parquet file's schema, a JSONL file's first record) after
        checking the text field there; None for a file without rows."""
        try:
            if self.path.name.endswith(".parquet"):
                schema = pq.read_schema(self.path)
            else:
                first = next(_records(self.path), None)
                if first is None:
                    return None
                schema = pa.Table.from_pylist([first]).schema
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
            raise SynthkilnError(f"{self.path}: cannot read: {exc}") from None
        if self.text_field is not None:
            self._text_type(schema)
        return schema.names

    def _text_type(self, schema: pa.Schema) -> str:
        """ "text", "binary" (decoded by the reader) or "null" (no value in the rows seen); else an error."""
        if schema.get_field_index(self.text_field) < 0:
            fields = ", ".join(schema.names)
            raise SynthkilnError(
                f"{self.path}: no field '{self.text_field}' (fields: {fields}); use --text-field"
            )
        kind = schema.field(self.text_field).type
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            return "binary"
        if pa.types.is_null(kind):
            return "null"
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise SynthkilnError(f"{self.path}: field '{self.text_field}' holds {kind}, not text")
        return "text"

    def table(self) -> pa.Table:
        """The whole file as one table."""
        batches = [pa.Table.from_batches([batch]) for batch in self._read(1 << 20)]
        # a JSONL file read partly line by line may type a field differently in its later rows
        return pa.concat_tables(batches, promote_options="permissive") if batches else pa.table({})

    def _read(self, batch_rows: int) -> Iterator[pa.RecordBatch]:
        name = self.path.name
        try:
            if name.endswith(".parquet"):
                yield from pq.ParquetFile(self.path).iter_batches(batch_size=batch_rows)
            elif name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
                yield from _read_jsonl(self.path, batch_rows)
            else:
                raise SynthkilnError(f"{self.path}: unknown format (use .jsonl, .jsonl.gz or .parquet)")
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
            raise SynthkilnError(f"{self.path}: cannot read: {exc}") from None


JSON_BLOCK = 4 << 20  # bytes of a JSONL file parsed at a time (Arrow reads ~30 ahead): memory stays bounded


def _read_jsonl(path: Path, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Arrow's streaming JSON reader, a block at a time, cut into batches of `batch_rows`. Where it
    cannot go on (a malformed line, invalid UTF-8, a field whose type changes or that first appears
    after the first block), the rest of the file is read line by line: the same rows, and a bad line
    named."""
    done, blocks = 0, None
    try:
        blocks = pa_json.open_json(path, read_options=pa_json.ReadOptions(block_size=JSON_BLOCK))
        for batch in _rebatch(blocks, batch_rows):
            batch.validate(full=True)  # the reader passes invalid UTF-8 through; full validation catches it
            yield batch
            done += len(batch)
        return
    except pa.ArrowInvalid:
        pass  # the types Arrow gave the first block stay those of the rows read line by line
    yield from _read_lines(path, batch_rows, done, blocks.schema if blocks is not None else pa.schema([]))


def _read_lines(path: Path, batch_rows: int, skip: int, before: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The file's records past the first `skip`, parsed line by line into batches that hold every
    field Arrow typed (`before`, typed as there) and every field seen since."""
    kinds: dict[str, tuple[str, int]] = {}  # these rows against each other; against `before`: `_batch_of`
    types = {field.name: field.type for field in before}
    rows: list[dict[str, Any]] = []
    number = skip
    for number, record in enumerate(itertools.islice(_records(path), skip, None), start=skip + 1):
        _check_kinds(path, number, record, kinds)
        rows.append(record)
        if len(rows) == batch_rows:
            yield _batch_of(path, rows, number, types)
            rows = []
    if rows:
        yield _batch_of(path, rows, number, types)


def _batch_of(
    path: Path, rows: list[dict[str, Any]], last: int, types: dict[str, pa.DataType]
) -> pa.RecordBatch:
    """Rows (the last one numbered `last`) as a batch holding every field of `types` (the rows before:
    null where these rows lack it, cast to its type there, e.g. a date Arrow read as a timestamp) and
    every field these rows hold (`from_pylist` would keep the first row's only); `types` gains them."""
    read = pa.RecordBatch.from_struct_array(pa.array(rows))
    columns = {}
    for name in dict.fromkeys([*types, *read.schema.names]):
        earlier = types.get(name)
        if name not in read.schema.names:
            columns[name] = pa.nulls(len(read), earlier)
            continue
        column = read.column(name)
        if earlier is None or pa.types.is_null(earlier):
            types[name] = column.type
        elif column.type != earlier and not (_is_number(earlier) and _is_number(column.type)):
            try:  # numbers are left for the writer's permissive concatenation to widen
                column = column.cast(earlier)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                first = last - len(rows) + 1
                raise SynthkilnError(
                    f"{path}: rows {first}-{last}: field '{name}' holds {column.type}, the rows above {earlier}"
                ) from None
        columns[name] = column
    return pa.RecordBatch.from_pydict(columns)


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def _rebatch(blocks: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """The blocks' rows in batches of `rows` (the last one shorter)."""
    held: list[pa.RecordBatch] = []
    count = 0
    for block in blocks:
        held.append(block)
        count += len(block)
        while count >= rows:
            table = pa.Table.from_batches(held).combine_chunks()
            yield table.slice(0, rows).to_batches()[0]
            held, count = table.slice(rows).to_batches(), count - rows
    if count:
        yield pa.Table.from_batches(held).combine_chunks().to_batches()[0]


def _records(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL(.gz) file, one per non-blank line; a bad line is named."""
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise SynthkilnError(f"{path}: line {number}: invalid JSON ({exc})") from None
            if not isinstance(record, dict):
                raise SynthkilnError(f"{path}: line {number}: not a JSON object")
            yield record


def _kind(value: Any) -> str:
    return (
        "number" if isinstance(value, int | float) and not isinstance(value, bool) else type(value).__name__
    )


def _check_kinds(path: Path, number: int, record: dict[str, Any], kinds: dict[str, tuple[str, int]]) -> None:
    """Row `number` holds the same kind of value in each field as the rows above it (`kinds`: the
    first kind seen per field, and its row), which Arrow needs to read them as one table."""
    for key, value in record.items():
        if value is None:
            continue
        kind = _kind(value)
        first = kinds.setdefault(key, (kind, number))
        if first[0] != kind:
            raise SynthkilnError(
                f"{path}: row {number}: field '{key}' holds a {kind}, row {first[1]} a {first[0]}"
            )


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
    """Files named, or the data files inside directories: the accepted shards a synthkiln output's
    manifest lists (not a crashed run's leftovers), else a `data/` folder's files, else all."""
    sources = []
    for path in inputs:
        listed = _listed_shards(path) if path.is_dir() else None
        if listed is not None:
            sources.extend(Source(f, text_field) for f in listed)
        elif path.is_dir():
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


def _listed_shards(directory: Path) -> list[Path] | None:
    """The data shards a synthkiln output directory's manifest lists; None for other directories."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not (isinstance(manifest, dict) and str(manifest.get("format", "")).startswith("synthkiln-")):
        return None
    return [directory / shard["path"] for shard in manifest.get("shards", {}).get("data", [])]


def check_fields(sources: list[Source], fields: dict[str, str]) -> None:
    """Every input holds every field the command reads (`fields`: name -> the option that set it; a
    dotted name is checked by its first part), and the text field is text: checked for all inputs
    before anything is written."""
    for source in sources:
        names = source.field_names()
        if names is None:
            continue  # an empty file contributes no rows
        missing = [(f, option) for f, option in fields.items() if f.split(".", 1)[0] not in names]
        if missing:
            named = ", ".join(f"'{f}' (from {option})" for f, option in missing)
            raise SynthkilnError(f"{source.path}: no field {named}; fields: {', '.join(names)}")


# Rows held before a shard is written: memory stays bounded on a big input, and shards of Ray Data's
# block size are compressed by both writers while the input is still read (one zstd stream per file);
# at 256 MiB, 400 MB of rejected rows left one writer compressing alone at the end (0.4 s of 3).
SHARD_BYTES = 128 << 20
SHARD_WRITERS = 2  # shards compressed and written side by side (zstd in Arrow is one thread per shard)
READ_AHEAD = 2  # batches decoded ahead of the one being worked on
Item = TypeVar("Item")


class CorpusCommand(ABC):
    """One corpus command: what it reads, how it splits rows, what its manifest records."""

    output_format: str  # e.g. "synthkiln-dedup/1": the marker its output directory carries
    text_field: str | None = None  # when set, every input must hold it as text (checked by its reader)
    batch_rows = 65536
    judge_gpus = 0.0  # GPUs each task of its judge asks for on Ray (set by `prepare`)

    def __init__(self) -> None:
        self.rows = self.kept = 0
        self.reasons: dict[str, int] = {}

    @abstractmethod
    def fields(self) -> dict[str, str]:
        """The fields every input must hold, each with the option that named it (for the error)."""

    def prepare(  # noqa: B027 (optional hook)
        self, sources: list[Source], progress: bool, executor: LocalExecutor, work: Path
    ) -> None:
        """A pass over the whole corpus before any row is written (dedup's clusters); `work` is a
        scratch folder inside the output directory (on the storage every node of a cluster writes)."""

    def judge(self) -> tuple[Callable[[Any, pa.RecordBatch], Any], Any] | None:
        """Per-batch work that may run on a cluster's workers: `(fn, shared)`, where `fn(shared, batch)`
        (the batch holding the fields the command reads) is a module-level pure function whose result
        `split` gets."""
        return None

    @abstractmethod
    def split(
        self, batch: pa.RecordBatch, source: Source, judged: Any = None
    ) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        """Kept rows, and rejected rows carrying `reason` and `detail` columns."""

    def extra_files(self, directory: OutputDirectory, run: int) -> list[str]:
        """Files beside the shards, written before the manifest and named per `run` (``NAME-rRUN.EXT``)
        so that a crash before the commit leaves the previous run's intact. Called on a thread of its
        own while the shards are written: it may read what `prepare` left, never what `split` changes."""
        return []

    @abstractmethod
    def summary(self) -> dict[str, Any]:
        """What the manifest says of this run beyond inputs, counts and shards (parameters, reports)."""


def run_corpus_command(
    command: CorpusCommand,
    inputs: list[Path],
    out_dir: Path,
    progress: bool = True,
    fresh: bool = False,
    executor: LocalExecutor | None = None,
) -> dict[str, Any]:
    """Run `command` over `inputs` into `out_dir`; return the committed manifest."""
    executor = executor or LocalExecutor()
    sources = iter_sources(inputs, command.text_field)
    check_fields(sources, command.fields())
    started = time.perf_counter()
    with OutputDirectory(out_dir, command.output_format, fresh) as directory, directory.scratch() as work:
        command.prepare(sources, progress, executor, work)
        run = int((directory.previous or {}).get("runs", 0)) + 1
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="extra-files") as beside:
            files = beside.submit(command.extra_files, directory, run)  # dedup's index, beside the shards
            shards = _write_shards(command, sources, directory, run, executor, progress)
            files = files.result()
        manifest = {
            "inputs": [str(s.path) for s in sources],
            "runs": run,
            **command.summary(),
            "rows": command.rows,
            "kept": command.kept,
            "rejected": dict(sorted(command.reasons.items())),
            "seconds": round(time.perf_counter() - started, 3),
            "executor": executor.describe(),
            "shards": shards,
            "files": files,
        }
        directory.commit(manifest)
    return manifest


def _write_shards(
    command: CorpusCommand,
    sources: list[Source],
    directory: OutputDirectory,
    run: int,
    executor: LocalExecutor,
    progress: bool,
) -> dict[str, list[dict[str, Any]]]:
    """Each input's kept and rejected rows as shards (one per input, or pieces of `SHARD_BYTES` for a big
    one), numbered in input order; the command's judge (if any) runs on the executor, ahead of the batches being
    split here."""
    name = command.output_format.split("-", 1)[1].split("/")[0]
    judge = command.judge()
    fn, shared = judge if judge is not None else (_nothing, None)
    batches = read_ahead(
        (number, source, batch)
        for number, source in enumerate(sources)
        for batch in source.batches(command.batch_rows)
    )
    if judge is None:  # nothing to farm out
        results = LocalExecutor().map(fn, shared, batches, payload=lambda item: None)
    else:
        read = sorted({f.split(".", 1)[0] for f in command.fields()})
        results = executor.map(
            fn, shared, batches, payload=lambda item: compact(item[2], read), gpus=command.judge_gpus
        )
    held: dict[str, list[pa.RecordBatch]] = {"data": [], "rejected": []}
    writing: dict[str, list[Future[dict[str, Any]]]] = {"data": [], "rejected": []}
    in_flight: deque[Future[dict[str, Any]]] = deque()

    def flush(folder: str) -> None:
        batches = held[folder]
        if sum(len(b) for b in batches):
            # batches built from Python rows may type an all-null column differently
            table = pa.concat_tables(
                [pa.Table.from_batches([b]) for b in batches], promote_options="permissive"
            )
            number = len(writing[folder])  # in writing order, which the names sort in
            while in_flight and (in_flight[0].done() or len(in_flight) >= SHARD_WRITERS):
                in_flight.popleft().result()  # a failed write stops the command here, not at the end
            written = writers.submit(
                directory.write_shard, table, f"{folder}/part-r{run}-{number:05d}.parquet"
            )
            writing[folder].append(written)
            in_flight.append(written)
        batches.clear()

    current = None
    with (
        contextlib.closing(batches),
        contextlib.closing(results),  # a failure here cancels the tasks still running, then and there
        tqdm(desc=name, unit="row", disable=not progress) as bar,
        ThreadPoolExecutor(SHARD_WRITERS, thread_name_prefix="shards") as writers,
    ):
        for (number, source, batch), judged in results:
            if number != current and current is not None:
                flush("data")
                flush("rejected")
            current = number
            keep, drop = command.split(batch, source, judged)
            if len(drop) and ("reason" not in drop.schema.names or "detail" not in drop.schema.names):
                raise AssertionError(f"{name}: rejected rows need `reason` and `detail`")
            for folder, rows in (("data", keep), ("rejected", drop)):
                if len(rows):
                    held[folder].append(rows)
                if sum(b.nbytes for b in held[folder]) >= SHARD_BYTES:  # a big input: several shards
                    flush(folder)
            if len(drop):
                for entry in pc.value_counts(drop.column("reason")).to_pylist():
                    reason = entry["values"]
                    command.reasons[reason] = command.reasons.get(reason, 0) + entry["counts"]
            command.rows += len(batch)
            command.kept += len(keep)
            bar.update(len(batch))
        flush("data")
        flush("rejected")
        return {folder: [shard.result() for shard in futures] for folder, futures in writing.items()}


def _nothing(shared: Any, batch: Any) -> None:
    return None


def compact(batch: pa.RecordBatch, fields: list[str]) -> pa.RecordBatch:
    """The batch's `fields`, copied out of the file's buffers: a slice would ship them whole to a
    cluster's workers."""
    return pa.RecordBatch.from_arrays([pa.concat_arrays([batch.column(f)]) for f in fields], names=fields)


def read_ahead(items: Iterator[Item], depth: int = READ_AHEAD) -> Iterator[Item]:
    """`items`, produced by a thread up to `depth` ahead: a file's next batch is read and decoded (Arrow
    releases the GIL) while this one is signed, split or written. An error in the producer is raised
    here, in order; a consumer that stops early (close it: `contextlib.closing`) stops the producer.
    What the producer updates as it goes (`Source.row_base`) runs ahead of the consumer."""
    ready: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                ready.put(("item", item))
                if stop.is_set():
                    return
            ready.put(("end", None))
        except BaseException as exc:  # handed to the consumer, raised there
            ready.put(("error", exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a generator's files are closed here, not left to the collector
                close()

    producer = threading.Thread(target=produce, name="read-ahead", daemon=True)
    producer.start()
    try:
        while True:
            kind, value = ready.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while producer.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                ready.get(timeout=0.05)
