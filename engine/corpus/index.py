"""The dedup index: the signatures that `synthkiln dedup` writes beside its shards, and that a recipe's
`dedup.against` reads back instead of re-hashing that corpus.

Two files per run: `index-rN.npz` (named in the manifest: parameters, input files, and which rows of
the signatures are kept, by `(file, row)`) and `index-rN.npy` (the signatures). The signing tasks write
every row's signature straight into one scratch `SignatureFile`, at its global row; when most rows are
kept that file is renamed into place as the index (rows removed as near-duplicates stay in it, unread),
so the biggest thing `dedup` writes is written once. Indexes of synthkiln before that keep their
signatures inside the `.npz`, and still load.
"""

from __future__ import annotations

import itertools
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthkiln.engine.errors import SynthkilnError
from synthkiln.engine.output.directory import MANIFEST, atomic_path, read_manifest
from synthkiln.kernels.minhash import SCHEME

HEADER_BYTES = 4096  # room for the `.npy` header, written once the number of rows is known
WINDOW_ROWS = 1 << 16  # rows of the file mapped at a time when reading (32 MiB of 128 permutations)


@dataclass(frozen=True)
class SignatureFile:
    """One `.npy` of `(rows, num_perm)` uint32 signatures filled by row ranges, in any order and from any
    node: each writer puts its rows at their own offset, so a retried task rewrites the same bytes."""

    path: str
    num_perm: int

    def create(self) -> None:
        with open(self.path, "xb") as handle:
            handle.truncate(HEADER_BYTES)

    def write(self, first_row: int, signatures: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(signatures, np.uint32)).cast("B")
        fd = os.open(self.path, os.O_WRONLY)
        try:
            offset = HEADER_BYTES + first_row * self.num_perm * 4
            while data:  # pwrite may write less than asked
                written = os.pwrite(fd, data, offset)
                data, offset = data[written:], offset + written
        finally:
            os.close(fd)

    def seal(self, rows: int) -> None:
        """Write the header: from here on `np.load` reads the file as any `.npy`."""
        fields = {"descr": np.dtype(np.uint32).str, "fortran_order": False, "shape": (rows, self.num_perm)}
        text = repr(fields).encode("latin1")
        body = text.ljust(HEADER_BYTES - 11) + b"\n"  # magic, version and length take 10 bytes
        with open(self.path, "r+b") as handle:
            handle.write(b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body)
            handle.truncate(HEADER_BYTES + rows * self.num_perm * 4)  # a corpus of empty tails included

    def rows(self) -> int:
        return (os.path.getsize(self.path) - HEADER_BYTES) // (self.num_perm * 4)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The signatures of `rows` (sorted: fewest mappings), mapped `WINDOW_ROWS` rows at a time: a
        mapped file's pages count as this process's memory until unmapped, and the kernel maps pages
        around each one read, so mapping a whole corpus's file to read rows spread over it would hold
        most of it."""
        out = np.empty((len(rows), self.num_perm), np.uint32)
        windows = rows // WINDOW_ROWS
        cuts = [0, *(np.flatnonzero(np.diff(windows)) + 1).tolist(), len(rows)]
        total = self.rows()
        for start, stop in itertools.pairwise(cuts):
            if start == stop:
                continue
            first = int(windows[start]) * WINDOW_ROWS
            mapped = np.memmap(
                self.path,
                np.uint32,
                "r",
                offset=HEADER_BYTES + first * self.num_perm * 4,
                shape=(min(WINDOW_ROWS, total - first), self.num_perm),
            )
            out[start:stop] = mapped[rows[start:stop] - first]
            del mapped
        return out


def corpus_index(path: Path) -> Path | None:
    """The index of a `synthkiln dedup` output directory (named in its manifest), if any."""
    if not (path / MANIFEST).is_file():
        return None
    name = read_manifest(path).get("index")
    return path / name if name and (path / name).is_file() else None


def save_index(
    path: Path,
    signatures: SignatureFile,
    count: int,
    kept: Callable[[], Iterator[np.ndarray]],
    located: Callable[[np.ndarray], np.ndarray],
    files: list[str],
    ngram: int,
) -> list[str]:
    """The index of `count` kept rows: `kept()` gives them (sorted global rows of `signatures`) a piece
    at a time (a corpus's can be larger than memory), `located` turns rows into `(file, row)` pairs.
    Returns the names written (`path` and its `.npy`).

    Where at least half the rows are kept the scratch signature file itself becomes the `.npy` (renamed,
    not copied); otherwise the kept rows' signatures are copied out, so that an index is never more than
    twice the size of what it indexes."""
    whole = 2 * count >= signatures.rows()
    array_path = path.with_suffix(".npy")
    with atomic_path(array_path) as temporary:
        if whole:
            os.replace(signatures.path, temporary)
        else:
            copied, first = SignatureFile(str(temporary), signatures.num_perm), 0
            copied.create()
            for piece in kept():
                copied.write(first, signatures.read(piece))
                first += len(piece)
            copied.seal(count)
    small = {
        "files": np.array(files, dtype=str),
        "num_perm": np.array(signatures.num_perm),
        "ngram": np.array(ngram),
        "scheme": np.array(SCHEME),
    }
    with atomic_path(path) as temporary, zipfile.ZipFile(temporary, "w", allowZip64=True) as archive:
        _stream_array(archive, "rows", map(located, kept()), np.int64, (count, 2))
        if whole:  # which rows of the `.npy` are the kept ones (else all, in order)
            _stream_array(archive, "positions", kept(), np.int64, (count,))
        for name, array in small.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, array, allow_pickle=False)
    return [path.name, array_path.name]


def _stream_array(
    archive: zipfile.ZipFile, name: str, pieces: Iterable[np.ndarray], dtype: type, shape: tuple[int, ...]
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
        rows = stored["rows"]
        names = [f"{files[f]}:{r}" for f, r in rows.tolist()]
        if "signatures" in stored:  # an index written before the signatures had a file of their own
            return stored["signatures"], names
        positions = stored["positions"] if "positions" in stored else np.arange(len(rows))
    array_path = path.with_suffix(".npy")
    try:
        signatures = SignatureFile(str(array_path), num_perm).read(positions)
    except (OSError, ValueError, IndexError) as exc:
        raise SynthkilnError(
            f"{array_path}: cannot read the index's signatures ({exc}); run `synthkiln dedup` again"
        ) from None
    if signatures.shape != (len(names), num_perm):
        raise SynthkilnError(
            f"{array_path}: signatures of shape {signatures.shape}, the index lists {len(names)} rows"
        )
    return signatures, names
