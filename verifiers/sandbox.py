"""One untrusted execution, isolated: uid nobody, bubblewrap namespaces, seccomp, rlimits, timeouts.

The command line, outermost first::

    env -i setpriv --reuid=nobody --regid=nogroup --clear-groups        (uid nobody on the host)
      bwrap --unshare-all --unshare-user --disable-userns --die-with-parent --new-session
            --ro-bind / / --tmpfs /tmp --bind WORK /tmp/job --proc /proc --dev /dev
            --clearenv --cap-drop ALL --seccomp FD                       (namespaces, read-only root)
        prlimit --as --cpu --nproc --fsize --nofile --core=0            (limits set inside: see DESIGN.md)
          /usr/bin/python3 -I -B ...                                     (the job)

`env -i` matters: `--clearenv` clears only the child's environment, and /proc/1/environ inside shows
what bubblewrap itself was started with. The seccomp program (compiled once per process with
libseccomp) refuses sockets other than AF_UNIX and the syscalls that reach outside a container.
The interpreter is the system's `/usr/bin/python3`, which uid nobody can read (a pyenv or venv
interpreter under /root cannot be); job files are copied into the work dir. Output goes to files
capped by RLIMIT_FSIZE, so a job printing a gigabyte is stopped at the cap, not buffered. A timeout
kills the whole process group; bubblewrap's pid namespace then takes every process left inside.
The job reports through a pipe whose fd number it gets in argv; the verdict is decided from that
report by the caller, never from the exit status or stdout alone.
Without bubblewrap the same runs with `setpriv` + `prlimit` only, and only when asked for by name.

Started by a user other than root, there is no `setpriv` (changing uid needs root): bubblewrap's user
namespace maps the user to uid nobody inside, and since on the host the job then runs as that user,
the root it sees holds only /usr, /etc and the library links (not the user's home or work). If the
kernel refuses unprivileged user namespaces, `Sandbox` refuses at start and says so.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import hashlib
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

Mode = Literal["bubblewrap", "rlimits-only"]

NOBODY_UID, NOBODY_GID = 65534, 65534
PYTHON = "/usr/bin/python3"
WORK = "/tmp/job"  # the writable work dir inside (on the private /tmp: needs no mount point in /)
RESULT_FD = "{result_fd}"  # in argv: replaced by the number of the fd the job writes its result to

_DENIED_SYSCALLS = (
    "ptrace", "mount", "umount2", "unshare", "setns", "bpf", "keyctl", "add_key", "request_key",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot", "swapon",
    "swapoff", "pivot_root", "chroot", "perf_event_open", "userfaultfd", "process_vm_readv",
    "process_vm_writev", "open_by_handle_at", "name_to_handle_at", "acct", "quotactl", "syslog",
    "settimeofday", "clock_settime", "iopl", "ioperm", "fanotify_init", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "mbind", "migrate_pages", "move_pages", "personality",
)  # fmt: skip
_RESULT_CAP = 1 << 20


class SandboxUnavailable(RuntimeError):
    """The isolation asked for cannot be provided on this machine."""


def _privileged() -> bool:
    """Root on the host: jobs get uid nobody there too (`setpriv`); otherwise only inside bubblewrap."""
    return os.geteuid() == 0


def _system_binds() -> list[str]:
    """Without root the job runs as the user on the host: show it the system only, read-only."""
    binds = ["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for path in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(path):
            binds += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            binds += ["--ro-bind", path, path]
    return binds


@dataclass(frozen=True)
class Limits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30  # address space
    processes: int = 64
    file_bytes: int = 16 << 20  # any file written, stdout and stderr included
    open_files: int = 256
    output_bytes: int = 16 << 10  # how much of stdout/stderr is kept


@dataclass
class Execution:
    """What a sandboxed run did. `result` is what the job wrote to its result pipe, if anything."""

    exit_code: int | None
    signal: int | None
    timed_out: bool
    seconds: float
    stdout: str
    stderr: str
    result: bytes
    truncated: bool = False
    sandbox_error: str | None = None  # the sandbox itself failed to start: not the job's fault


class Sandbox:
    def __init__(self, mode: Mode = "bubblewrap", limits: Limits | None = None, python: str = PYTHON) -> None:
        if mode not in ("bubblewrap", "rlimits-only"):
            raise ValueError(f"sandbox must be 'bubblewrap' or 'rlimits-only', got {mode!r}")
        self.mode, self.limits, self.python = mode, limits or Limits(), python
        self.privileged = _privileged()
        tools = ("setpriv", "prlimit") if self.privileged else ("prlimit",)
        missing = [tool for tool in tools if shutil.which(tool) is None]
        if mode == "bubblewrap" and shutil.which("bwrap") is None:
            missing.append("bwrap (Debian package bubblewrap)")
        if not Path(python).is_file():
            missing.append(python)
        if missing:
            hint = ", or choose sandbox = 'rlimits-only' explicitly (weaker)" if mode == "bubblewrap" else ""
            raise SandboxUnavailable(f"cannot isolate code: missing {', '.join(missing)}; install it{hint}")
        self._seccomp = _compile_seccomp() if mode == "bubblewrap" else b""
        if mode == "bubblewrap" and not self.privileged:
            self._probe()

    def _probe(self) -> None:
        """Without root, bubblewrap needs unprivileged user namespaces: find out now, not at the first job."""
        done = subprocess.run(
            ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--uid", str(NOBODY_UID),
             "--gid", str(NOBODY_GID), *_system_binds(), "--", "/usr/bin/true"],
            capture_output=True, text=True, env={}, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise SandboxUnavailable(
                f"cannot isolate code as uid {os.geteuid()} (not root): bubblewrap cannot create a user "
                f"namespace ({done.stderr.strip()[:200] or f'exit {done.returncode}'}); run as root, allow "
                "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, or on Ubuntu "
                "kernel.apparmor_restrict_unprivileged_userns=0), or choose sandbox = 'rlimits-only' (weaker)"
            )

    def describe(self) -> dict[str, object]:
        uid = (
            "nobody"
            if self.privileged
            else f"nobody inside, {os.geteuid()} on the host (not started as root)"
        )
        return {"sandbox": self.mode, "python": self.python, "uid": uid, "limits": asdict(self.limits)}

    def run(
        self,
        argv: list[str],
        files: dict[str, bytes | str],
        stdin: bytes = b"",
        limits: Limits | None = None,
        mounts: dict[str, str] | None = None,
    ) -> Execution:
        """Run `argv` ("python" stands for the sandbox's interpreter) in a fresh work dir holding `files`,
        with each host directory of `mounts` visible read-only under its name in the work dir."""
        limits = limits or self.limits
        host = Path(tempfile.mkdtemp(prefix="synthkiln-job-"))
        try:
            work, out = host / "work", host / "out"
            work.mkdir()
            out.mkdir(mode=0o700)
            for name, content in files.items():
                (work / name).write_bytes(content.encode() if isinstance(content, str) else content)
            for name, directory in (mounts or {}).items():
                if self.mode == "bubblewrap":
                    (work / name).mkdir()  # the mount point
                else:
                    (work / name).symlink_to(directory)  # readable only where uid nobody may traverse
            if self.privileged:
                os.chown(work, NOBODY_UID, NOBODY_GID)
            os.chmod(host, 0o711)
            return self._execute(argv, work, out, stdin, limits, mounts or {})
        finally:
            shutil.rmtree(host, ignore_errors=True)

    def _execute(
        self, argv: list[str], work: Path, out: Path, stdin: bytes, limits: Limits, mounts: dict[str, str]
    ) -> Execution:
        result_read, result_write = os.pipe()
        argv = [{"python": self.python, RESULT_FD: str(result_write)}.get(a, a) for a in argv]
        inner = [
            "prlimit", f"--as={limits.memory_bytes}", f"--cpu={limits.cpu_seconds}", f"--nproc={limits.processes}",
            f"--fsize={limits.file_bytes}", f"--nofile={limits.open_files}", "--core=0", "--", *argv,
        ]  # fmt: skip
        keep = [result_write]
        cwd: str | None = None
        if self.mode == "bubblewrap":
            keep.append(_pipe_holding(self._seccomp))
            binds = []
            for name, directory in mounts.items():  # uid nobody must be able to reach them: see `readable`
                binds += ["--ro-bind", directory, f"{WORK}/{name}"]
            root = ["--ro-bind", "/", "/"] if self.privileged else _system_binds()
            command = [
                "bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
                "--uid", str(NOBODY_UID), "--gid", str(NOBODY_GID),
                "--new-session", *root, "--tmpfs", "/tmp", "--bind", str(work), WORK,
                "--chdir", WORK, "--proc", "/proc", "--dev", "/dev", "--clearenv",
                "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", WORK, "--cap-drop", "ALL",
                *binds, "--seccomp", str(keep[1]), "--", *inner,
            ]  # fmt: skip
        else:
            command, cwd = inner, str(work)
        if self.privileged:
            command = [
                "setpriv",
                f"--reuid={NOBODY_UID}",
                f"--regid={NOBODY_GID}",
                "--clear-groups",
                *command,
            ]
        command = ["env", "-i", *command]
        started = time.perf_counter()
        with open(out / "stdout", "wb") as stdout, open(out / "stderr", "wb") as stderr:
            try:
                process = subprocess.Popen(
                    command, stdin=subprocess.PIPE, stdout=stdout, stderr=stderr, cwd=cwd, pass_fds=keep,
                    start_new_session=True,
                )  # fmt: skip
            finally:
                for fd in keep:
                    os.close(fd)
            result, timed_out = _communicate(process, stdin, result_read, limits)
        seconds = time.perf_counter() - started
        stdout_text, stdout_cut = _head(out / "stdout", limits.output_bytes)
        stderr_text, stderr_cut = _head(out / "stderr", limits.output_bytes)
        code = process.returncode
        failed_to_start = self.mode == "bubblewrap" and code == 1 and stderr_text.startswith("bwrap:")
        return Execution(
            exit_code=code if code >= 0 else None, signal=-code if code < 0 else None, timed_out=timed_out,
            seconds=seconds, stdout=stdout_text, stderr=stderr_text, result=result,
            truncated=stdout_cut or stderr_cut, sandbox_error=stderr_text.strip() if failed_to_start else None,
        )  # fmt: skip


def _communicate(
    process: subprocess.Popen, stdin: bytes, result_fd: int, limits: Limits
) -> tuple[bytes, bool]:
    """Feed stdin, read the result pipe (capped), enforce the wall clock by killing the process group."""
    deadline = time.monotonic() + limits.wall_seconds
    try:
        process.stdin.write(stdin)  # type: ignore[union-attr]
        process.stdin.close()  # type: ignore[union-attr]
    except BrokenPipeError:
        pass
    chunks: list[bytes] = []
    size, timed_out, pipe_open = 0, False, True
    try:
        while process.poll() is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            if not pipe_open:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=min(remaining, 0.05))
                continue
            ready, _, _ = select.select([result_fd], [], [], min(remaining, 0.05))
            if ready:
                chunk = os.read(result_fd, 65536)
                pipe_open = bool(chunk)
                chunks.append(chunk[: max(0, _RESULT_CAP - size)])
                size += len(chunk)
    finally:
        _kill_group(process)  # whatever is left: a straggler holding the pipe, a timed-out job
        os.set_blocking(result_fd, False)
        try:
            while size < _RESULT_CAP and (chunk := os.read(result_fd, 65536)):
                chunks.append(chunk[: _RESULT_CAP - size])
                size += len(chunk)
        except BlockingIOError:
            pass
        os.close(result_fd)
    return b"".join(chunks), timed_out


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # the whole session: bwrap, the job, anything it forked
    process.wait()


_MIRRORS: dict[tuple[str, tuple[str, ...]], Path] = {}  # checked once per process


def readable(directory: Path, distributions: list[str]) -> Path:
    """`directory` if the job's uid can read it, else a world-readable mirror of the files of
    `distributions` (and what they require) under the temp dir, shared by this user's runs.

    A checkout under /root, or made by `mktemp -d` (mode 0700), hides its venv from uid nobody. The temp
    dir is shared: a mirror found there is used only when it is owned by us or root, writable by no one
    else, and holds exactly the installed files, byte for byte (sha256); otherwise one is made privately.
    """
    if not _privileged() and os.access(directory, os.R_OK | os.X_OK):
        return directory  # without root the job is this user on the host: it reads what we read
    if _world_readable(directory):
        return directory
    key = (str(directory), tuple(distributions))
    if key in _MIRRORS:
        return _MIRRORS[key]
    files = _distribution_files(distributions)
    versions = ",".join(sorted(files.pop("")))
    digest = hashlib.sha256(versions.encode()).hexdigest()[:16]
    mirror = Path(tempfile.gettempdir()) / f"synthkiln-site-{os.geteuid()}-{digest}"
    if not mirror.exists():
        staging = _populate(Path(tempfile.mkdtemp(prefix=".synthkiln-site-", dir=mirror.parent)), files)
        try:
            staging.rename(mirror)
        except OSError:  # another process made it first: checked below like any found
            shutil.rmtree(staging, ignore_errors=True)
    if not _trusted(mirror, files):
        mirror = _populate(Path(tempfile.mkdtemp(prefix="synthkiln-site-private-")), files)
        atexit.register(shutil.rmtree, mirror, ignore_errors=True)
    _MIRRORS[key] = mirror
    return mirror


def _distribution_files(distributions: list[str]) -> dict[str, Any]:
    """Relative path -> installed file, for `distributions` and what they require; key "" holds the
    `name=version` list that names the mirror."""
    from importlib import metadata

    names, seen, missing = list(distributions), {}, set()
    while names:
        name = re.match(r"[A-Za-z0-9_.-]+", names.pop()).group(0).lower().replace("_", "-")  # type: ignore[union-attr]
        if name in seen or name in missing:
            continue
        try:
            seen[name] = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.add(name)  # an optional extra that is not installed
            continue
        names += [r for r in metadata.requires(name) or [] if "extra ==" not in r]  # extras: named explicitly
    files: dict[str, Any] = {"": [f"{n}={d.version}" for n, d in seen.items()]}
    for distribution in seen.values():
        for file in distribution.files or []:
            source = Path(distribution.locate_file(file))
            if source.is_file() and not str(file).startswith(".."):
                files[Path(file).as_posix()] = source
    return files


def _populate(target: Path, files: dict[str, Any]) -> Path:
    for relative, source in files.items():
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)  # keeps mtimes, so the compiled .pyc files stay valid
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


def _trusted(mirror: Path, files: dict[str, Any]) -> bool:
    """Owned by us or root, writable by no one else, no links, and exactly `files`, byte for byte."""
    me, found = os.geteuid(), set()
    try:
        for path in [mirror, *mirror.rglob("*")]:
            info = path.lstat()
            if info.st_uid not in (0, me) or info.st_mode & 0o022 or not (path.is_dir() or path.is_file()):
                return False
            if path.is_symlink():
                return False
            if path.is_file():
                found.add(path.relative_to(mirror).as_posix())
        if found != set(files):
            return False
        return all(_sha256(mirror / relative) == _sha256(source) for relative, source in files.items())
    except OSError:
        return False


def _sha256(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").digest()


def _world_readable(directory: Path) -> bool:
    """Others may traverse every ancestor and read the directory itself."""
    try:
        ancestors_open = all(p.stat().st_mode & 0o001 for p in directory.parents)
        return ancestors_open and directory.stat().st_mode & 0o005 == 0o005
    except OSError:
        return False


def _head(path: Path, limit: int) -> tuple[str, bool]:
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    return data[:limit].decode("utf-8", errors="replace"), len(data) > limit


def _pipe_holding(data: bytes) -> int:
    """The read end of a pipe already holding `data` (bwrap reads the seccomp program from it)."""
    read, write = os.pipe()
    os.write(write, data)  # a few hundred bytes: well within a pipe's buffer
    os.close(write)
    return read


_SECCOMP: bytes | None = None


def _compile_seccomp() -> bytes:
    """The seccomp program as BPF for bwrap's --seccomp (compiled once per process)."""
    global _SECCOMP
    if _SECCOMP is not None:
        return _SECCOMP
    try:
        import pyseccomp as seccomp
    except ImportError as exc:
        raise SandboxUnavailable(f"seccomp bindings missing ({exc}); pip install pyseccomp") from None
    try:
        rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        for name in _DENIED_SYSCALLS:
            rules.add_rule(seccomp.ERRNO(errno.EPERM), name)
        rules.add_rule(
            seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.NE, socket.AF_UNIX)
        )
        with tempfile.TemporaryFile() as handle:
            rules.export_bpf(handle)
            handle.seek(0)
            _SECCOMP = handle.read()
    except (OSError, RuntimeError) as exc:  # libseccomp missing or refusing a rule
        raise SandboxUnavailable(f"cannot build the seccomp filter: {exc} (install libseccomp2)") from None
    return _SECCOMP
