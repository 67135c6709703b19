"""`synthkiln mix`: synthetic and human rows at an exact share, sampled without replacement.

Each side's rows are read whole (a fine-tuning mix fits in memory; the decision needs every row's
length with `--by tokens`), put in one shape, shuffled by the seed, and the longest prefixes of the two
shuffles that hold the asked synthetic share are taken: to one example with `--by examples`, to 0.1% of
the tokens with `--by tokens`. When one side runs short the output is as large as the share allows and
what was left out of the other side is reported; nothing is repeated. With `--by-field F` the share
holds within each value of F. The output is shuffled again by the seed and written as a dataset
directory (shards, manifest, card) through the one output guard.

Shapes, per input file: `messages` (a chat), else a prompt and a response field (one exchange), else a
text field; a synthkiln dataset directory gives its accepted rows' `messages`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from synthkiln.engine.corpus import Source, iter_sources
from synthkiln.engine.errors import SynthkilnError
from synthkiln.engine.executor import LocalExecutor
from synthkiln.engine.output.directory import OutputDirectory
from synthkiln.engine.output.report import write_report_or_warn

OUTPUT_FORMAT = "synthkiln-mix/1"
SIDES = ("synthetic", "human")
TOKEN_TOLERANCE = 0.001  # --by tokens: the synthetic share of tokens within 0.1 points of the ratio

MIX_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        pa.field("text", pa.string()),
        pa.field("origin_file", pa.string()),
        pa.field("origin_row", pa.int64()),
        pa.field("lineage_depth", pa.int32()),
        pa.field("tokens", pa.int64()),
        pa.field("category", pa.string()),
    ]
)


@dataclass
class Fields:
    """Where a row's content is: the chat, the exchange, or the text (the first an input holds)."""

    messages: str = "messages"
    prompt: str = "prompt"
    response: str = "response"
    text: str = "text"
    category: str | None = None  # --by-field


@dataclass
class Side:
    """One side's rows in the output shape, and their token counts (`--by tokens`)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def read_side(name: str, paths: list[Path], fields: Fields) -> list[dict[str, Any]]:
    """Every row of one side in the output shape; a file without a known shape, or a row without its
    content, is an error naming the file, row and field."""
    rows = []
    for source in iter_sources(paths):
        names = source.field_names()
        if names is None:
            continue
        shape = _shape(source, names, fields)
        for batch in source.batches():
            for offset, record in enumerate(batch.to_pylist()):
                number = source.row_base + offset + 1
                rows.append(_row(name, source.path, number, record, shape, fields))
    return rows


def _shape(source: Source, names: list[str], fields: Fields) -> str:
    if fields.category is not None and fields.category not in names:
        raise SynthkilnError(
            f"{source.path}: no field '{fields.category}' (from --by-field); fields: {', '.join(names)}"
        )
    if fields.messages in names:
        return "messages"
    if fields.prompt in names and fields.response in names:
        return "exchange"
    if fields.text in names:
        return "text"
    raise SynthkilnError(
        f"{source.path}: no '{fields.messages}' field, no '{fields.prompt}' and '{fields.response}' pair, no "
        f"'{fields.text}' field (fields: {', '.join(names)}); map yours with --messages-field, --prompt-field "
        "and --response-field, or --text-field"
    )


def _row(
    side: str, path: Path, number: int, record: dict[str, Any], shape: str, fields: Fields
) -> dict[str, Any]:
    where = f"{path} row {number}"
    messages, text = None, None
    if shape == "messages":
        messages = record.get(fields.messages)
        if (
            not isinstance(messages, list)
            or not messages
            or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages
            )
        ):
            raise SynthkilnError(
                f"{where}: field '{fields.messages}' is not a list of {{role, content}} messages"
            )
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    elif shape == "exchange":
        prompt, response = record.get(fields.prompt), record.get(fields.response)
        for name, value in ((fields.prompt, prompt), (fields.response, response)):
            if not isinstance(value, str) or not value.strip():
                raise SynthkilnError(f"{where}: field '{name}' is empty or not text")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    else:
        text = record.get(fields.text)
        if not isinstance(text, str) or not text.strip():
            raise SynthkilnError(f"{where}: field '{fields.text}' is empty or not text")
    depth = record.get("lineage_depth")
    depth = depth if isinstance(depth, int) and not isinstance(depth, bool) else None
    recorded = record.get("source")
    if side == "human" and (recorded == "synthetic" or (depth or 0) > 0):
        # Synthetic rows passed off as human would defeat the share and the lineage guard.
        raise SynthkilnError(
            f"{where}: a synthetic row (source {recorded!r}, lineage_depth {depth}) given as human data"
        )
    if side == "synthetic" and recorded == "human":
        raise SynthkilnError(f"{where}: a human row (source 'human') given as synthetic data")
    lineage = 0 if side == "human" else (depth if depth is not None else 1)
    category = None
    if fields.category is not None:
        value = record.get(fields.category)
        category = value if isinstance(value, str) or value is None else json.dumps(value)
    identity = f"{side}\0{path}\0{number}"
    return {
        "id": hashlib.sha256(identity.encode()).hexdigest()[:16],
        "source": side,
        "messages": messages,
        "text": text,
        "origin_file": str(path),
        "origin_row": number,
        "lineage_depth": lineage,
        "tokens": None,
        "category": category,
    }


def count_tokens(
    rows: list[dict[str, Any]], tokenizer: str, executor: LocalExecutor | None = None
) -> np.ndarray:
    """Tokens per row: its text, or its messages' contents, as `tokenizer` (a model name, as in
    `--tokenizer`) cuts them; chunks of rows counted on the executor's workers."""
    texts = [
        row["text"] if row["text"] is not None else "\n".join(m["content"] for m in row["messages"])
        for row in rows
    ]
    chunks = [texts[start : start + 4096] for start in range(0, len(texts), 4096)]
    counted = [counts for _, counts in (executor or LocalExecutor()).map(count_texts, tokenizer, chunks)]
    return np.concatenate(counted) if counted else np.zeros(0, np.int64)


_TOKENIZERS: dict[str, Any] = {}  # loaded once per process (a Ray worker's too)


def count_texts(tokenizer: str, texts: list[str]) -> np.ndarray:
    if tokenizer not in _TOKENIZERS:
        from transformers import AutoTokenizer

        from synthkiln.engine.models import resolve_model

        _TOKENIZERS[tokenizer] = AutoTokenizer.from_pretrained(resolve_model(tokenizer))
    encoded = _TOKENIZERS[tokenizer](texts, add_special_tokens=False)["input_ids"]
    return np.array([len(ids) for ids in encoded], np.int64)


def synthetic_count(ratio: float, total: int) -> int:
    """Synthetic rows of `total` at `ratio`, halves rounded down (0.5 of 3 is 1: never a majority)."""
    return math.ceil(ratio * total - 0.5)


def choose_examples(synthetic: int, human: int, ratio: float, size: int | None = None) -> tuple[int, int]:
    """The most rows (at most `size`) whose synthetic count is within one example of `ratio` of them all."""
    upper = synthetic + human if size is None else min(size, synthetic + human)
    if ratio > 0:
        upper = min(upper, int((synthetic + 0.5) / ratio))
    if ratio < 1:
        upper = min(upper, int((human + 0.5) / (1 - ratio)))
    for total in range(upper, -1, -1):
        count = synthetic_count(ratio, total)
        if count <= synthetic and total - count <= human:
            return count, total - count
    return 0, 0


def choose_tokens(synthetic: np.ndarray, human: np.ndarray, ratio: float) -> tuple[int, int]:
    """Prefix lengths of the two shuffled sides whose synthetic share of tokens is within
    TOKEN_TOLERANCE of `ratio`: the longest synthetic prefix that some human prefix matches (the mix's
    size follows the synthetic tokens, so it is the largest such mix, to the tolerance)."""
    synthetic_sums = np.concatenate([[0], np.cumsum(synthetic)])
    human_sums = np.concatenate([[0], np.cumsum(human)])
    if ratio == 0:
        return 0, len(human)
    for taken in range(len(synthetic_sums) - 1, 0, -1):
        tokens = int(synthetic_sums[taken])
        at = int(np.searchsorted(human_sums, tokens * (1 - ratio) / ratio))
        for candidate in (at, at - 1):
            if 0 <= candidate < len(human_sums):
                total = tokens + int(human_sums[candidate])
                if total and abs(tokens / total - ratio) <= TOKEN_TOLERANCE:
                    return taken, candidate
    return 0, 0


def mix(
    synthetic: list[dict[str, Any]],
    human: list[dict[str, Any]],
    ratio: float,
    seed: int,
    by: str = "examples",
    tokenizer: str | None = None,
    size: int | None = None,
    executor: LocalExecutor | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The mixed rows in their final order (at most `size`, by examples), and the account of what was
    taken and left out."""
    groups: dict[str | None, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for side, rows in ((0, synthetic), (1, human)):
        for row in rows:
            groups.setdefault(row["category"], ([], []))[side].append(row)
    chosen: list[dict[str, Any]] = []
    account: dict[str, Any] = {}
    for category in sorted(groups, key=lambda c: (c is None, c or "")):
        sides = [_shuffled(rows, seed, name) for rows, name in zip(groups[category], SIDES, strict=True)]
        if by == "tokens":
            assert tokenizer is not None, "mixing by tokens needs a tokenizer"
            counts = [count_tokens(rows, tokenizer, executor) for rows in sides]
            for rows, tokens in zip(sides, counts, strict=True):
                for row, count in zip(rows, tokens.tolist(), strict=True):
                    row["tokens"] = count
            taken = choose_tokens(counts[0], counts[1], ratio)
        else:
            taken = choose_examples(len(sides[0]), len(sides[1]), ratio, size)
        part = sides[0][: taken[0]] + sides[1][: taken[1]]
        chosen.extend(part)
        account[category if category is not None else "*"] = {
            "synthetic": taken[0],
            "human": taken[1],
            "synthetic_left_out": len(sides[0]) - taken[0],
            "human_left_out": len(sides[1]) - taken[1],
            **(
                {"synthetic_tokens": sum(r["tokens"] for r in part if r["source"] == "synthetic"),
                 "human_tokens": sum(r["tokens"] for r in part if r["source"] == "human")}
                if by == "tokens" else {}
            ),
        }  # fmt: skip
    short = [
        c for c, a in account.items() if (ratio > 0 and not a["synthetic"]) or (ratio < 1 and not a["human"])
    ]
    if short:
        raise SynthkilnError(
            f"too few rows to mix at ratio {ratio}"
            + (f" in {by_field_values(short)}" if short != ["*"] else "")
            + f": {account[short[0]]['synthetic'] + account[short[0]]['synthetic_left_out']} synthetic and "
            f"{account[short[0]]['human'] + account[short[0]]['human_left_out']} human rows"
        )
    order = np.random.Generator(np.random.PCG64(seed)).permutation(len(chosen))
    return [chosen[i] for i in order.tolist()], account


def by_field_values(values: list[str]) -> str:
    return "the value(s) " + ", ".join(repr(v) for v in values)


def _shuffled(rows: list[dict[str, Any]], seed: int, side: str) -> list[dict[str, Any]]:
    """Rows in an order that depends on the seed and the rows' identities, not on the input order."""
    salt = hashlib.sha256(f"{seed}\0{side}".encode()).digest()
    return sorted(rows, key=lambda row: hashlib.sha256(salt + row["id"].encode()).digest())


def write_mix(
    rows: list[dict[str, Any]], summary: dict[str, Any], out_dir: Path, fresh: bool, card: str
) -> dict[str, Any]:
    """Write the mix as a dataset directory (guarded like every output) and commit its manifest."""
    with OutputDirectory(out_dir, OUTPUT_FORMAT, fresh) as directory:
        run = int((directory.previous or {}).get("runs", 0)) + 1
        table = pa.Table.from_pylist(rows, MIX_SCHEMA)
        shards = {"data": [directory.write_shard(table, f"data/part-r{run}-00000.parquet")], "rejected": []}
        manifest = {**summary, "runs": run, "shards": shards, "files": []}
        directory.commit(manifest, card)
        write_report_or_warn(out_dir)
    return manifest


def content_text(row: dict[str, Any]) -> str:
    """A row's whole text: its `text`, or its messages' contents."""
    return row["text"] if row["text"] is not None else "\n".join(m["content"] for m in row["messages"])


def _answer(row: dict[str, Any]) -> str:
    """The part of a row a generated response is compared with: its text, or its last message."""
    return row["text"] if row["text"] is not None else row["messages"][-1]["content"]


def clean_human(
    human: list[dict[str, Any]],
    synthetic_texts: pa.Array,
    dedup: tuple[int, int, float] | None,
    contamination: Any = None,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The human rows that are neither near-duplicates of a synthetic row (or of an earlier human
    row) nor hold a benchmark item, with the counts removed. `dedup` is (num_perm, ngram, threshold)
    as the run's dedup stage has them, None when it is off; `contamination` the run's benchmark index
    (its `find`)."""
    removed = {"near-duplicate": 0, "contaminated": 0}
    texts = pa.array([content_text(row) for row in human], pa.large_string())
    answers = pa.array([_answer(row) for row in human], pa.large_string())  # what dedup compares
    keep = np.ones(len(human), bool)
    if dedup is not None and len(human):
        from synthkiln.kernels.lsh import StreamingIndex
        from synthkiln.kernels.minhash import minhash_signatures

        num_perm, ngram, threshold = dedup
        index = StreamingIndex(num_perm, threshold)
        if len(synthetic_texts):
            index.add(minhash_signatures(synthetic_texts, num_perm=num_perm, ngram=ngram))
        duplicate_of, _ = index.add(minhash_signatures(answers, num_perm=num_perm, ngram=ngram))
        keep &= duplicate_of < 0
        removed["near-duplicate"] = int((duplicate_of >= 0).sum())
    if contamination is not None and len(human):
        hits = np.array([match is not None for match in contamination.find(texts)], bool)
        removed["contaminated"] = int((hits & keep).sum())
        keep &= ~hits
    return [row for row, kept in zip(human, keep.tolist(), strict=True) if kept], removed
