"""The one guard of every directory synthkiln writes (`run`, `dedup`, `decontaminate`, `verify`, ...).

A directory is ours only when it holds our manifest (`manifest.json` whose `format` starts with
``synthkiln-``), or when it holds nothing but what an interrupted first run of ours leaves behind (our
lock file, `data/` and `rejected/` holding only shard files). Anything else that is not empty is
refused, with what was found named; nothing in it is touched. While open, an exclusive lock
(`flock` on ``.synthkiln.lock``, which records the holder's pid) keeps a second writer out.

What is "ours" is decided by exact names, never by a manifest's word alone: shards are
``part-NNNNN.parquet`` (`run`) or ``part-rR-NNNNN.parquet`` (corpus commands, R the run), extra files
``NAME-rR.EXT`` (dedup's ``index-r1.npz`` and ``index-r1.npy``), temporaries ``.NAME.tmp`` of those,
the manifest and the card.
A manifest listing any other path (``../x``, ``/etc/...``) is refused, and symlinked folders, lock or
manifest are refused rather than followed.

A command's scratch files (dedup's signatures and band keys) live in ``.synthkiln-work/RUN/`` inside
the locked directory (RUN: 32 hex digits, one per command), so that every node of a cluster writes them
to the output's storage and no other run can be using them: the folder goes when the command ends, and
one left by a killed run goes when the directory is next opened. Only names of ours are removed from
it (``signatures.npy``, ``bands-N.npy``, ... and their partials).

Shards go to `data/` and `rejected/` under temporary names, are renamed into place, and become part
of the dataset when the manifest that lists them replaces the previous one (the commit point). On
opening, shard files that no manifest lists (left by a crash) are removed; `--fresh` removes only the
files our manifest lists, our temporaries and the card, never anything else.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from synthkiln.engine.errors import OutputError

MANIFEST = "manifest.json"
CARD = "README.md"
REPORT = "report.html"  # written after each run by engine/output/report.py
LOCK = ".synthkiln.lock"
WORK = ".synthkiln-work"
FORMAT_PREFIX = "synthkiln-"
FOLDERS = ("data", "rejected")
# Exactly what our writers name files; nothing else is ever removed.
_SHARD_NAME = r"part-(?:\d{5}|r\d+-\d{5})\.parquet"
_SHARD = re.compile(rf"^{_SHARD_NAME}$")
_SHARD_TEMPORARY = re.compile(rf"^\.{_SHARD_NAME}\.tmp$")
_LISTED_SHARD = re.compile(rf"^(?:data|rejected)/{_SHARD_NAME}$")
_EXTRA_FILE = re.compile(r"^[a-z][a-z0-9_]*-r\d+\.[a-z0-9]+$")  # a command's per-run file: index-r2.npz
_SCRATCH_RUN = re.compile(r"^[0-9a-f]{32}$")  # one command's own scratch folder inside WORK
_SCRATCH_FILE = re.compile(
    r"^(?:signatures|(?:bands|priority|shingles|shingle-offsets|verdict)-\d+|edges-\d+-\d+)\.npy"
    r"(?:\.[0-9a-f]{32}\.partial)?$"
)  # what dedup's tasks write: signatures.npy, edges-2-5.npy, and their partials while written
_TOP_TEMPORARY = re.compile(
    r"^\.(?:manifest\.json|README\.md|report\.html|[a-z][a-z0-9_]*-r\d+\.[a-z0-9]+)\.tmp$"
)


class OutputDirectory:
    """An output directory claimed for writing: checked, locked, cleaned of uncommitted shards.

    `previous` is the manifest found there (None for a new directory). `output_format` is the format
    marker the caller writes; a directory holding another format of ours is refused too (a `dedup`
    output is not a `run` dataset)."""

    def __init__(self, path: str | Path, output_format: str, fresh: bool = False) -> None:
        self.path = Path(path)
        self.output_format = output_format
        self._lock_fd: int | None = None
        self.previous = _our_manifest(self.path, output_format)  # refuses before anything is created
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self.previous = _our_manifest(self.path, output_format)  # what the lock now protects
            if fresh and self.previous is not None:
                self._remove_listed(self.previous)
                self.previous = None
            self.remove_unlisted(self.previous)
            self._remove_scratch()  # a killed run's: the lock says no run is using it
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> OutputDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------------

    def write_shard(self, table: pa.Table, relative: str) -> dict[str, Any]:
        """Write `relative` (e.g. `data/part-00000.parquet`) atomically; the entry a manifest lists."""
        path = self.path / relative
        path.parent.mkdir(exist_ok=True)  # a non-directory in its place was refused on opening
        write_parquet_atomic(table, path)
        return {"path": relative, "rows": table.num_rows}

    def commit(self, manifest: dict[str, Any], card: str | None = None) -> None:
        """Publish `manifest` (the commit point), then the card; shards and files the previous
        manifest listed and this one does not are removed after (a replaced corpus output leaves no
        stale part)."""
        manifest = {"format": self.output_format, **manifest}
        _check_listing(self.path / MANIFEST, manifest)
        write_text_atomic(self.path / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        if card is not None:
            write_text_atomic(self.path / CARD, card)
        self.remove_unlisted(manifest)
        self.previous = manifest

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A scratch folder of this command's own (an absolute path: a cluster's workers do not share
        our working directory), removed when the block ends. Its own, not the directory's: a task
        of a killed run that Ray still finishes cannot write over this run's files."""
        work = self.path / WORK
        work.mkdir(exist_ok=True)
        if work.is_symlink():  # made since the opening check: never write through it
            raise OutputError(f"{work} is a symlink; synthkiln writes only real files and folders of its own")
        run = work / uuid.uuid4().hex
        run.mkdir()
        try:
            yield run.absolute()
        finally:
            self._remove_scratch()

    def _remove_scratch(self) -> None:
        work = self.path / WORK
        if not work.is_dir() or work.is_symlink():
            return
        ours, _ = _scratch_files(work)
        for path in ours:
            path.unlink(missing_ok=True)  # a cancelled task may have renamed its file away meanwhile
        for run in work.iterdir():
            with contextlib.suppress(OSError):  # not ours, or still holding what we did not write
                run.rmdir()
        with contextlib.suppress(OSError):
            work.rmdir()

    def remove_unlisted(self, manifest: dict[str, Any] | None) -> None:
        """Remove files of ours (by exact name) that `manifest` does not list: a crash's leftovers,
        a replaced run's shards."""
        listed = listed_shards(manifest) | set((manifest or {}).get("files", []))
        for folder in FOLDERS:
            directory = self.path / folder
            if not directory.is_dir() or directory.is_symlink():
                continue
            for path in directory.iterdir():
                shard = _SHARD.match(path.name) and f"{folder}/{path.name}" not in listed
                if (shard or _SHARD_TEMPORARY.match(path.name)) and _is_plain_file(path):
                    path.unlink()
        for path in self.path.iterdir():
            extra = _EXTRA_FILE.match(path.name) and path.name not in listed
            if (extra or _TOP_TEMPORARY.match(path.name)) and _is_plain_file(path):
                path.unlink()

    def close(self) -> None:
        """Release the lock. Before any commit, what this run wrote goes too: a failed first run
        leaves nothing that would block its corrected rerun."""
        if self._lock_fd is None:
            return
        if self.previous is None:
            self.remove_unlisted(None)
            for folder in FOLDERS:
                with contextlib.suppress(OSError):  # not empty: holds files that are not ours
                    (self.path / folder).rmdir()
        with contextlib.suppress(FileNotFoundError):
            (self.path / LOCK).unlink()
        os.close(self._lock_fd)  # closing releases the flock
        self._lock_fd = None

    # -- guarding ------------------------------------------------------------------------------------

    def _lock(self) -> None:
        path = self.path / LOCK
        while True:
            try:  # never through a symlink: the lock file is truncated and written
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as exc:
                raise OutputError(
                    f"{path}: cannot be used as synthkiln's lock file ({exc.strerror})"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = _read_pid(path)
                raise OutputError(
                    f"{self.path} is being written by another synthkiln process (pid {holder}, lock {path}); "
                    "wait for it to finish or choose another --out"
                ) from None
            # The holder before us may have removed the lock file between our open and our flock:
            # then we locked a file nobody else can see, and must lock the one at the path.
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _remove_listed(self, manifest: dict[str, Any]) -> None:
        """`--fresh`: the files our manifest lists, the card and the manifest itself; nothing else."""
        for relative in sorted(listed_shards(manifest)) + list(manifest.get("files", [])):
            if _is_plain_file(self.path / relative):  # names checked when the manifest was read
                (self.path / relative).unlink()
        (self.path / CARD).unlink(missing_ok=True)
        (self.path / MANIFEST).unlink()
        for folder in FOLDERS:
            with contextlib.suppress(OSError):  # still holding files we did not write: it stays
                (self.path / folder).rmdir()


def _is_plain_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _check_listing(path: Path, manifest: dict[str, Any]) -> None:
    """Every path a manifest lists is one of our exact names inside the directory: a manifest that
    says otherwise (edited, or from elsewhere) cannot make us delete `../x`."""
    for relative in listed_shards(manifest):
        if not _LISTED_SHARD.match(relative):
            raise OutputError(f"{path}: lists shard {relative!r}, not a name synthkiln writes; refusing it")
    for name in manifest.get("files", []):
        if not (isinstance(name, str) and _EXTRA_FILE.match(name)):
            raise OutputError(f"{path}: lists file {name!r}, not a name synthkiln writes; refusing it")


def listed_shards(manifest: dict[str, Any] | None) -> set[str]:
    if manifest is None:
        return set()
    shards = manifest.get("shards", {})
    return {shard["path"] for folder in FOLDERS for shard in shards.get(folder, [])}


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of one of our directories, or an error naming the file and what is wrong."""
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OutputError(f"{directory}: no {MANIFEST}; not a synthkiln output directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OutputError(
            f"{path}: unreadable manifest ({exc}); synthkiln cannot tell which files in {directory} are its "
            "own, so it touches none: move the directory aside or remove it yourself"
        ) from None
    if not isinstance(manifest, dict) or not str(manifest.get("format", "")).startswith(FORMAT_PREFIX):
        raise OutputError(f"{path} is not a synthkiln manifest (no 'format: {FORMAT_PREFIX}...' marker)")
    try:
        _check_listing(path, manifest)
    except (AttributeError, KeyError, TypeError):
        raise OutputError(
            f"{path}: its shard listing is malformed; synthkiln touches nothing it lists"
        ) from None
    return manifest


def _our_manifest(directory: Path, output_format: str) -> dict[str, Any] | None:
    """The manifest when `directory` is ours and of `output_format`; None when it is new or empty (or
    holds only what an interrupted first run of ours left); otherwise an error naming what was found."""
    if not directory.exists():
        return None
    if not directory.is_dir():
        raise OutputError(f"{directory} exists and is not a directory; choose another --out")
    for name in (*FOLDERS, WORK, MANIFEST, LOCK):
        entry = directory / name
        folder = name in (*FOLDERS, WORK)
        if entry.is_symlink() or (folder and entry.exists() and not entry.is_dir()):
            what = "a symlink" if entry.is_symlink() else "not a directory"
            raise OutputError(f"{entry} is {what}; synthkiln writes only real files and folders of its own")
    if (directory / MANIFEST).exists():
        manifest = read_manifest(directory)
        if manifest["format"] != output_format:
            raise OutputError(
                f"{directory} holds synthkiln output of another kind ({manifest['format']}, this command "
                f"writes {output_format}); choose another --out"
            )
        return manifest
    foreign = _foreign_entries(directory)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputError(
            f"{directory} is not empty and holds no synthkiln manifest (found: {shown}); synthkiln never "
            "writes into or deletes from a directory it did not create: choose another --out"
        )
    return None


def _foreign_entries(directory: Path) -> list[str]:
    """Entries of a manifest-less directory that are not an interrupted run of ours. Shard-like files
    count as ours only beside our lock file (a Hugging Face folder also has `data/`)."""
    started_by_us = (directory / LOCK).is_file()
    foreign = []
    for entry in sorted(directory.iterdir()):
        if entry.name == LOCK or (
            started_by_us
            and (_TOP_TEMPORARY.match(entry.name) or _EXTRA_FILE.match(entry.name) or entry.name == REPORT)
        ):
            continue
        if started_by_us and entry.name == WORK and entry.is_dir():
            foreign.extend(f"{WORK}/{name}" for name in _scratch_files(entry)[1])
            continue
        if entry.name in FOLDERS and entry.is_dir():
            ours = (_SHARD, _SHARD_TEMPORARY)
            inside = [
                p for p in entry.iterdir() if not (started_by_us and any(r.match(p.name) for r in ours))
            ]
            foreign.extend(f"{entry.name}/{p.name}" for p in sorted(inside))
            continue
        foreign.append(entry.name + ("/" if entry.is_dir() else ""))
    return foreign


def _scratch_files(work: Path) -> tuple[list[Path], list[str]]:
    """Our files in the scratch folder (inside per-command folders), and the names of what else is there."""
    ours, foreign = [], []
    for run in sorted(work.iterdir()):
        if not (_SCRATCH_RUN.match(run.name) and run.is_dir() and not run.is_symlink()):
            foreign.append(run.name)
            continue
        for path in sorted(run.iterdir()):
            if _SCRATCH_FILE.match(path.name) and _is_plain_file(path):
                ours.append(path)
            else:
                foreign.append(f"{run.name}/{path.name}")
    return ours, foreign


def _read_pid(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary, compression="zstd")


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Write to a temporary beside `path`, then rename it into place. A failed write (disk full, a size
    limit) removes the temporary and says which file could not be written; what was committed stays."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        yield temporary
        _fsync(temporary)
        os.replace(temporary, path)
        _fsync_directory(path.parent)  # the rename itself survives a power cut
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        reason = exc.strerror or str(exc)
        raise OutputError(
            f"{path}: cannot write ({reason}); everything committed before is kept, rerun to resume once "
            "there is room"
        ) from None


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
