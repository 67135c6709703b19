"""Seed rows from JSONL, JSONL.gz, Parquet or a Hugging Face dataset.

A file that cannot be opened stops the run (SeedsError); a single bad row does not: it comes out as
a :class:`SeedRow` with an `error`, and the pipeline quarantines it with that reason.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from synthkiln.engine.config import SeedsConfig
from synthkiln.engine.errors import SeedsError
from synthkiln.engine.inputs import hf_seeds_key, sha256_file


@dataclass(frozen=True)
class SeedRow:
    source: str  # file name or dataset name
    row: int  # line number (JSONL, from 1) or row index (Parquet, HF, from 0)
    fields: dict[str, Any] | None
    error: str | None = None


def read_seeds(config: SeedsConfig) -> Iterator[SeedRow]:
    rows = _read_file(Path(config.path)) if config.path else _read_hf(config)
    return islice(rows, config.limit) if config.limit else rows


def describe_seeds(config: SeedsConfig, inputs: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Provenance of the seeds for the manifest: the file and its sha256, or the dataset name.

    `inputs` is the run's input fingerprint (:func:`synthkiln.engine.inputs.fingerprint`): the seeds'
    sha256 is taken from it, so a resume does not reread the seeds to hash them again.
    """
    if config.path:
        known = (inputs or {}).get(config.path)
        sha256 = known["sha256"] if known else sha256_file(_existing(Path(config.path)))
        return {"path": config.path, "sha256": sha256, "limit": config.limit}
    hf = {"hf_dataset": config.hf_dataset, "config": config.hf_config, "split": config.split}
    known = (inputs or {}).get(hf_seeds_key(config))
    if known:
        hf["revision"] = known["revision"]
    return hf


def count_seeds(config: SeedsConfig) -> int | None:
    """Number of seed rows when cheap to know (sizes the progress bar), else None."""
    if not config.path:
        return None
    path = _existing(Path(config.path))
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        total = pq.ParquetFile(path).metadata.num_rows
    elif path.name.endswith((".jsonl", ".json")):
        with open(path, "rb") as handle:
            total = sum(1 for line in handle if line.strip())
    else:
        return None
    return min(total, config.limit) if config.limit else total


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise SeedsError(f"{path}: seeds file not found")
    return path


def _read_file(path: Path) -> Iterator[SeedRow]:
    name = _existing(path).name
    if name.endswith(".parquet"):
        return _read_parquet(path)
    if name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
        return _read_jsonl(path)
    raise SeedsError(f"{path}: unknown seeds format (use .jsonl, .jsonl.gz or .parquet)")


def _read_jsonl(path: Path) -> Iterator[SeedRow]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                yield _parse_line(path.name, number, raw)
    except (OSError, EOFError) as exc:
        raise SeedsError(f"{path}: cannot read: {exc}") from None


def _parse_line(source: str, number: int, raw: bytes) -> SeedRow:
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return SeedRow(source, number, None, f"not UTF-8 ({exc.reason} at byte {exc.start})")
    except json.JSONDecodeError as exc:
        return SeedRow(source, number, None, f"invalid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(value, dict):
        return SeedRow(source, number, None, f"expected a JSON object, got {type(value).__name__}")
    return SeedRow(source, number, value)


def _read_parquet(path: Path) -> Iterator[SeedRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise SeedsError(f"{path}: cannot read Parquet: {exc}") from None
    index = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for fields in batch.to_pylist():
            yield SeedRow(path.name, index, fields)
            index += 1


def _read_hf(config: SeedsConfig) -> Iterator[SeedRow]:
    try:
        import datasets
    except ImportError:
        raise SeedsError(
            f"seeds.hf_dataset = '{config.hf_dataset}' needs the `datasets` package: pip install 'synthkiln[hf]'"
        ) from None
    try:
        dataset = datasets.load_dataset(
            config.hf_dataset, config.hf_config, split=config.split, streaming=True
        )
    except Exception as exc:  # the hub raises many types (offline, gated, missing)
        raise SeedsError(
            f"cannot load Hugging Face dataset '{config.hf_dataset}' (split {config.split}): {exc}; "
            "use a local copy with --set seeds.path=FILE"
        ) from None
    for index, fields in enumerate(dataset):
        yield SeedRow(config.hf_dataset or "", index, dict(fields))
