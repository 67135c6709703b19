"""Steering: the policy for prompts rendered later, decided from the rows committed so far.

Data flows one way. The calling thread *observes* each window's curated rows once they are handed to
the writer (`observe`: counts per persona / format / difficulty, duplicate and verification
rejections, novel n-grams); the feeder asks for a window's *policy* before rendering it (`policy`);
nothing here calls a stage. Window w's policy is a pure function of the statistics of the windows
before w - `lag`, decided every `span` windows:

- *re-weighting*: persona / format / difficulty are chosen by smooth weighted round-robin
  (`Rotation`), with weights that aim the accepted rows at the target shares, from the acceptance
  rate measured per value (a verifier that kills one format more often gets that format more often);
- *temperature*: up one step within bounds when near-duplicate or low-novelty rejections pass
  `raise_above` of the last span's samples; down one step when the verification pass rate falls
  `pass_rate_drop` below its first measure;
- *early stop* (`diversity.stop_below`): the last `stop_rows` accepted rows brought fewer novel
  n-grams per 1,000 rows than asked: no seed row is rendered after that (a seed row's prompts all
  follow the policy of the window its first prompt falls in).

The statistics are counts persisted per window in the manifest (`steering.windows`) at each commit, so
a resumed run restores them and replays the same decisions: the same prompts, the same temperatures.
A window cut at `--limit` adds the rest of its counts when a later run commits it. Every decision is
logged (`steering.decisions`: window, accepted rows before it, cause, measured value, change).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from synthkiln.engine.config import (
    STEERED_DIMENSIONS,
    DiversityConfig,
    SamplingConfig,
    TaskConfig,
    steered_values,
)

_WAIT_S = 0.1
# Rejections that mean "more of the same": what a higher temperature is for.
DUPLICATE_REJECTIONS = frozenset({("dedup", "near-duplicate"), ("novelty", "low-novelty")})
_SEEDS_STAGE = "seeds"  # rejected rows of no sample (quarantined before generation): not measured
# Each value keeps this share of its target weight, so that a value whose rows all fail is still
# tried (its acceptance rate is measured, not assumed).
_FLOOR = 0.02
_MIN_CHANGE = 0.02  # a re-weighting moving no weight by this much keeps the weights as they are


@dataclass(frozen=True)
class Policy:
    """How prompts of one window are rendered and sampled."""

    weights: dict[str, dict[str, float]] | None  # per dimension and value; None: rotate by ordinal
    temperature: float | None  # None: the recipe's
    stop: bool = False  # render nothing more


UNSTEERED = Policy(None, None)


@dataclass
class WindowStats:
    """What a window's committed rows say (counts only, so a window's parts add up)."""

    samples: int = 0
    accepted: int = 0
    duplicates: int = 0
    judged: int = 0  # samples the verify stage decided on
    passed: int = 0
    novel_ngrams: int = 0
    by: dict[str, dict[str, list[int]]] = field(
        default_factory=dict
    )  # dimension -> value -> [generated, accepted]

    def add(self, other: WindowStats) -> None:
        self.samples += other.samples
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.judged += other.judged
        self.passed += other.passed
        self.novel_ngrams += other.novel_ngrams
        for dimension, values in other.by.items():
            mine = self.by.setdefault(dimension, {})
            for value, (generated, accepted) in values.items():
                counts = mine.setdefault(value, [0, 0])
                counts[0] += generated
                counts[1] += accepted

    def to_json(self) -> dict[str, Any]:
        """A copy, as JSON (the manifest never shares a list with the live counts)."""
        return {
            "samples": self.samples,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "judged": self.judged,
            "passed": self.passed,
            "novel_ngrams": self.novel_ngrams,
            "by": {d: {v: list(c) for v, c in values.items()} for d, values in self.by.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WindowStats:
        by = {d: {v: list(c) for v, c in values.items()} for d, values in data["by"].items()}
        return cls(
            data["samples"],
            data["accepted"],
            data["duplicates"],
            data["judged"],
            data["passed"],
            data["novel_ngrams"],
            by,
        )


class Rotation:
    """Smooth weighted round-robin per dimension: each value is chosen in proportion to its weight,
    spread evenly (with equal weights it cycles through the values in order)."""

    def __init__(self) -> None:
        self.weights: dict[str, dict[str, float]] = {}
        self._credit: dict[str, dict[str, float]] = {}

    def choose(self, dimension: str, values: list[str]) -> str:
        weights = self.weights.get(dimension) or dict.fromkeys(values, 1.0)
        credit = self._credit.setdefault(dimension, dict.fromkeys(values, 0.0))
        for value in values:
            credit[value] += weights[value]
        chosen = max(values, key=credit.__getitem__)  # the first of equals
        credit[chosen] -= sum(weights[value] for value in values)
        return chosen


class Steering:
    """The controller: `observe` on the calling thread, `policy` on the feeder's, `record` at each commit."""

    def __init__(
        self, config: DiversityConfig, sampling: SamplingConfig, task: TaskConfig, stages: list[str]
    ) -> None:
        steering = config.steering
        self.enabled = steering.enabled
        self.lag, self.span = steering.lag, steering.span
        self._config = steering
        self._stop_below, self._stop_rows, self._ngram = (
            config.stop_below,
            config.stop_rows,
            config.novelty_ngram,
        )
        self._stages = stages
        self._values = {
            d: steered_values(task, d) for d in STEERED_DIMENSIONS if len(steered_values(task, d)) > 1
        }
        self._targets = {
            d: _normalised(steering.targets.get(d), values) for d, values in self._values.items()
        }
        low, high = steering.temperature or (sampling.temperature, sampling.temperature + 0.4)
        self._bounds = (low, high)
        first = (
            Policy({d: dict(t) for d, t in self._targets.items()}, min(max(sampling.temperature, low), high))
            if self.enabled
            else UNSTEERED
        )
        self._policies: list[Policy] = [first]
        self._stats: dict[int, WindowStats] = {}  # what decisions read: restored + observed
        # Published in the manifest only once a commit holds the window's rows, so that a window whose
        # rows a crash lost is measured again by the resumed run, never twice.
        self._published: dict[int, WindowStats] = {}
        self._unpublished: dict[int, WindowStats] = {}
        self._window_of: dict[str, int] = {}  # prompt id -> window, for observed rows not yet committed
        self._cumulative = WindowStats()
        self._measured_to = 0  # windows in `_cumulative`
        self._baseline_pass_rate: float | None = None
        self.decisions: list[dict[str, Any]] = []
        self._observed = 0  # windows 0 .. _observed - 1 observed by this session
        self._changed = threading.Condition()
        self._seen = None
        if self._stop_below is not None:
            # numba: imported once a run starts, not with the pipeline module (see Pipeline.run)
            from synthkiln.kernels.diversity import KeyTable

            self._seen = KeyTable()

    # -- the calling thread --------------------------------------------------------------------

    def restore(self, manifest: dict[str, Any], committed_responses: Callable[[], pa.Array]) -> None:
        """Take back the counts a previous run committed (and the n-grams of its accepted rows)."""
        saved = manifest.get("steering") or {}
        self._stats = {int(k): WindowStats.from_json(v) for k, v in saved.get("windows", {}).items()}
        self._published = {k: WindowStats.from_json(s.to_json()) for k, s in self._stats.items()}
        if self._seen is not None and self._stats:
            from synthkiln.kernels.diversity import add_ngrams

            add_ngrams(self._seen, committed_responses(), self._ngram)

    def observe(self, window: int, kept: pa.RecordBatch | None, rejected: pa.RecordBatch | None) -> None:
        """Window `window`'s rows as handed to the writer (None: nothing new, it was done before)."""
        stats = self._measure(kept, rejected) if kept is not None and rejected is not None else None
        with self._changed:
            if window != self._observed:
                raise RuntimeError(f"steering: window {window} observed after {self._observed - 1}")
            if stats is not None:
                self._stats.setdefault(window, WindowStats()).add(stats)
                self._unpublished[window] = stats
                for batch in (kept, rejected):
                    self._window_of.update(dict.fromkeys(batch.column("prompt_id").to_pylist(), window))
            self._observed += 1
            self._changed.notify_all()

    @property
    def observed(self) -> int:
        """Windows observed by this session (0 .. observed - 1)."""
        with self._changed:
            return self._observed

    def record(self, kept: pa.Table | None, rejected: pa.Table | None, manifest: dict[str, Any]) -> None:
        """The writer's commit hook: publish the counts of the windows whose rows this commit holds, and
        the decisions they determine (those of windows up to the last committed one)."""
        committed = set()
        for table in (kept, rejected):
            if table is not None:
                committed |= set(table.column("prompt_id").to_pylist())
        with self._changed:
            windows = {self._window_of.pop(p) for p in committed if p in self._window_of}
            for window in windows:
                self._published.setdefault(window, WindowStats()).add(self._unpublished.pop(window))
            last = max(self._published, default=-1)
            decisions = [d for d in self.decisions if d["window"] <= last]
            latest = self._policies[min(max(last, 0), len(self._policies) - 1)]
            manifest["steering"] = {
                "enabled": self.enabled,
                "lag": self.lag,
                "span": self.span,
                "policy": {
                    "weights": latest.weights,
                    "temperature": latest.temperature,
                    "stopped": latest.stop,
                },
                "decisions": decisions,
                "windows": {str(k): s.to_json() for k, s in sorted(self._published.items()) if s.samples},
            }

    @property
    def stopped(self) -> dict[str, Any] | None:
        """The decision that ended the run, when one did."""
        with self._changed:
            if not self._policies[-1].stop:
                return None
            return next(d for d in reversed(self.decisions) if d["cause"] == "stop")

    # -- the feeder thread ---------------------------------------------------------------------

    def policy(self, window: int, stop: threading.Event | None) -> Policy | None:
        """Window `window`'s policy, once the windows it follows are observed; waits for them unless
        `stop` is None (None back when not known yet) and returns None when `stop` is set."""
        with self._changed:
            while len(self._policies) <= window:
                upcoming = len(self._policies)
                if self._observed < upcoming - self.lag:
                    if stop is None or stop.is_set():
                        return None
                    self._changed.wait(_WAIT_S)
                    continue
                self._policies.append(self._decide(upcoming))
            return self._policies[window]

    # -- decisions -----------------------------------------------------------------------------

    def _decide(self, window: int) -> Policy:
        previous = self._policies[-1]
        end = window - self.lag  # windows before `end` are measured
        if previous.stop or end <= 0 or end % self.span:
            return previous
        while self._measured_to < end:
            self._cumulative.add(self._stats.get(self._measured_to, WindowStats()))
            self._measured_to += 1
        recent = WindowStats()
        for index in range(end - self.span, end):
            recent.add(self._stats.get(index, WindowStats()))
        when = {"window": window, "accepted_before": self._cumulative.accepted}
        weights, temperature = previous.weights, previous.temperature
        if self.enabled:
            weights = self._reweight(previous.weights or {}, recent, when)
            temperature = self._temperature(previous.temperature, recent, when)
        return Policy(weights, temperature, self._exhausted(end, when))

    def _reweight(
        self, weights: dict[str, dict[str, float]], recent: WindowStats, when: dict[str, int]
    ) -> dict[str, dict[str, float]]:
        """Weights that bring the accepted shares to the targets within the next span: what each value
        lacks of its target share, over its acceptance rate (smoothed: one success in two tries)."""
        total = self._cumulative
        if total.samples < self._config.min_samples:
            return weights
        horizon = max(recent.accepted, 1)
        changed: dict[str, Any] = {}
        measured: dict[str, dict[str, float]] = {}
        new = dict(weights)
        for dimension, values in self._values.items():
            target = self._targets[dimension]
            counts = total.by.get(dimension, {})
            raw = {}
            for value in values:
                generated, accepted = counts.get(value, [0, 0])
                rate = (accepted + 1) / (generated + 2)
                lacking = max(
                    target[value] * (total.accepted + horizon) - accepted, _FLOOR * target[value] * horizon
                )
                raw[value] = lacking / rate
            proposed = _normalised(raw, values)
            old = weights.get(dimension, target)
            measured[dimension] = {
                v: round(counts.get(v, [0, 0])[1] / max(total.accepted, 1), 4) for v in values
            }
            if max(abs(proposed[v] - old[v]) for v in values) >= _MIN_CHANGE:
                new[dimension] = proposed
                changed[dimension] = {"from": old, "to": proposed}
        if changed:
            self.decisions.append(
                {**when, "cause": "reweight", "measured": {"accepted_shares": measured}, "change": changed}
            )
        return new

    def _temperature(
        self, temperature: float | None, recent: WindowStats, when: dict[str, int]
    ) -> float | None:
        if temperature is None or not recent.samples:
            return temperature
        low, high = self._bounds
        step = self._config.temperature_step
        duplicates = recent.duplicates / recent.samples
        pass_rate = recent.passed / recent.judged if recent.judged else None
        if pass_rate is not None and self._baseline_pass_rate is None:
            self._baseline_pass_rate = pass_rate
        new, cause, measured = temperature, None, {}
        if duplicates > self._config.raise_above and temperature < high:
            new, cause, measured = (
                min(high, round(temperature + step, 4)),
                "duplicates",
                {"duplicate_share": round(duplicates, 4)},
            )
        elif (
            pass_rate is not None
            and self._baseline_pass_rate is not None
            and pass_rate < self._baseline_pass_rate - self._config.pass_rate_drop
            and temperature > low
        ):
            new, cause = max(low, round(temperature - step, 4)), "pass-rate"
            measured = {
                "pass_rate": round(pass_rate, 4),
                "first_pass_rate": round(self._baseline_pass_rate, 4),
            }
        if cause is not None:
            self.decisions.append(
                {
                    **when,
                    "cause": cause,
                    "measured": measured,
                    "change": {"temperature": {"from": temperature, "to": new}},
                }
            )
        return new

    def _exhausted(self, end: int, when: dict[str, int]) -> bool:
        """Whether the last `stop_rows` accepted rows brought fewer novel n-grams than `stop_below`
        per 1,000 rows."""
        if self._stop_below is None:
            return False
        accepted = novel = 0
        index = end - 1
        while index >= 0 and accepted < self._stop_rows:
            stats = self._stats.get(index)
            if stats is not None:
                accepted += stats.accepted
                novel += stats.novel_ngrams
            index -= 1
        if accepted < self._stop_rows:
            return False
        per_1k = 1000 * novel / accepted
        if per_1k >= self._stop_below:
            return False
        self.decisions.append(
            {
                **when,
                "cause": "stop",
                "measured": {"novel_ngrams_per_1k_rows": round(per_1k, 2), "over_accepted_rows": accepted},
                "change": {"stop_below": self._stop_below},
            }
        )
        return True

    def _measure(self, kept: pa.RecordBatch, rejected: pa.RecordBatch) -> WindowStats:
        stats = WindowStats()
        generated = [
            (stage, reason, row)
            for stage, reason, row in zip(
                rejected.column("stage").to_pylist(),
                rejected.column("reason").to_pylist(),
                _dimension_rows(rejected, self._values),
                strict=True,
            )
            if stage != _SEEDS_STAGE
        ]
        accepted_rows = _dimension_rows(kept, self._values)
        stats.accepted = len(kept)
        stats.samples = len(kept) + len(generated)
        stats.duplicates = sum((stage, reason) in DUPLICATE_REJECTIONS for stage, reason, _ in generated)
        if "verify" in self._stages:
            after = set(self._stages[self._stages.index("verify") + 1 :])
            stats.passed = len(kept) + sum(stage in after for stage, _, _ in generated)
            stats.judged = stats.passed + sum(stage == "verify" for stage, _, _ in generated)
        for rows, accepted in ((accepted_rows, 1), ([row for _, _, row in generated], 0)):
            for row in rows:
                for dimension, value in row.items():
                    counts = stats.by.setdefault(dimension, {}).setdefault(value, [0, 0])
                    counts[0] += 1
                    counts[1] += accepted
        if self._seen is not None and len(kept):
            from synthkiln.kernels.diversity import add_ngrams

            before = len(self._seen)
            add_ngrams(self._seen, kept.column("response"), self._ngram)
            stats.novel_ngrams = len(self._seen) - before
        return stats


def _dimension_rows(batch: pa.RecordBatch, values: dict[str, list[str]]) -> list[dict[str, str]]:
    columns = {d: batch.column(d).to_pylist() for d in values}
    return [{d: columns[d][i] for d in values if columns[d][i] is not None} for i in range(len(batch))]


def _normalised(shares: dict[str, float] | None, values: list[str]) -> dict[str, float]:
    """Shares over `values` summing to 1, rounded so that they read well in the manifest (uniform
    without `shares`; a value they do not name gets 0)."""
    raw = {v: float((shares or dict.fromkeys(values, 1.0)).get(v, 0.0)) for v in values}
    total = sum(raw.values())
    return {v: round(raw[v] / total, 4) for v in values}


def describe(manifest: dict[str, Any]) -> list[str]:
    """What steering did, in sentences (the dataset card and the end of `synthkiln run`)."""
    steering = manifest.get("steering")
    if not steering:
        return []
    decisions = steering["decisions"]
    causes = Counter(d["cause"] for d in decisions)
    lines = []
    if steering["enabled"]:
        temperatures = [d["change"]["temperature"] for d in decisions if "temperature" in d["change"]]
        moved = f"; temperature {temperatures[0]['from']} -> {temperatures[-1]['to']}" if temperatures else ""
        counted = ", ".join(f"{count} {cause}" for cause, count in sorted(causes.items()))
        lines.append(f"steering: {len(decisions)} decisions ({counted or 'none'}){moved}")
        for dimension, weights in sorted((steering["policy"]["weights"] or {}).items()):
            shares = ", ".join(f"{value} {weight:.2f}" for value, weight in weights.items())
            lines.append(f"steering: {dimension} weights now {shares}")
    stop = (manifest.get("stopped") or {}).get("early_stop")
    if stop:
        measured = stop["measured"]
        lines.append(
            f"stopped early at window {stop['window']}: {measured['novel_ngrams_per_1k_rows']} novel n-grams "
            f"per 1,000 rows over the last {measured['over_accepted_rows']} accepted rows (below "
            f"{stop['change']['stop_below']})"
        )
    return lines
