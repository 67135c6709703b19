"""The benchmark registry: evaluation sets by name (built-in Hugging Face mappings) or local files, and
their protected texts as items for the decontamination index. A benchmark that cannot be loaded stops
everything (fail closed); nothing is skipped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from synthkiln.engine.corpus import Source
from synthkiln.engine.errors import SynthkilnError
from synthkiln.engine.inputs import sha256_file

if TYPE_CHECKING:  # hints only: importing the recipe models (pydantic) costs a corpus command 0.15 s
    from synthkiln.engine.config import BenchmarkConfig


@dataclass(frozen=True)
class BuiltinBenchmark:
    fields: tuple[str, ...]
    id_field: str | None
    hf_dataset: str
    hf_config: str | None
    split: str


BUILTIN: dict[str, BuiltinBenchmark] = {
    "gsm8k": BuiltinBenchmark(("question", "answer"), None, "openai/gsm8k", "main", "test"),
    "math": BuiltinBenchmark(("problem", "solution"), "unique_id", "HuggingFaceH4/MATH-500", None, "test"),
    "humaneval": BuiltinBenchmark(
        ("prompt", "canonical_solution"), "task_id", "openai/openai_humaneval", None, "test"
    ),
    "mbpp": BuiltinBenchmark(("text", "code"), "task_id", "google-research-datasets/mbpp", "full", "test"),
    "mmlu": BuiltinBenchmark(("question", "choices"), None, "cais/mmlu", "all", "test"),
    "arc": BuiltinBenchmark(("question", "choices"), "id", "allenai/ai2_arc", "ARC-Challenge", "test"),
    "hellaswag": BuiltinBenchmark(("ctx", "endings"), "ind", "Rowan/hellaswag", None, "validation"),
    "truthfulqa": BuiltinBenchmark(
        ("question", "best_answer"), None, "truthfulqa/truthful_qa", "generation", "validation"
    ),
    "gpqa": BuiltinBenchmark(
        ("Question", "Correct Answer"), "Record ID", "Idavidrein/gpqa", "gpqa_diamond", "train"
    ),
}


@dataclass(frozen=True)
class BenchmarkSource:
    """Where a benchmark's rows come from and which fields are protected (None: every string field)."""

    name: str
    path: Path | None
    fields: tuple[str, ...] | None
    id_field: str | None
    hf: tuple[str, str | None, str] | None  # dataset, config, split

    @classmethod
    def of(cls, config: BenchmarkConfig) -> BenchmarkSource:
        builtin = BUILTIN.get(config.name.lower())
        fields = tuple(config.fields) if config.fields else (builtin.fields if builtin else None)
        id_field = config.id_field or (builtin.id_field if builtin else None)
        if config.path is not None:
            return cls(config.name, Path(config.path), fields, id_field, None)
        if config.hf_dataset is not None:
            return cls(
                config.name,
                None,
                fields,
                id_field,
                (config.hf_dataset, config.hf_config, config.split or "test"),
            )
        if builtin is None:
            known = ", ".join(sorted(BUILTIN))
            raise SynthkilnError(
                f"benchmark '{config.name}': not a built-in benchmark ({known}); give its file as NAME=PATH"
            )
        return cls(config.name, None, fields, id_field,
                   (builtin.hf_dataset, builtin.hf_config, config.split or builtin.split))  # fmt: skip

    @property
    def location(self) -> str:
        if self.path is not None:
            return str(self.path)
        dataset, config, split = self.hf  # type: ignore[misc]
        return f"hf:{dataset}" + (f"/{config}" if config else "") + f":{split}"

    def table(self) -> pa.Table:
        if self.path is not None:
            if not self.path.is_file():
                raise SynthkilnError(f"benchmark '{self.name}': {self.path}: no such file")
            return Source(self.path).table()
        return self._hf_table()

    def digest(self) -> str:
        """sha256 of the file (or the Hugging Face dataset's fingerprint): what the index is keyed by."""
        if self.path is None:
            return f"hf-fingerprint:{self._hf_dataset()._fingerprint}"
        if not self.path.exists():
            raise SynthkilnError(f"benchmark '{self.name}': {self.path}: no such file")
        try:
            return sha256_file(self.path)
        except SynthkilnError as exc:
            raise SynthkilnError(f"benchmark '{self.name}': {exc}") from None

    def _hf_dataset(self) -> Any:
        dataset, config, split = self.hf  # type: ignore[misc]
        try:
            import datasets
        except ImportError:
            raise SynthkilnError(
                f"benchmark '{self.name}' comes from Hugging Face ({dataset}) and needs `datasets`: "
                f"pip install 'synthkiln[hf]', or give a local copy as {self.name}=PATH"
            ) from None
        try:
            return datasets.load_dataset(dataset, config, split=split)
        except Exception as exc:  # the hub raises many types (offline, gated, missing split)
            raise SynthkilnError(
                f"benchmark '{self.name}': cannot load {self.location} ({type(exc).__name__}: {exc}); "
                f"give a local copy as {self.name}=PATH"
            ) from None

    def _hf_table(self) -> pa.Table:
        return pa.Table.from_pylist(self._hf_dataset().to_list())


@dataclass
class Items:
    """Every protected text of the benchmarks: one item per (benchmark row, field)."""

    texts: list[str] = field(default_factory=list)
    benchmark: list[int] = field(default_factory=list)
    item_id: list[str] = field(default_factory=list)
    field_name: list[str] = field(default_factory=list)


def read_items(source: BenchmarkSource, number: int, items: Items) -> dict[str, Any]:
    table = source.table()
    if table.num_rows == 0:
        raise SynthkilnError(f"benchmark '{source.name}': {source.location} holds no rows")
    fields = source.fields or tuple(
        f.name
        for f in table.schema
        if (pa.types.is_string(f.type) or pa.types.is_large_string(f.type)) and f.name != source.id_field
    )
    missing = [f for f in fields if f not in table.schema.names]
    if missing or not fields:
        raise SynthkilnError(
            f"benchmark '{source.name}': {source.location} has no field {', '.join(map(repr, missing))} "
            f"(fields: {', '.join(table.schema.names)}); choose with --benchmark-fields or `fields`"
        )
    if source.id_field is not None and source.id_field not in table.schema.names:
        raise SynthkilnError(
            f"benchmark '{source.name}': {source.location} has no id field '{source.id_field}'"
        )
    ids = (
        [str(v) for v in table.column(source.id_field).to_pylist()]
        if source.id_field
        else [str(r) for r in range(table.num_rows)]
    )
    before = len(items.texts)
    for name in fields:
        for row, value in enumerate(table.column(name).to_pylist()):
            text = _as_text(value)
            if text:
                items.texts.append(text)
                items.benchmark.append(number)
                items.item_id.append(ids[row])
                items.field_name.append(name)
    return {"rows": table.num_rows, "fields": list(fields), "items": len(items.texts) - before}


def _as_text(value: Any) -> str | None:
    """Strings as they are; lists (choices) and mappings (ARC's choices) as their joined strings."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        parts = [_as_text(v) for v in value]
        return "\n".join(p for p in parts if p)
    return str(value)
