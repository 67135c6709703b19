"""The row schema of a synthkiln dataset (accepted rows) and of its rejected rows."""

from __future__ import annotations

import pyarrow as pa

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
VERDICT = pa.struct([("verifier", pa.string()), ("passed", pa.bool_()), ("detail", pa.string())])
# A list of key/value structs, not map<string, string>: `datasets` has no dtype for Arrow maps.
SEED_FIELD = pa.struct([("key", pa.string()), ("value", pa.string())])

ROW_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # content hash of prompt_id + response
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("task", pa.string()),
        pa.field("domain", pa.string()),
        pa.field("messages", pa.list_(MESSAGE)),
        pa.field("response", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("reference", pa.string()),
        pa.field("verified", pa.bool_()),
        pa.field("verdicts", pa.list_(VERDICT)),
        pa.field("teacher", pa.string()),
        pa.field("model", pa.string()),
        pa.field("temperature", pa.float32()),
        pa.field("top_p", pa.float32()),
        pa.field("max_tokens", pa.int32()),
        pa.field("seed", pa.int64()),
        pa.field("sample_index", pa.int32()),
        pa.field("finish_reason", pa.string()),
        pa.field("prompt_tokens", pa.int32()),
        pa.field("completion_tokens", pa.int32()),
        pa.field("template_hash", pa.string()),
        pa.field("persona", pa.string()),
        pa.field("format", pa.string()),
        pa.field("difficulty", pa.string()),
        pa.field("variant", pa.string()),
        pa.field("seed_source", pa.string()),
        pa.field("seed_row", pa.int64()),
        pa.field("lineage_depth", pa.int32()),
        pa.field("seed_fields", pa.list_(SEED_FIELD)),  # task.carry_fields of the seed row
        pa.field("source", pa.string()),  # "synthetic" here; "human" for rows mixed in later
    ]
)

# `reason` is a short code (counted in the manifest's funnel); `detail` says what exactly was wrong.
REJECTION_FIELDS = [
    pa.field("stage", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("detail", pa.string()),
]


def with_fields(schema: pa.Schema, fields: list[pa.Field]) -> pa.Schema:
    """`schema` plus the columns stages add (skipping any it already has)."""
    for field in fields:
        if schema.get_field_index(field.name) < 0:
            schema = schema.append(field)
    return schema


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """The batch with exactly `schema`'s columns: missing ones are null (e.g. a column a later stage adds)."""
    if batch.schema.equals(schema):
        return batch
    columns = [
        batch.column(field.name).cast(field.type)
        if batch.schema.get_field_index(field.name) >= 0
        else pa.nulls(len(batch), field.type)
        for field in schema
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def rejected_schema(schema: pa.Schema) -> pa.Schema:
    """Rejected rows keep every column of the accepted ones, plus why they were rejected."""
    for field in REJECTION_FIELDS:
        schema = schema.append(field)
    return schema
