from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synthkiln.engine.config import SeedsConfig
from synthkiln.engine.errors import SeedsError
from synthkiln.engine.seeds import count_seeds, describe_seeds, read_seeds


def test_jsonl_bad_rows_come_out_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"q": "a"}\n\n{"q": oops}\n[1, 2]\n\xff\xfe\n{"q": "b"}\n')
    rows = list(read_seeds(SeedsConfig(path=str(path))))
    assert [(r.row, r.fields) for r in rows if r.error is None] == [(1, {"q": "a"}), (6, {"q": "b"})]
    errors = {r.row: r.error for r in rows if r.error}
    assert "invalid JSON" in errors[3]
    assert "expected a JSON object, got list" in errors[4]
    assert "not UTF-8" in errors[5]


def test_gzip_parquet_and_limit(tmp_path: Path) -> None:
    gz = tmp_path / "s.jsonl.gz"
    with gzip.open(gz, "wt") as handle:
        for i in range(5):
            handle.write(json.dumps({"q": f"x{i}"}) + "\n")
    assert [r.fields["q"] for r in read_seeds(SeedsConfig(path=str(gz), limit=3))] == ["x0", "x1", "x2"]
    parquet = tmp_path / "s.parquet"
    pq.write_table(pa.table({"q": ["a", "b"]}), parquet)
    assert [(r.row, r.fields) for r in read_seeds(SeedsConfig(path=str(parquet)))] == [
        (0, {"q": "a"}),
        (1, {"q": "b"}),
    ]
    assert count_seeds(SeedsConfig(path=str(parquet))) == 2
    assert describe_seeds(SeedsConfig(path=str(parquet)))["sha256"]


def test_unreadable_sources_stop_with_the_file_named(tmp_path: Path) -> None:
    with pytest.raises(SeedsError, match=r"missing\.jsonl: seeds file not found"):
        read_seeds(SeedsConfig(path=str(tmp_path / "missing.jsonl")))
    other = tmp_path / "seeds.csv"
    other.write_text("a,b\n")
    with pytest.raises(SeedsError, match="unknown seeds format"):
        read_seeds(SeedsConfig(path=str(other)))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(SeedsError, match=r"broken\.parquet: cannot read Parquet"):
        list(read_seeds(SeedsConfig(path=str(broken))))


def test_describe_seeds_takes_the_hash_from_the_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text('{"q": "a"}\n')
    config = SeedsConfig(path=str(path))
    hashed = describe_seeds(config)["sha256"]
    assert hashed == hashlib.sha256(path.read_bytes()).hexdigest()
    recorded = {str(path): {"sha256": "f" * 64, "size": 11, "mtime_ns": 1}}
    assert describe_seeds(config, recorded)["sha256"] == "f" * 64  # not reread
