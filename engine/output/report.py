"""`report.html`: one self-contained page on a dataset directory (a `run`'s or a `mix`'s).

Plots are drawn by matplotlib as SVG and inlined; the page has no script, stylesheet, font or image
from anywhere else, so it opens offline and sends no request. What it shows: the funnel with rejection
reasons, rows and tokens per commit, cost, diversity per shard and the distributions, dedup's
similarity histogram, decontamination hits per benchmark, verifier pass rates, the teachers side by
side, the bias audit, and a mix's composition. A section without data says so instead of an empty plot.
"""

from __future__ import annotations

import io
import re
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
import pyarrow.parquet as pq

from synthkiln.engine.errors import SynthkilnError
from synthkiln.engine.output.directory import REPORT, read_manifest, write_text_atomic

_SVG_START = re.compile(r"^.*?(?=<svg)", re.S)

_PAGE = jinja2.Environment(autoescape=True).from_string(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}: synthkiln report</title>
<style>
body { font-family: sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }
section { margin: 2em 0; } figure.plot { margin: 0; } figure.plot svg { max-width: 100%; height: auto; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; border-bottom: 1px solid #ddd; text-align: left; }
.empty { color: #777; font-style: italic; }
</style></head>
<body>
<h1>{{ title }}</h1>
<p>{{ summary }}</p>
{% for section in sections %}
<section id="{{ section.id }}"><h2>{{ section.heading }}</h2>
{% for line in section.lines %}<p>{{ line }}</p>{% endfor %}
{% if section.svg %}<figure class="plot">{{ section.svg | safe }}</figure>
{% else %}<p class="empty">{{ section.empty }}</p>{% endif %}
</section>
{% endfor %}
</body></html>
"""
)


def write_report(directory: Path) -> Path:
    """Render `directory`'s report.html (replaced atomically) and return its path."""
    html = render_report(directory)
    path = directory / REPORT
    write_text_atomic(path, html)
    return path


def write_report_or_warn(directory: Path) -> None:
    """At the end of a command whose rows are committed: a report that cannot be rendered is a warning
    (`synthkiln report` writes it later), never an error over the command's own outcome."""
    try:
        write_report(directory)
    except Exception as exc:
        print(
            f"warning: {directory / REPORT} not written ({type(exc).__name__}: {exc}); "
            f"`synthkiln report {directory}` writes it",
            file=sys.stderr,
        )


def render_report(directory: Path) -> str:
    manifest = read_manifest(directory)
    if not manifest.get("format", "").startswith(("synthkiln-dataset", "synthkiln-mix")):
        raise SynthkilnError(
            f"{directory}: a {manifest.get('format')} directory; reports are drawn for `run` and `mix` outputs"
        )
    if manifest.get("format", "").startswith("synthkiln-mix"):
        sections = [_mix_section(manifest)]
        title = "Mix of synthetic and human data"
        summary = f"{manifest['rows']} rows, synthetic share {manifest['synthetic_share']} (asked {manifest['ratio']})."
    else:
        rows = _Rows(directory, manifest)
        sections = [
            _funnel(manifest),
            _over_time(rows),
            _cost(manifest),
            _diversity_over_time(manifest),
            _distributions(manifest),
            _similarity(rows),
            _contamination(manifest),
            _verifiers(rows),
            _teachers(manifest),
            _bias(manifest),
        ]
        title = manifest.get("name", directory.name)
        funnel = manifest["funnel"]
        summary = (
            f"{funnel['accepted']} accepted rows from {funnel['samples']} samples of {funnel['prompts']} prompts; "
            f"recipe hash {manifest.get('recipe_hash')}; {'complete' if manifest.get('complete') else 'not complete'}."
        )
    return _PAGE.render(title=title, summary=summary, sections=sections)


class _Rows:
    """The columns the plots need from every committed shard, with the commit each came from."""

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.by_commit: dict[int, dict[str, int]] = {}
        self.similarities: list[float] = []
        self.verdicts: Counter[tuple[str, bool]] = Counter()
        for folder in ("data", "rejected"):
            for shard in manifest["shards"][folder]:
                path = directory / shard["path"]
                names = set(pq.read_schema(path).names)
                wanted = [c for c in ("completion_tokens", "verdicts", "similarity", "stage") if c in names]
                table = pq.read_table(path, columns=wanted)
                commit = int(re.findall(r"\d+", Path(shard["path"]).name)[-1])
                counts = self.by_commit.setdefault(commit, {"accepted": 0, "tokens": 0})
                if folder == "data":
                    counts["accepted"] += table.num_rows
                if "completion_tokens" in names:
                    counts["tokens"] += sum(t or 0 for t in table.column("completion_tokens").to_pylist())
                if folder == "rejected" and "similarity" in names:
                    stages = table.column("stage").to_pylist()
                    self.similarities += [
                        s for s, stage in zip(table.column("similarity").to_pylist(), stages, strict=True)
                        if stage == "dedup" and s is not None
                    ]  # fmt: skip
                if "verdicts" in names:
                    for verdicts in table.column("verdicts").to_pylist():
                        for verdict in verdicts or []:
                            self.verdicts[(verdict["verifier"], bool(verdict["passed"]))] += 1


def _section(
    key: str, heading: str, svg: str | None, empty: str, lines: list[str] | None = None
) -> dict[str, Any]:
    return {"id": key, "heading": heading, "svg": svg, "empty": empty, "lines": lines or []}


def _plot(draw: Callable[[Any], None], height: float = 3.2) -> str:
    """One matplotlib figure as inline SVG (text as text, so the page stays small and searchable)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"
    plt.rcParams["text.parse_math"] = False  # labels are data ("$5 off"), not TeX
    plt.rcParams["svg.hashsalt"] = "synthkiln"  # the same ids on every rendering
    figure, axes = plt.subplots(figsize=(9, height))
    try:
        draw(axes)
        figure.tight_layout()
        buffer = io.StringIO()
        # No metadata: it holds the time of rendering and links to RDF vocabularies.
        metadata = {"Date": None, "Creator": None, "Format": None, "Type": None}
        figure.savefig(buffer, format="svg", metadata=metadata)
    finally:
        plt.close(figure)
    return _SVG_START.sub("", buffer.getvalue(), count=1)


def _bars(labels: list[str], values: list[float], xlabel: str) -> str:
    def draw(axes: Any) -> None:
        axes.barh(range(len(labels)), values, color="#4c72b0")
        axes.set_yticks(range(len(labels)), labels)
        axes.invert_yaxis()
        axes.set_xlabel(xlabel)

    return _plot(draw, height=max(1.6, 0.35 * len(labels) + 1))


def _funnel(manifest: dict[str, Any]) -> dict[str, Any]:
    funnel = manifest["funnel"]
    labels = ["prompts", "samples", "accepted"]
    values = [funnel["prompts"], funnel["samples"], funnel["accepted"]]
    for stage, reasons in funnel["rejected"].items():
        for reason, count in reasons.items():
            labels.append(f"rejected: {stage}: {reason}")
            values.append(count)
    return _section("funnel", "Funnel", _bars(labels, values, "rows"), "")


def _over_time(rows: _Rows) -> dict[str, Any]:
    from matplotlib.ticker import MaxNLocator

    commits = sorted(rows.by_commit)
    if not commits:
        return _section("over-time", "Rows and tokens over time", None, "Nothing committed yet.")
    accepted, tokens, total_rows, total_tokens = [], [], 0, 0
    for commit in commits:
        total_rows += rows.by_commit[commit]["accepted"]
        total_tokens += rows.by_commit[commit]["tokens"]
        accepted.append(total_rows)
        tokens.append(total_tokens)

    def draw(axes: Any) -> None:
        axes.plot(commits, accepted, marker="o", color="#4c72b0", label="accepted rows")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("commit")
        axes.set_ylabel("accepted rows (cumulative)")
        right = axes.twinx()
        right.plot(commits, tokens, marker="s", color="#dd8452", label="tokens generated")
        right.set_ylabel("tokens generated (cumulative)")
        axes.figure.legend(loc="upper left", bbox_to_anchor=(0.08, 0.95))

    return _section("over-time", "Rows and tokens over time", _plot(draw), "")


def _cost(manifest: dict[str, Any]) -> dict[str, Any]:
    from synthkiln.engine.output.card import describe_cost

    stages = manifest["timing"].get("stage_seconds", {})
    spent = {"generation (device)": manifest["timing"]["device_seconds"], **stages}
    line = describe_cost(manifest)
    svg = _bars(list(spent), list(spent.values()), "seconds") if any(spent.values()) else None
    return _section("cost", "Cost", svg, "No time recorded yet.", [line] if line else [])


def _diversity_over_time(manifest: dict[str, Any]) -> dict[str, Any]:
    from matplotlib.ticker import MaxNLocator

    shards = (manifest.get("diversity") or {}).get("shards", [])
    if not shards:
        return _section(
            "diversity", "Diversity over time", None, "Diversity was not measured (diversity.enabled)."
        )
    keys = [k for k in ("distinct_1", "distinct_2", "distinct_3", "opening_concentration") if k in shards[0]]

    def draw(axes: Any) -> None:
        for key in keys:
            axes.plot(range(1, len(shards) + 1), [s.get(key) for s in shards], marker="o", label=key)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("shard")
        axes.legend()

    return _section("diversity", "Diversity over time", _plot(draw), "")


def _distributions(manifest: dict[str, Any]) -> dict[str, Any]:
    distributions = ((manifest.get("diversity") or {}).get("cumulative") or {}).get("distributions", {})
    labels, values = [], []
    for name, counts in distributions.items():
        for value, count in (counts or {}).items():
            labels.append(f"{name}: {value}")
            values.append(count)
    svg = _bars(labels, values, "accepted rows") if values else None
    return _section("distributions", "Distributions", svg, "No distribution measured.")


def _similarity(rows: _Rows) -> dict[str, Any]:
    if not rows.similarities:
        return _section(
            "similarity", "Near-duplicate similarity", None, "Dedup rejected no row (or was off)."
        )

    def draw(axes: Any) -> None:
        axes.hist(rows.similarities, bins=20, color="#4c72b0")
        axes.set_xlabel("estimated Jaccard similarity to the accepted row it duplicates")
        axes.set_ylabel("rejected rows")

    return _section("similarity", "Near-duplicate similarity", _plot(draw), "")


def _contamination(manifest: dict[str, Any]) -> dict[str, Any]:
    hits: Counter[str] = Counter()
    for reasons in manifest["funnel"]["rejected"].values():
        for reason, count in reasons.items():
            if reason.startswith("contaminated:"):
                hits[reason.split(":", 1)[1]] += count
    checked = [b["name"] for b in manifest.get("decontaminated_against", [])]
    for name in checked:
        hits.setdefault(name, 0)
    if not hits:
        return _section("contamination", "Decontamination", None, "No benchmark was checked.")
    return _section(
        "contamination",
        "Decontamination hits per benchmark",
        _bars(list(hits), list(hits.values()), "rows removed"),
        "",
    )


def _verifiers(rows: _Rows) -> dict[str, Any]:
    names = sorted({name for name, _ in rows.verdicts})
    if not names:
        return _section("verifiers", "Verifier pass rates", None, "No verifier ran.")
    rates = [rows.verdicts[(n, True)] / (rows.verdicts[(n, True)] + rows.verdicts[(n, False)]) for n in names]
    return _section(
        "verifiers", "Verifier pass rates", _bars(names, rates, "share of judged rows passed"), ""
    )


def _teachers(manifest: dict[str, Any]) -> dict[str, Any]:
    teachers = (manifest.get("guards") or {}).get("teachers", {})
    if not teachers:
        return _section("teachers", "Teachers", None, "No teacher has written a committed row yet.")
    names = list(teachers)

    def draw(axes: Any) -> None:
        positions = range(len(names))
        axes.barh(
            [p - 0.2 for p in positions],
            [teachers[n]["share_of_accepted"] or 0 for n in names],
            0.4,
            label="share of accepted rows",
        )
        axes.barh(
            [p + 0.2 for p in positions],
            [teachers[n]["acceptance_rate"] or 0 for n in names],
            0.4,
            label="acceptance rate",
        )
        axes.set_yticks(list(positions), names)
        axes.legend()

    return _section("teachers", "Teachers", _plot(draw, height=max(1.6, 0.6 * len(names) + 1)), "")


def _bias(manifest: dict[str, Any]) -> dict[str, Any]:
    from synthkiln.engine.bias import LIMITS

    bias = manifest.get("bias")
    if not bias:
        return _section("bias", "Bias audit", None, "No bias audit (bias.enabled).")
    rates = bias["per_10k_words"]
    groups = [g for g in rates["seeds"] if any((rates[part][g] or 0) > 0 for part in rates)]
    flags = [
        f"Flag: {f['group']} appears {f['ratio']}x as often in accepted rows as in the seeds."
        for f in bias["flags"]
    ]
    if not groups:
        return _section("bias", "Bias audit", None, "No lexicon term found.", [LIMITS, *flags])

    def draw(axes: Any) -> None:
        positions = range(len(groups))
        for offset, part in ((-0.27, "seeds"), (0.0, "accepted"), (0.27, "rejected")):
            axes.barh(
                [p + offset for p in positions], [rates[part][g] or 0 for g in groups], 0.27, label=part
            )
        axes.set_yticks(list(positions), groups)
        axes.invert_yaxis()
        axes.set_xlabel("occurrences per 10,000 words")
        axes.legend()

    return _section(
        "bias", "Bias audit", _plot(draw, height=max(2.0, 0.5 * len(groups) + 1)), "", [LIMITS, *flags]
    )


def _mix_section(manifest: dict[str, Any]) -> dict[str, Any]:
    composition = manifest["composition"]
    categories = list(composition)

    def draw(axes: Any) -> None:
        positions = range(len(categories))
        synthetic = [composition[c]["synthetic"] for c in categories]
        human = [composition[c]["human"] for c in categories]
        axes.barh(list(positions), synthetic, label="synthetic", color="#dd8452")
        axes.barh(list(positions), human, left=synthetic, label="human", color="#4c72b0")
        axes.set_yticks(list(positions), categories)
        axes.set_xlabel("rows")
        axes.legend()

    left = manifest["shortfall"]
    line = f"Left out by the ratio: {left['synthetic_left_out']} synthetic and {left['human_left_out']} human rows."
    return _section(
        "mix", "Mix composition", _plot(draw, height=max(1.6, 0.5 * len(categories) + 1)), "", [line]
    )
