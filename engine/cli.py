"""The `synthkiln` command line."""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path
from typing import Any

from synthkiln.engine.errors import SynthkilnError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except SynthkilnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: committed shards are kept; rerun the same command to resume", file=sys.stderr)
        return 130


def entry() -> None:
    """The `synthkiln` program: `main`, then an exit that leaves memory to the operating system."""
    status = main()
    # Python's last collection at exit visits every object the imports made (Numba, LLVM, pandas):
    # about 0.5 s of every command. Whatever we wrote is closed by now; frozen objects are not visited.
    gc.freeze()
    sys.exit(status)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synthkiln", description="Verified synthetic training data, self-hosted."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="generate a dataset from a recipe (resumes an interrupted run)")
    run.add_argument("recipe", help="recipe file (.toml, .yaml)")
    run.add_argument("--out", help="dataset directory (default: output.dir, or out/<name>)")
    run.add_argument(
        "--limit", type=int, help="stop when the dataset holds exactly N accepted rows (a later run resumes)"
    )
    _add_set(run)
    run.add_argument("--fresh", action="store_true", help="discard a previous run in the directory")
    run.add_argument(
        "--allow-changed-inputs",
        action="store_true",
        help="resume although the seeds, template or benchmark files changed (both hashes are recorded)",
    )
    _add_executor(run)
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(handler=_run)

    inspect = commands.add_parser("inspect", help="show a dataset directory: funnel, schema, a few rows")
    inspect.add_argument("dir")
    inspect.add_argument("--rows", type=int, default=3, help="rows to show (default 3)")
    inspect.set_defaults(handler=_inspect)

    dedup = commands.add_parser(
        "dedup", help="remove near-duplicates from JSONL/Parquet files or dataset dirs"
    )
    dedup.add_argument("inputs", nargs="+", help="files (.jsonl, .jsonl.gz, .parquet) or directories")
    dedup.add_argument("--out", required=True, help="output directory: data/, rejected/, manifest.json")
    dedup.add_argument("--text-field", default="text", help="column holding the text (default: text)")
    dedup.add_argument("--threshold", type=float, default=0.8, help="estimated Jaccard counted as duplicate")
    dedup.add_argument("--num-perm", type=int, default=128, help="MinHash permutations (default 128)")
    dedup.add_argument("--ngram", type=int, default=5, help="words per shingle (default 5)")
    dedup.add_argument(
        "--keep", default="first", help="which row of a cluster stays: first, longest, score:COLUMN"
    )
    dedup.add_argument("--backend", choices=["auto", "numba", "triton"], default="auto")
    dedup.add_argument(
        "--exact",
        action="store_true",
        help="confirm candidates by exact Jaccard on shingles (shingle sets kept on disk beside signatures)",
    )
    dedup.add_argument(
        "--partition-mb",
        type=int,
        default=256,
        help="band keys grouped at a time (default 256): bounds peak memory whatever the corpus size",
    )
    _add_executor(dedup)
    dedup.add_argument("--quiet", action="store_true", help="no progress bar")
    dedup.set_defaults(handler=_dedup)

    decontaminate = commands.add_parser(
        "decontaminate",
        help="remove rows containing benchmark items from JSONL/Parquet files or dataset dirs",
    )
    decontaminate.add_argument("inputs", nargs="+", help="files (.jsonl, .jsonl.gz, .parquet) or directories")
    decontaminate.add_argument(
        "--out", required=True, help="output directory: data/, rejected/, manifest.json"
    )
    decontaminate.add_argument("--text-field", default="text", help="column holding the text (default: text)")
    decontaminate.add_argument(
        "--benchmark",
        action=_BenchmarkAction,
        dest="benchmarks",
        required=True,
        metavar="NAME[=PATH]",
        help="benchmark to check against (repeatable): a local file, or a built-in name alone to load it "
        f"from Hugging Face ({', '.join(_builtin_benchmarks())})",
    )
    decontaminate.add_argument(
        "--benchmark-fields",
        action=_BenchmarkFieldsAction,
        dest="benchmarks",
        metavar="F1,F2",
        help="text fields to protect in the --benchmark before it (default: built-in, else every string field)",
    )
    decontaminate.add_argument("--ngram", type=int, default=13, help="words per n-gram (default 13)")
    decontaminate.add_argument(
        "--min-coverage", type=float, help="require this fraction of an item's n-grams (default: any n-gram)"
    )
    decontaminate.add_argument(
        "--max-item-frequency", type=int, default=10, help="ignore n-grams shared by more items (default 10)"
    )
    decontaminate.add_argument(
        "--no-fuzzy", action="store_true", help="exact n-grams only (no MinHash containment)"
    )
    decontaminate.add_argument(
        "--fuzzy-threshold", type=float, default=0.5, help="containment that counts as a match (default 0.5)"
    )
    decontaminate.add_argument("--unicode", action="store_true", help="NFKC + Unicode lowercase first")
    decontaminate.add_argument("--backend", choices=["auto", "numba", "triton"], default="auto")
    _add_executor(decontaminate)
    decontaminate.add_argument("--quiet", action="store_true", help="no progress bar")
    decontaminate.set_defaults(handler=_decontaminate)

    verify = commands.add_parser("verify", help="keep rows that sandboxed verifiers prove right")
    verify.add_argument("inputs", nargs="+", help="files (.jsonl, .jsonl.gz, .parquet) or directories")
    verify.add_argument("--out", required=True, help="output directory: data/, rejected/, manifest.json")
    verify.add_argument("--verifier", action="append", required=True, dest="verifiers",
                        help="python-tests, stdio-tests, math, json-schema, regex, length, judge, reward-model, knowledge-base (repeatable)")  # fmt: skip
    for option, default, text in (
        ("--code-field", "code", "python-tests: the code"),
        ("--tests-field", "tests", "python-tests: test code run after it"),
        ("--entry-point-field", "entry_point", "python-tests: function passed to check() (HumanEval)"),
        ("--program-field", "program", "stdio-tests: the program"),
        ("--cases-field", "cases", "stdio-tests: list of {input, output}"),
        ("--response-field", "response", "math: text holding the final answer"),
        ("--reference-field", "reference", "math: the reference answer"),
        ("--field", "response", "json-schema, regex, length: the text checked"),
    ):
        verify.add_argument(option, default=default, help=f"{text} (default: {default})")
    verify.add_argument("--schema-file", help="json-schema: the JSON Schema file")
    verify.add_argument(
        "--threshold", type=float, help="judge (score, default 7), reward-model (reward, default 0)"
    )
    verify.add_argument("--rubric", help="judge: what the judge is told to grade")
    verify.add_argument(
        "--reward-model", dest="model", help="reward-model: a sequence-classification model dir"
    )
    verify.add_argument("--facts", help="knowledge-base: facts (JSONL, Parquet, SQLite)")
    verify.add_argument(
        "--judge-model", default="embedded:smollm2", help="judge, knowledge-base: model (transformers)"
    )
    verify.add_argument("--pattern", help="regex: the pattern that must match")
    verify.add_argument("--min-words", type=int, default=1, help="length: fewest words (default 1)")
    verify.add_argument("--max-words", type=int, help="length: most words")
    verify.add_argument("--sandbox", choices=["bubblewrap", "rlimits-only"], default="bubblewrap")
    verify.add_argument("--workers", type=int, help="concurrent sandboxed jobs (default: one per core)")
    verify.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds per job (default 10)")
    _add_executor(verify)
    verify.add_argument("--quiet", action="store_true", help="no progress bar")
    verify.set_defaults(handler=_verify)

    diversity = commands.add_parser(
        "diversity", help="diversity metrics of any dataset: synthkiln directories, Parquet or JSONL files"
    )
    diversity.add_argument("inputs", nargs="+", help="files (.jsonl, .jsonl.gz, .parquet) or directories")
    diversity.add_argument("--text-field", default="response", help="text column measured (default response)")
    diversity.add_argument("--sample-size", type=int, default=2000, help="rows embedded (default 2000)")
    diversity.add_argument("--no-embeddings", action="store_true", help="lexical metrics only (no MiniLM)")
    diversity.add_argument("--json", action="store_true", help="print the metrics as JSON")
    _add_executor(diversity)
    diversity.set_defaults(handler=_diversity)

    report = commands.add_parser("report", help="write DIR/report.html: one self-contained page of plots")
    report.add_argument("directory", help="a dataset directory (from run or mix)")
    report.set_defaults(handler=_report)

    mixer = commands.add_parser(
        "mix",
        help="synthetic and human rows at an exact synthetic share, without repeats, shuffled by a seed",
    )
    mixer.add_argument(
        "--synthetic", nargs="+", required=True, help="synthkiln dataset dirs, Parquet or JSONL"
    )
    mixer.add_argument(
        "--human", nargs="+", required=True, help="human data: Parquet or JSONL files, or dirs"
    )
    mixer.add_argument("--ratio", type=float, required=True, help="synthetic share of the output (0-1)")
    mixer.add_argument(
        "--by", choices=["examples", "tokens"], default="examples", help="what the share counts"
    )
    mixer.add_argument("--seed", type=int, default=0, help="seed of the sampling and the shuffle (default 0)")
    mixer.add_argument("--out", required=True, help="output dataset directory")
    mixer.add_argument("--text-field", default="text", help="plain-text rows' field (default text)")
    mixer.add_argument("--messages-field", default="messages", help="chat rows' field (default messages)")
    mixer.add_argument(
        "--prompt-field", default="prompt", help="exchange rows' prompt field (default prompt)"
    )
    mixer.add_argument(
        "--response-field", default="response", help="exchange rows' answer (default response)"
    )
    mixer.add_argument("--by-field", help="keep the share within each value of this field (e.g. domain)")
    mixer.add_argument(
        "--tokenizer", default="embedded:smollm2", help="--by tokens: tokenizer (model dir or embedded:NAME)"
    )
    mixer.add_argument(
        "--max-synthetic-share", type=float, default=0.5, help="largest share allowed (default 0.5)"
    )
    mixer.add_argument(
        "--allow-synthetic-majority", action="store_true", help="allow a share above --max-synthetic-share"
    )
    mixer.add_argument("--fresh", action="store_true", help="replace an earlier mix in --out")
    _add_executor(mixer)
    mixer.set_defaults(handler=_mix)

    models = commands.add_parser("models", help="manage embedded models")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    prepare = model_commands.add_parser("prepare", help="convert an embedded model to safetensors (cached)")
    prepare.add_argument("name", nargs="?", default="smollm2")
    prepare.set_defaults(handler=_models_prepare)

    config = commands.add_parser("config", help="recipe tools")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser("show", help="print the resolved recipe, defaults included")
    show.add_argument("recipe")
    _add_set(show)
    show.add_argument("--format", choices=["toml", "yaml", "json"], default="toml")
    show.set_defaults(handler=_config_show)
    return parser


def _add_executor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--executor",
        choices=["local", "ray"],
        default=None,
        help="where the work runs: this process (local, the default) or a Ray cluster",
    )
    parser.add_argument(
        "--ray-address",
        help="a running Ray cluster (host:port, or auto); default RAY_ADDRESS, else a local Ray started here",
    )


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. --set sampling.temperature=0 (repeatable)",
    )


def _run(args: argparse.Namespace) -> int:
    from synthkiln.engine.pipeline import Pipeline

    if args.limit is not None and args.limit < 1:
        raise SynthkilnError(f"--limit must be at least 1, got {args.limit}")
    overrides = list(args.overrides)
    if args.executor:
        overrides.append(f"executor={args.executor}")
    if args.ray_address:
        overrides.append(f"ray.address={args.ray_address}")
    with Pipeline.from_recipe(args.recipe, overrides) as pipeline:
        if args.ray_address and pipeline.recipe.executor != "ray":
            raise SynthkilnError('--ray-address needs --executor ray (or executor = "ray" in the recipe)')
        out = Path(args.out) if args.out else pipeline.recipe.output_dir
        manifest = pipeline.run(
            out,
            limit=args.limit,
            fresh=args.fresh,
            progress=not args.quiet,
            allow_changed_inputs=args.allow_changed_inputs,
        )
    print(format_funnel(manifest))
    print(f"dataset: {out}")
    return 0


def format_funnel(manifest: dict[str, Any]) -> str:
    from synthkiln.engine.controller import describe as describe_steering
    from synthkiln.engine.output.card import describe_cost

    funnel = manifest["funnel"]
    lines = [
        f"prompts   {funnel['prompts']:>8}",
        f"samples   {funnel['samples']:>8}",
        f"accepted  {funnel['accepted']:>8}",
    ]
    rejected = funnel["rejected"]
    total = sum(sum(reasons.values()) for reasons in rejected.values())
    lines.append(f"rejected  {total:>8}")
    for stage, reasons in rejected.items():
        for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {stage + ': ' + reason:<30} {count:>6}")
    timing = manifest["timing"]
    lines.append(
        f"tokens    {manifest['tokens']['completion']:>8} generated; "
        f"{timing['generation_seconds']:.1f} s generating, {timing['wall_seconds']:.1f} s wall"
    )
    lines.extend(format_occupancy(manifest.get("pipeline")))
    for flag in (manifest.get("diversity") or {}).get("cumulative", {}).get("flags", []):
        example = f": {flag['examples'][0][:60]!r}" if flag["examples"] else ""
        lines.append(
            f"flag: {flag['kind']} concentrated, {100 * flag['share']:.1f}% of rows over the "
            f"{100 * flag['max_share']:.0f}% limit{example}"
        )
    for flag in (manifest.get("guards") or {}).get("flags", []):
        lines.append(
            f"flag: teacher {flag['teacher']} wrote {100 * flag['share']:.1f}% of accepted rows, over the "
            f"{100 * flag['max_share']:.0f}% limit (guards.max_teacher_share)"
        )
    for flag in (manifest.get("bias") or {}).get("flags", []):
        lines.append(
            f"flag: {flag['group']} is {flag['ratio']}x as frequent in accepted rows as in the seeds (bias audit)"
        )
    mixed = manifest.get("mix")
    if mixed:
        removed = mixed["human_removed"]
        lines.append(
            f"mix: {mixed['rows']} rows, synthetic share {mixed['synthetic_share']} (asked {mixed['ratio']}) in "
            f"{mixed['out']}; human rows left out first: {removed['near-duplicate']} near-duplicates, "
            f"{removed['contaminated']} contaminated"
        )
    cost = describe_cost(manifest)
    if cost is not None:
        lines.append(cost)
    lines.extend(describe_steering(manifest))
    return "\n".join(lines)


def format_occupancy(stats: dict[str, Any] | None) -> list[str]:
    """Whether the teachers were fed this session: tokens/s, requests in flight, busy share, and
    what held generation back."""
    if not stats:
        return []
    lines = [f"generated {stats['tokens_per_second'] or 0:>8} tokens/s over {stats['wall_seconds']:.1f} s"]
    for name, teacher in stats["teachers"].items():
        if teacher["busy_share"] is None:
            continue
        lines.append(
            f"  {name}: {teacher['mean_in_flight']} requests in flight on average (p10 "
            f"{teacher['p10_in_flight']}, at most {teacher['max_in_flight']}), generating "
            f"{100 * teacher['busy_share']:.0f}% of the time"
        )
    held = stats["bottleneck"]
    if held["part"] == "teachers":
        lines.append("bottleneck: the teachers (generation itself)")
    elif held["part"] == "feeder":
        lines.append(
            f"bottleneck: reading and rendering prompts; the teachers waited {held['seconds']:.1f} s"
        )
    else:
        lines.append(f"bottleneck: {held['part']} held generation back for {held['seconds']:.1f} s")
    return lines


def _inspect(args: argparse.Namespace) -> int:
    import pyarrow as pa
    import pyarrow.dataset as ds

    from synthkiln.engine.output.directory import MANIFEST, listed_shards, read_manifest
    from synthkiln.engine.output.writer import FORMAT

    directory = Path(args.dir)
    manifest = read_manifest(directory)  # names the file when it is missing, truncated or not ours
    if manifest["format"] != FORMAT:
        raise SynthkilnError(
            f"{directory / MANIFEST}: a {manifest['format']} directory; inspect reads `synthkiln run` datasets"
        )
    try:
        title = f"{manifest['name']}  recipe {manifest['recipe_hash']}  {run_state(manifest)}"
        funnel = format_funnel(manifest)
        shards = [directory / s["path"] for s in manifest["shards"]["data"]]
        missing = sorted(path for path in listed_shards(manifest) if not (directory / path).is_file())
    except (KeyError, TypeError) as exc:
        raise SynthkilnError(f"{directory / MANIFEST}: malformed manifest (no or bad entry {exc})") from None
    if missing:
        raise SynthkilnError(
            f"{directory / missing[0]}: listed in {MANIFEST} but missing"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; its rows are lost: restore the file, or start over with `synthkiln run --fresh`"
        )
    print(title)
    print(funnel)
    if not shards:
        print("no accepted rows yet")
        return 0
    try:
        table = ds.dataset(shards, format="parquet").head(args.rows)
    except (pa.ArrowException, OSError) as exc:  # a truncated or foreign shard: Arrow names the file
        raise SynthkilnError(f"{directory}: cannot read its accepted rows: {exc}") from None
    print("\nschema:")
    print(table.schema.to_string(show_field_metadata=False, show_schema_metadata=False))
    print()
    for row in table.to_pylist():
        prompt = next((m["content"] for m in row["messages"] if m["role"] == "user"), "")
        print(f"- id {row['id']}  teacher {row['teacher']}  verified {row['verified']}")
        print(f"  prompt:   {_clip(prompt)}")
        print(f"  response: {_clip(row['response'])}")
    return 0


def run_state(manifest: dict[str, Any]) -> str:
    """What the directory's last run did: finished every seed (or ended by its recipe: steering's early
    stop, a mix's target), stopped at its limit, or was cut short."""
    stopped = manifest.get("stopped")
    if manifest.get("complete"):
        if stopped and "early_stop" in stopped:
            return (
                f"complete: stopped early at window {stopped['early_stop']['window']} (accepted rows brought too "
                f"few novel n-grams), {stopped['seeds_left']} seed rows unused"
            )
        if stopped and "mix_target" in stopped:
            return (
                f"complete: the mix's {stopped['mix_target']} accepted rows are made, "
                f"{stopped['seeds_left']} seed rows unused"
            )
        return "complete: every seed row was processed"
    if stopped:
        return (
            f"stopped at --limit {stopped['limit']} with {stopped['seeds_left']} seed rows left "
            "(rerun `synthkiln run` with a larger --limit or none to continue)"
        )
    return "interrupted before every seed row was processed (rerun `synthkiln run` to resume)"


def _clip(text: str, width: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _dedup(args: argparse.Namespace) -> int:
    from synthkiln.engine.corpus import run_corpus_command
    from synthkiln.engine.corpus.dedup import Dedup
    from synthkiln.engine.executor import open_executor

    if not 0 < args.threshold < 1:
        raise SynthkilnError(f"--threshold must be between 0 and 1, got {args.threshold}")
    command = Dedup(
        args.text_field,
        args.threshold,
        args.num_perm,
        args.ngram,
        args.keep,
        args.backend,
        args.exact,
        args.partition_mb,
    )
    with open_executor(args.executor or "local", args.ray_address) as executor:
        manifest = run_corpus_command(
            command, [Path(p) for p in args.inputs], Path(args.out), not args.quiet, executor=executor
        )
    print(f"rows {manifest['rows']}  kept {manifest['kept']}  removed {manifest['removed']}  "
          f"quarantined {manifest['quarantined']}  clusters {manifest['clusters_with_duplicates']}")  # fmt: skip
    print(f"dataset: {args.out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from synthkiln.engine.output.report import write_report

    print(f"report: {write_report(Path(args.directory))}")
    return 0


def _mix(args: argparse.Namespace) -> int:
    from synthkiln.engine.corpus.mix import Fields, mix, read_side, write_mix
    from synthkiln.engine.executor import open_executor
    from synthkiln.engine.output.card import render_mix_card

    if not 0 <= args.ratio <= 1:
        raise SynthkilnError(f"--ratio must be between 0 and 1, got {args.ratio}")
    if args.ratio > args.max_synthetic_share and not args.allow_synthetic_majority:
        raise SynthkilnError(
            f"--ratio {args.ratio} is above the largest synthetic share allowed ({args.max_synthetic_share}): "
            "training on mostly synthetic data risks model collapse; pass --allow-synthetic-majority to "
            "do it anyway"
        )
    fields = Fields(
        args.messages_field, args.prompt_field, args.response_field, args.text_field, args.by_field
    )
    sides = {side: read_side(side, [Path(p) for p in paths], fields)
             for side, paths in (("synthetic", args.synthetic), ("human", args.human))}  # fmt: skip
    with open_executor(args.executor or "local", args.ray_address) as executor:
        rows, account = mix(
            sides["synthetic"],
            sides["human"],
            args.ratio,
            args.seed,
            args.by,
            args.tokenizer,
            executor=executor,
        )
    synthetic = sum(row["source"] == "synthetic" for row in rows)
    unit = "tokens" if args.by == "tokens" else "rows"
    amounts = (
        {side: sum(r["tokens"] for r in rows if r["source"] == side) for side in ("synthetic", "human")}
        if args.by == "tokens"
        else {"synthetic": synthetic, "human": len(rows) - synthetic}
    )
    whole = sum(amounts.values())
    summary = {
        "inputs": {"synthetic": args.synthetic, "human": args.human},
        "ratio": args.ratio,
        "by": args.by,
        "by_field": args.by_field,
        "seed": args.seed,
        "tokenizer": args.tokenizer if args.by == "tokens" else None,
        "rows": len(rows),
        "synthetic_share": round(amounts["synthetic"] / whole, 6) if whole else None,
        "unit": unit,
        "amounts": amounts,
        "available": {side: len(sides[side]) for side in sides},
        "composition": account,
        "shortfall": {
            "synthetic_left_out": sum(a["synthetic_left_out"] for a in account.values()),
            "human_left_out": sum(a["human_left_out"] for a in account.values()),
        },
    }
    manifest = write_mix(rows, summary, Path(args.out), args.fresh, render_mix_card(summary))
    share = manifest["synthetic_share"]
    print(f"rows {len(rows)}  synthetic {amounts['synthetic']} {unit}  human {amounts['human']} {unit}  "
          f"synthetic share {share}")  # fmt: skip
    left = manifest["shortfall"]
    if left["synthetic_left_out"] or left["human_left_out"]:
        print(
            f"shortfall: the ratio left out {left['synthetic_left_out']} synthetic and "
            f"{left['human_left_out']} human rows (nothing is repeated)"
        )
    print(f"dataset: {args.out}")
    return 0


def _diversity(args: argparse.Namespace) -> int:
    import json

    import pyarrow as pa

    from synthkiln.engine.config import DiversityConfig
    from synthkiln.engine.corpus import check_fields, iter_sources
    from synthkiln.engine.diversity import DiversityTracker
    from synthkiln.engine.executor import open_executor

    sources = iter_sources([Path(p) for p in args.inputs], args.text_field)
    check_fields(sources, {args.text_field: "--text-field"})
    config = DiversityConfig(sample_size=args.sample_size, embeddings=not args.no_embeddings)
    with open_executor(args.executor or "local", args.ray_address) as executor:
        tracker = DiversityTracker(config, args.text_field, executor)
        for source in sources:
            for batch in source.batches():
                tracker.update(pa.Table.from_batches([batch]))
        figures = tracker.summary()
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    for name, value in figures.items():
        if name in ("distributions", "flags"):
            continue
        print(f"{name:<22} {value}")
    for name, counts in figures["distributions"].items():
        print(f"{name:<22} " + ", ".join(f"{value} {count}" for value, count in counts.items()))
    for flag in figures["flags"]:
        print(
            f"flag: {flag['kind']} concentrated, {100 * flag['share']:.1f}% over {100 * flag['max_share']:.0f}%"
        )
    return 0


class _BenchmarkAction(argparse.Action):
    """`--benchmark NAME=PATH` or `--benchmark NAME` (built-in, from Hugging Face) -> a dict per benchmark."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: Any, option: Any = None
    ) -> None:
        name, sep, path = str(value).partition("=")
        if not name or (sep and not path):
            parser.error(f"--benchmark {value!r}: expected NAME=PATH or a built-in NAME")
        benchmark: dict[str, Any] = {"name": name}
        if path:
            benchmark["path"] = path
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), benchmark])


class _BenchmarkFieldsAction(argparse.Action):
    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: Any, option: Any = None
    ) -> None:
        benchmarks = getattr(namespace, self.dest) or []
        if not benchmarks:
            parser.error("--benchmark-fields applies to the --benchmark before it; give --benchmark first")
        benchmarks[-1]["fields"] = [f.strip() for f in str(value).split(",") if f.strip()]


def _builtin_benchmarks() -> list[str]:
    from synthkiln.engine.benchmarks import BUILTIN

    return sorted(BUILTIN)


def _decontaminate(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from synthkiln.engine.config import DecontaminateConfig
    from synthkiln.engine.corpus import run_corpus_command
    from synthkiln.engine.corpus.decontaminate import Decontaminate
    from synthkiln.engine.executor import open_executor

    try:
        config = DecontaminateConfig(
            benchmarks=args.benchmarks, ngram=args.ngram, min_coverage=args.min_coverage,
            max_item_frequency=args.max_item_frequency, fuzzy=not args.no_fuzzy,
            fuzzy_threshold=args.fuzzy_threshold, unicode=args.unicode, backend=args.backend,
        )  # fmt: skip
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors()
        )
        raise SynthkilnError(problems) from None
    command = Decontaminate(config, args.text_field)
    with open_executor(args.executor or "local", args.ray_address) as executor:
        manifest = run_corpus_command(
            command, [Path(p) for p in args.inputs], Path(args.out), not args.quiet, executor=executor
        )
    print(f"rows {manifest['rows']}  kept {manifest['kept']}  removed {manifest['removed']}  "
          f"quarantined {manifest['quarantined']}")  # fmt: skip
    for benchmark in manifest["decontaminated_against"]:
        print(f"  {benchmark['name']}: {benchmark['indexed']} items checked, {benchmark['items_hit']} hit, "
              f"{benchmark['rows_removed']} rows removed")  # fmt: skip
    print(f"dataset: {args.out}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from synthkiln.engine.config import VerifyConfig
    from synthkiln.engine.corpus import run_corpus_command
    from synthkiln.engine.corpus.verify import Verify
    from synthkiln.engine.executor import open_executor
    from synthkiln.engine.stages.verify import build_pool, build_verifier

    given = {
        "code_field": args.code_field, "tests_field": args.tests_field, "entry_point_field": args.entry_point_field,
        "program_field": args.program_field, "cases_field": args.cases_field, "response_field": args.response_field,
        "reference_field": args.reference_field, "field": args.field, "schema_file": args.schema_file,
        "pattern": args.pattern, "min_words": args.min_words, "max_words": args.max_words,
        "threshold": args.threshold, "rubric": args.rubric, "model": args.model, "facts": args.facts,
        "teacher": {"backend": "transformers", "model": args.judge_model},
    }  # fmt: skip
    needs = {
        "json-schema": "--schema-file",
        "regex": "--pattern",
        "reward-model": "--reward-model",
        "knowledge-base": "--facts",
    }
    keys = {
        "--schema-file": "schema_file",
        "--pattern": "pattern",
        "--reward-model": "model",
        "--facts": "facts",
    }
    verifiers = []
    for name in args.verifiers:
        if name in needs and given[keys[needs[name]]] is None:
            raise SynthkilnError(f"--verifier {name} needs {needs[name]}")
        options = {key: value for key, value in given.items() if value is not None}
        verifiers.append(build_verifier(name, options, ignore_unknown=True))
    config = VerifyConfig(sandbox=args.sandbox, workers=args.workers, wall_seconds=args.timeout)
    executor = args.executor or "local"
    with open_executor(executor, args.ray_address), build_pool(config, executor) as pool:
        manifest = run_corpus_command(
            Verify(verifiers, pool), [Path(p) for p in args.inputs], Path(args.out), not args.quiet
        )
    failed = manifest["rows"] - manifest["kept"]
    print(f"rows {manifest['rows']}  passed {manifest['kept']}  failed {failed}  "
          f"({manifest['seconds']:.1f} s, sandbox {args.sandbox})")  # fmt: skip
    for reason, count in sorted(manifest["rejected"].items(), key=lambda item: -item[1]):
        print(f"  {reason}: {count}")
    print(f"dataset: {args.out}")
    return 0


def _models_prepare(args: argparse.Namespace) -> int:
    from synthkiln.engine.models import prepare_embedded

    print(prepare_embedded(args.name))
    return 0


def _config_show(args: argparse.Namespace) -> int:
    from synthkiln.engine.config import dump_recipe, load_recipe

    print(dump_recipe(load_recipe(args.recipe, args.overrides), args.format), end="")
    return 0


if __name__ == "__main__":  # vLLM's worker processes re-import the entry point: keep it guarded
    entry()
