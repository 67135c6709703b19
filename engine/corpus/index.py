"""The dedup index: the kept rows' signatures that `synthkiln dedup` writes beside its shards
(`index-rN.npz`, named in the manifest), and that a recipe's `dedup.against` reads back instead of
re-hashing that corpus."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from synthkiln.engine.errors import SynthkilnError
from synthkiln.engine.output.directory import MANIFEST, atomic_path, read_manifest
from synthkiln.kernels.minhash import SCHEME


def corpus_index(path: Path) -> Path | None:
    """The signature index of a `synthkiln dedup` output directory (named in its manifest), if any."""
    if not (path / MANIFEST).is_file():
        return None
    name = read_manifest(path).get("index")
    return path / name if name and (path / name).is_file() else None


def save_index(
    path: Path,
    signatures: Iterable[np.ndarray],
    rows: Iterable[np.ndarray],
    count: int,
    files: list[str],
    num_perm: int,
    ngram: int,
) -> None:
    """Signatures of `count` kept documents and where they came from (`files[rows[i, 0]]`, row
    `rows[i, 1]`), both given in pieces and streamed to disk (a corpus's index can be larger than
    memory), reusable as `dedup.against` without re-hashing the corpus. The file is what `np.savez`
    writes."""
    small = {
        "files": np.array(files, dtype=str),
        "num_perm": np.array(num_perm),
        "ngram": np.array(ngram),
        "scheme": np.array(SCHEME),
    }
    with atomic_path(path) as temporary, zipfile.ZipFile(temporary, "w", allowZip64=True) as archive:
        _stream_array(archive, "signatures", signatures, np.uint32, (count, num_perm))
        _stream_array(archive, "rows", rows, np.int64, (count, 2))
        for name, array in small.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, array, allow_pickle=False)


def _stream_array(
    archive: zipfile.ZipFile, name: str, pieces: Iterable[np.ndarray], dtype: type, shape: tuple[int, int]
) -> None:
    """One `.npy` member of `shape`, written piece by piece."""
    with archive.open(f"{name}.npy", "w", force_zip64=True) as entry:
        header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_2_0(entry, header)
        written = 0
        for piece in filter(len, pieces):  # an empty piece has no bytes to view
            entry.write(memoryview(np.ascontiguousarray(piece, dtype=dtype)).cast("B"))
            written += len(piece)
        if written != shape[0]:
            raise AssertionError(f"{name}: {shape[0]} rows announced, {written} written")


def load_index(path: Path, num_perm: int, ngram: int) -> tuple[np.ndarray, list[str]]:
    """The signatures and `file:row` names of a saved index; refuses one built with other parameters."""
    with np.load(path, allow_pickle=False) as stored:
        scheme = int(stored["scheme"]) if "scheme" in stored else 1
        if scheme != SCHEME:
            raise SynthkilnError(
                f"{path}: signatures of hashing scheme {scheme}, this synthkiln computes scheme {SCHEME}; "
                "run `synthkiln dedup` on that corpus again to rebuild the index"
            )
        if int(stored["num_perm"]) != num_perm or int(stored["ngram"]) != ngram:
            raise SynthkilnError(
                f"{path}: built with num_perm={int(stored['num_perm'])}, ngram={int(stored['ngram'])}; "
                f"this run uses num_perm={num_perm}, ngram={ngram}"
            )
        files = stored["files"].tolist()
        names = [f"{files[f]}:{r}" for f, r in stored["rows"].tolist()]
        return stored["signatures"], names
