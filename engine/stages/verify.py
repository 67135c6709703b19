"""Verification in the pipeline (the `verify` stage) and on files (`synthkiln verify`).

Both hand rows to a :class:`~synthkiln.verifiers.VerifierPool`: verifiers run cheapest first, and a
row stops at its first failing verdict. Every verdict is recorded on the row (`verdicts`), so a kept
row shows what proved it right and under which sandbox.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from synthkiln.engine.config import VerifyConfig
from synthkiln.engine.errors import SynthkilnError
from synthkiln.engine.executor import RayExecutor
from synthkiln.engine.schema import VERDICT
from synthkiln.engine.stages.base import Stage, set_column
from synthkiln.verifiers import VERIFIERS, Judge, Limits, SandboxUnavailable, Verdict, Verifier, VerifierPool
from synthkiln.verifiers.errors import VerifierError

_RENAMED = {"field": "field_name"}  # recipe/CLI spelling -> constructor argument


def build_verifier(
    name: str,
    options: dict[str, Any],
    served: ServedTeachers | None = None,
    ignore_unknown: bool = False,
) -> Verifier:
    """A verifier from its name and options (`schema_file` is read as JSON for json-schema).

    `judge` and `knowledge-base` judge with a model: `teacher` names one the pipeline already serves
    (its label, in `served`: its engine is shared, not loaded twice; without `teacher`, the recipe's
    first) or is a teacher table of their own (loaded for them, with its own memory share). Unknown
    options are an error, unless `ignore_unknown` (the CLI offers one set of options to every verifier
    named)."""
    if name not in VERIFIERS:
        raise SynthkilnError(f"unknown verifier {name!r} (known: {', '.join(sorted(VERIFIERS))})")
    options = {_RENAMED.get(k, k): v for k, v in options.items() if k != "name"}
    if name in ("judge", "knowledge-base"):
        generate, release = _judge_model(
            name, options.pop("teacher", None), served, options.pop("max_tokens", 96)
        )
        if name == "judge":
            options.update(generate=generate, release=release)
        else:
            try:
                options["judge"] = Judge(generate, threshold=options.pop("threshold", 7), release=release)
            except VerifierError as exc:
                raise SynthkilnError(f"verifier {name}: {exc}") from None
    if name == "json-schema" and "schema_file" in options:
        path = Path(options.pop("schema_file"))
        try:
            options["schema"] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SynthkilnError(f"verifier {name}: schema_file {path}: {exc}") from None
    accepted = set(inspect.signature(VERIFIERS[name]).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown and not ignore_unknown:
        raise SynthkilnError(f"verifier {name}: unknown option(s) {unknown} (accepted: {sorted(accepted)})")
    options = {key: value for key, value in options.items() if key in accepted}
    try:
        return VERIFIERS[name](**options)
    except VerifierError as exc:  # the verifiers' own error names the file or option
        raise SynthkilnError(f"verifier {name}: {exc}") from None
    except Exception as exc:  # a bad pattern or schema names itself here
        raise SynthkilnError(f"verifier {name}: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class ServedTeachers:
    """The teachers a pipeline serves: `resolve(label)` gives one's thread-safe `generate` owner."""

    labels: list[str]
    resolve: Callable[[str], Any]


def _judge_model(
    name: str, teacher: str | dict[str, Any] | None, served: ServedTeachers | None, max_tokens: int
) -> tuple[Callable[[list[str]], list[str]], Callable[[], None]]:
    """The judge's `generate` and what releases its model: a served teacher's engine (nothing to
    release: the pipeline owns it) or a teacher of its own."""
    if isinstance(teacher, str) or (teacher is None and served is not None):
        if served is None:
            raise SynthkilnError(
                f"verifier {name}: teacher '{teacher}' names a recipe teacher, and there is no recipe here; "
                "give a teacher table instead"
            )
        label = teacher or served.labels[0]
        if label not in served.labels:
            raise SynthkilnError(
                f"verifier {name}: teacher '{label}' is not one of the recipe's teachers {served.labels}"
            )
        # Resolved at the first judgement: the served teachers load after the stages are built.
        return _generate(lambda: served.resolve(label), max_tokens), lambda: None
    own = _teacher(teacher or {"backend": "transformers"})
    return _generate(lambda: own, max_tokens), own.close


def _teacher(config: dict[str, Any]) -> Any:
    from pydantic import TypeAdapter, ValidationError

    from synthkiln.engine.config import TeacherConfig
    from synthkiln.engine.teachers import build_teacher

    try:
        return build_teacher(TypeAdapter(TeacherConfig).validate_python(config))
    except ValidationError as exc:
        raise SynthkilnError(f"judge teacher {config}: {exc.errors()[0]['msg']}") from None


def _generate(teacher: Callable[[], Any], max_tokens: int) -> Callable[[list[str]], list[str]]:
    """The judge's `generate`: each prompt as one user turn to `teacher()`, one greedy reply each."""
    from synthkiln.engine.config import SamplingConfig
    from synthkiln.engine.teachers import GenerationRequest

    sampling = SamplingConfig(temperature=0, max_tokens=max_tokens)

    def generate(prompts: list[str]) -> list[str]:
        requests = [GenerationRequest([{"role": "user", "content": prompt}]) for prompt in prompts]
        return [replies[0].text for replies in teacher().generate(requests, sampling)]

    return generate


def build_pool(config: VerifyConfig, executor: str = "local") -> VerifierPool:
    """The sandboxed pool of this machine, or (`executor="ray"`) one on every node of the cluster."""
    limits = Limits(wall_seconds=config.wall_seconds, memory_bytes=config.memory_mb << 20)
    try:
        if executor == "ray":
            return RayVerifierPool(config, limits)
        return VerifierPool(config.workers, config.sandbox, limits)
    except SandboxUnavailable as exc:
        raise SynthkilnError(str(exc)) from None


class RayVerifierPool(VerifierPool):
    """Sandboxed checks spread over a Ray cluster's CPUs: a batch's rows go out in as many contiguous
    groups as the cluster has CPUs, each checked as a task of the Ray executor (one CPU slot, no GPU
    shown, retried when its worker dies) by a one-worker pool in that worker process (the sandbox of
    its node); verdicts come back in row order. Model verifiers (`batched`) judge here, beside the
    teacher they share."""

    def __init__(self, config: VerifyConfig, limits: Limits) -> None:
        super().__init__(1, config.sandbox, limits)  # checks this node can sandbox, as the nodes must
        self.config = config
        self._cluster: RayExecutor | None = None

    def describe(self) -> dict[str, Any]:
        return {**self.sandbox.describe(), "executor": "ray"}

    def check_batch(self, verifier: Verifier, rows: Sequence[dict[str, Any]]) -> list[Verdict]:
        if verifier.batched or not rows:
            return super().check_batch(verifier, rows)
        if self._cluster is None:
            self._cluster = RayExecutor()  # the cluster this process is connected to
        parts = max(1, min(len(rows), self._cluster.workers))
        size = -(-len(rows) // parts)
        groups = [list(rows[i : i + size]) for i in range(0, len(rows), size)]
        checked = self._cluster.map(check_on_node, (self.config, verifier), groups)
        return [verdict for _, group in checked for verdict in group]


_NODE_POOLS: dict[str, VerifierPool] = {}  # one per Ray worker process and configuration


def check_on_node(shared: tuple[VerifyConfig, Verifier], rows: list[dict[str, Any]]) -> list[Verdict]:
    """A Ray task: `rows` checked by this worker process's own one-worker sandboxed pool."""
    config, verifier = shared
    key = config.model_dump_json()
    if key not in _NODE_POOLS:
        limits = Limits(wall_seconds=config.wall_seconds, memory_bytes=config.memory_mb << 20)
        try:
            _NODE_POOLS[key] = VerifierPool(1, config.sandbox, limits)
        except SandboxUnavailable as exc:  # this node lacks what the driver's node has
            raise SynthkilnError(f"a Ray worker node cannot sandbox: {exc}") from None
    return _NODE_POOLS[key].check_batch(verifier, rows)


def verify_rows(
    pool: VerifierPool, verifiers: list[Verifier], rows: list[dict[str, Any]]
) -> list[list[Verdict]]:
    """Each row's verdicts, cheapest verifier first, stopping at a row's first failure."""
    rows = [_with_seed_fields_dict(row) for row in rows]
    verdicts: list[list[Verdict]] = [[] for _ in rows]
    alive = list(range(len(rows)))
    for verifier in sorted(verifiers, key=lambda v: v.cost):
        results = pool.check_batch(verifier, [rows[i] for i in alive])
        for index, verdict in zip(alive, results, strict=True):
            verdicts[index].append(verdict)
        alive = [i for i, v in zip(alive, results, strict=True) if v.passed]
    return verdicts


def _with_seed_fields_dict(row: dict[str, Any]) -> dict[str, Any]:
    """The row with `seed_fields` as a dict: stored as {key, value} entries (an Arrow type `datasets`
    maps), read by verifiers through dotted names (`seed_fields.test`)."""
    entries = row.get("seed_fields")
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and e.keys() == {"key", "value"} for e in entries
    ):
        return row  # absent, or a corpus's own column of another shape: verifiers read it as it is
    return {**row, "seed_fields": {entry["key"]: entry["value"] for entry in entries}}


def record_verdict(verdict: Verdict) -> dict[str, Any]:
    where = "" if verdict.sandbox in (None, "bubblewrap") else f" [{verdict.sandbox} sandbox]"
    return {
        "verifier": verdict.verifier,
        "passed": verdict.passed,
        "detail": f"{verdict.status}{where}: {verdict.detail}",
    }


class Verify(Stage):
    """Keep rows every verifier passes; `verified` and `verdicts` say what was checked."""

    name = "verify"

    def __init__(self, verifiers: list[Verifier], pool: VerifierPool) -> None:
        super().__init__()
        if not verifiers:
            raise SynthkilnError("the verify stage needs at least one verifier")
        self.checks, self.pool = verifiers, pool
        self.verifiers = tuple(v.name for v in verifiers)
        self.sandbox = pool.describe()

    @classmethod
    def from_config(
        cls, config: VerifyConfig, served: ServedTeachers | None = None, executor: str = "local"
    ) -> Verify:
        verifiers = [build_verifier(v.name, v.model_dump(), served) for v in config.verifiers]
        return cls(verifiers, build_pool(config, executor))

    def process(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        rows = batch.to_pylist()
        verdicts = verify_rows(self.pool, self.checks, rows)
        failures = [next((v for v in row if not v.passed), None) for row in verdicts]
        verified = [
            failure is None and (row.get("verified") is not False)
            for row, failure in zip(rows, failures, strict=True)
        ]
        recorded = [
            [*(row.get("verdicts") or []), *map(record_verdict, vs)]
            for row, vs in zip(rows, verdicts, strict=True)
        ]
        batch = set_column(batch, "verified", pa.array(verified, pa.bool_()))
        batch = set_column(batch, "verdicts", pa.array(recorded, pa.list_(VERDICT)))
        reasons = pa.array([None if f is None else f"{f.verifier}:{f.status}" for f in failures], pa.string())
        details = pa.array([None if f is None else f.detail for f in failures], pa.string())
        return self.split(batch, reasons, details)

    def close(self) -> None:
        self.pool.close()
        for verifier in self.checks:
            verifier.close()
