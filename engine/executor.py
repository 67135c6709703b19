"""Where the per-batch work of a command runs: in this process, or as tasks on a Ray cluster.

One interface for both: `map(fn, shared, items)` calls `fn(shared, item)` for every item and yields
`(item, result)` in the items' order (`payload(item)`, when given, is what is sent). `shared` (a
benchmark index, a plan) is sent once: through the object store on Ray, where a task's arguments would
otherwise copy it per call. Results come back in order, so a command decides exactly as it does
locally; at most `2 x workers` tasks are in flight, so a corpus streams through the cluster without
being held in the driver.

A task of `map` uses the devices Ray gave it and no other: one that asks for no GPU sees none (recent Ray stopped
hiding them; a GPU node's CPU tasks would otherwise all pick Triton and share its GPUs unscheduled),
and `--backend triton` on Ray gives each signing task a share of a GPU (`kernels`).

Ray retries a task whose worker dies (`max_retries`): a task here is a pure function of its
arguments (files it writes are written whole under a name it alone uses), so a retry cannot double a
result. The driver alone writes the output directory and commits it. Disconnecting never stops a
cluster this process did not start.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from synthkiln.engine.errors import SynthkilnError

Item = TypeVar("Item")
EXECUTORS = ("local", "ray")
_CANCEL_WAIT_S = 10
GPU_SHARE = 0.25  # a Triton task's share of a GPU: four overlap their CPU work (reading, band keys) on one
# Ray hides the GPUs from a task or actor that asks for none only with this set (ray-project/ray#54868).
HIDE_UNASKED_GPUS = {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}


class LocalExecutor:
    """Everything in this process, one item after another."""

    name = "local"
    workers = 1

    def map(
        self,
        fn: Callable[[Any, Any], Any],
        shared: Any,
        items: Iterable[Item],
        payload: Callable[[Item], Any] = lambda item: item,
        gpus: float = 0.0,
    ) -> Iterator[tuple[Item, Any]]:
        """`(item, fn(shared, payload(item)))` for every item, in order; on Ray each call is a task
        that holds one CPU and `gpus` GPUs."""
        for item in items:
            yield item, fn(shared, payload(item))

    def kernels(self, backend: str) -> tuple[str, float]:
        """The kernel backend (auto, numba, triton) a command's tasks use for `backend`, and the GPUs
        each task asks for: here, as asked (`auto` picks Triton where this process sees CUDA)."""
        return backend, 0.0

    def gpu_share(self) -> float:
        """The GPUs a model's task (MiniLM's) asks for: none here, where it uses this process's devices."""
        return 0.0

    def describe(self) -> dict[str, Any]:
        return {"executor": "local", "workers": 1}

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RayExecutor(LocalExecutor):
    """Tasks on a Ray cluster: the one at `address` (or RAY_ADDRESS), else a local one started here."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise SynthkilnError("--executor ray needs Ray: pip install 'synthkiln[ray]'") from None
        self._ray = ray
        self._connected_here = False  # disconnect at close what this object connected (never a stop)
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS")
            try:
                if address:
                    ray.init(address=address, log_to_driver=False)
                else:
                    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise SynthkilnError(f"cannot connect to the Ray cluster at {address}: {exc}") from None
            self._connected_here = True
        elif address and address != "auto":
            _check_same_cluster(ray.get_runtime_context().gcs_address, address)
        self.address = address
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._remotes: dict[tuple[Callable[..., Any], float], Any] = {}

    def map(
        self,
        fn: Callable[[Any, Any], Any],
        shared: Any,
        items: Iterable[Item],
        payload: Callable[[Item], Any] = lambda item: item,
        gpus: float = 0.0,
    ) -> Iterator[tuple[Item, Any]]:
        ray = self._ray
        remote = self._remotes.get((fn, gpus))
        if remote is None:
            task = ray.remote(num_cpus=1, max_retries=3, retry_exceptions=False)(_in_one_cpu)
            remote = self._remotes[fn, gpus] = task.options(
                name=fn.__name__, num_gpus=gpus, runtime_env={"env_vars": HIDE_UNASKED_GPUS}
            )
        shared_ref = ray.put(shared)
        pending: deque[tuple[Item, Any]] = deque()
        try:
            for item in items:
                pending.append((item, remote.remote(fn, shared_ref, payload(item))))
                if len(pending) >= 2 * self.workers:
                    yield self._next(pending, fn)
            while pending:
                yield self._next(pending, fn)
        finally:  # an error (or a consumer that stops): no task goes on writing behind our back
            for _, ref in pending:
                ray.cancel(ref, force=True)
            if pending:  # cancelling returns at once: wait for the workers to be gone before cleaning up
                ray.wait([ref for _, ref in pending], num_returns=len(pending), timeout=_CANCEL_WAIT_S)

    def kernels(self, backend: str) -> tuple[str, float]:
        """`auto` and `numba`: Numba in CPU tasks, which see no GPU. `triton`: each task asks for
        `GPU_SHARE` of a GPU, so GPU workers run it and tasks wait for a free share."""
        if backend != "triton":
            return backend, 0.0
        if not self._ray.cluster_resources().get("GPU"):
            raise SynthkilnError(
                "--backend triton on Ray runs on the cluster's GPUs, and it has none: start its GPU nodes "
                "with `ray start --num-gpus N`, or use --backend numba"
            )
        return backend, GPU_SHARE

    def gpu_share(self) -> float:
        """`GPU_SHARE` while the cluster has that much GPU free, else none: the model then runs on a CPU
        slot rather than wait for engines that hold every GPU to finish."""
        return GPU_SHARE if self._ray.available_resources().get("GPU", 0.0) >= GPU_SHARE else 0.0

    def _next(self, pending: deque[tuple[Item, Any]], fn: Callable[..., Any]) -> tuple[Item, Any]:
        item, ref = pending.popleft()
        try:
            return item, self._ray.get(ref)
        except self._ray.exceptions.RayError as exc:
            raise SynthkilnError(task_failure(fn.__name__, exc)) from None

    def describe(self) -> dict[str, Any]:
        nodes = [n for n in self._ray.nodes() if n.get("Alive")]
        return {"executor": "ray", "workers": self.workers, "nodes": len(nodes)}

    def close(self) -> None:
        if self._connected_here:
            self._ray.shutdown()  # disconnects; stops only a local Ray started by `init` here


def task_failure(name: str, exc: Exception) -> str:
    """What a user reads when a Ray task fails: a bad input as it is, else the cause and what to check."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, SynthkilnError):
        return str(cause)
    reason = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc).splitlines()[0]
    return (
        f"a Ray task ({name}) failed after Ray's retries: {reason}. Files it reads and writes sit beside "
        "the output: every node must see that path (a shared filesystem); nothing was committed"
    )


def open_executor(kind: str = "local", address: str | None = None) -> LocalExecutor:
    if kind == "local":
        if address:
            raise SynthkilnError("--ray-address needs --executor ray")
        return LocalExecutor()
    if kind == "ray":
        return RayExecutor(address)
    raise SynthkilnError(f"executor must be one of {', '.join(EXECUTORS)}, got {kind!r}")


def _in_one_cpu(fn: Callable[[Any, Any], Any], shared: Any, item: Any) -> Any:
    """`fn(shared, item)` in a Ray task, which holds one CPU slot: Numba's parallel kernels would
    otherwise run a thread per core of the node in every task (64 x 64 on a 64-core node). Ray caps
    OpenMP this way itself; Numba has its own setting."""
    import numba

    numba.set_num_threads(1)
    return fn(shared, item)


def _check_same_cluster(connected: str, asked: str) -> None:
    """A process holds one Ray connection: a command asked for another cluster than the one this
    process is connected to (a launcher's) is refused, not run on the wrong cluster. The same cluster
    may be named by any of this machine's addresses (`localhost`, its IP)."""

    def host_and_port(address: str) -> tuple[str, str]:
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            return socket.gethostbyname(host), port
        except OSError:
            return host, port

    def on_this_machine(ip: str) -> bool:
        with socket.socket() as probe:
            try:
                probe.bind((ip, 0))  # only this machine's own addresses can be bound
            except OSError:
                return False
        return True

    (have, have_port), (want, want_port) = host_and_port(connected), host_and_port(asked)
    same_host = have == want or (on_this_machine(have) and on_this_machine(want))
    if have_port != want_port or not same_host:
        raise SynthkilnError(
            f"this process is already connected to the Ray cluster at {connected}; it cannot also use "
            f"--ray-address {asked} (one Ray connection per process)"
        )
