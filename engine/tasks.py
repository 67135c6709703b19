"""Tasks turn seed rows into prompts, and a teacher's text back into the row's fields.

Each task has a built-in Jinja template (``engine/templates``) that a recipe may replace. The
template's hash is recorded on every row, and persona / format / difficulty rotate over prompts for
coverage. Templates render in Jinja's sandbox with strict undefined: a seed row that lacks a slot
is quarantined with the missing field named.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from synthkiln.engine.config import (
    STEERED_DIMENSIONS,
    AugmentationTask,
    DomainTask,
    InstructionTask,
    ReasoningTask,
    TaskConfig,
    steered_values,
)
from synthkiln.engine.errors import RecipeError
from synthkiln.engine.seeds import SeedRow
from synthkiln.verifiers.answers import extract_final_answer

_TEMPLATES = Path(__file__).parent / "templates"
Choose = Callable[[str, list[str]], str]  # (dimension, listed values) -> the value for one prompt
_ENV = SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


class SeedRowError(ValueError):
    """This seed row cannot become a prompt (missing or empty field, template error)."""


class ResponseParseError(ValueError):
    """The teacher's text does not have the shape the task asked for."""


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    messages: list[dict[str, str]]
    task: str
    domain: str | None
    template_hash: str
    reference: str | None
    persona: str | None
    format: str | None
    difficulty: str | None
    variant: str | None
    seed_source: str
    seed_row: int
    lineage_depth: int
    seed_fields: dict[str, str] | None = None  # `carry_fields` of the seed row


@dataclass(frozen=True)
class SampleFields:
    messages: list[dict[str, str]]  # the whole conversation, final assistant turn included
    response: str  # the final assistant turn
    answer: str | None


class Task:
    """Base: render prompts from a seed row; read the row's fields from a teacher's text."""

    def __init__(self, config: TaskConfig) -> None:
        self.config = config
        self.kind = config.kind
        source = self._template_source()
        try:
            self._template = _ENV.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise RecipeError(f"task template: line {exc.lineno}: {exc.message}") from None
        self.template_hash = hashlib.sha256(f"{config.system or ''}\0{source}".encode()).hexdigest()[:16]

    def prompts(self, seed: SeedRow, ordinal: int, choose: Choose | None = None) -> list[Prompt]:
        """Prompts for the `ordinal`-th seed row; raises SeedRowError for an unusable row.

        Persona, format and difficulty rotate with the prompt's ordinal, unless `choose(dimension,
        values)` picks them (steering: `engine/controller.py`)."""
        assert seed.fields is not None
        prompts = []
        per_seed = self.config.prompts_per_seed
        for variant in self._variants():
            for step in range(per_seed):
                rotation = ordinal * per_seed + step
                picked = {
                    dimension: (
                        choose(dimension, values)
                        if choose is not None and values
                        else _pick(values, rotation)
                    )
                    for dimension in STEERED_DIMENSIONS
                    for values in [steered_values(self.config, dimension)]
                }
                context = {
                    **seed.fields,
                    **self._slots(seed.fields),
                    "seed": seed.fields,
                    **picked,
                    "variant": variant,
                }
                prompts.append(self._prompt(seed, context))
        return prompts

    def sample_fields(self, prompt: Prompt, text: str) -> SampleFields:
        response = text.strip()
        return SampleFields([*prompt.messages, {"role": "assistant", "content": response}], response, None)

    # Hooks for the kinds below.
    def _builtin_template(self) -> str:
        raise RecipeError(
            f"task kind '{self.kind}' has no built-in template: set `template` or `template_file`"
        )

    def _slots(self, fields: dict[str, Any]) -> dict[str, Any]:
        return {}

    def _variants(self) -> list[str | None]:
        return [None]

    def _reference(self, fields: dict[str, Any]) -> str | None:
        return None

    def _template_source(self) -> str:
        if self.config.template is not None:
            return self.config.template
        if self.config.template_file is not None:
            path = Path(self.config.template_file)
            if not path.is_file():
                raise RecipeError(f"task.template_file: {path}: file not found")
            return path.read_text(encoding="utf-8")
        return self._builtin_template()

    def _prompt(self, seed: SeedRow, context: dict[str, Any]) -> Prompt:
        try:
            user = self._template.render(context).strip()
        except jinja2.UndefinedError as exc:
            raise SeedRowError(f"template slot missing from the seed row: {exc.message}") from None
        except jinja2.TemplateError as exc:
            raise SeedRowError(f"template error: {exc}") from None
        messages = [{"role": "system", "content": self.config.system}] if self.config.system else []
        messages.append({"role": "user", "content": user})
        reference = self._reference(seed.fields or {})
        fields = seed.fields or {}
        carried = None
        if self.config.carry_fields:
            missing = [name for name in self.config.carry_fields if fields.get(name) is None]
            if missing:
                raise SeedRowError(f"field '{missing[0]}' (in task.carry_fields) is missing")
            carried = {
                name: fields[name] if isinstance(fields[name], str) else json.dumps(fields[name])
                for name in self.config.carry_fields
            }
        identity = json.dumps([self.kind, self.template_hash, messages, reference, carried], sort_keys=True)
        return Prompt(
            prompt_id=hashlib.sha256(identity.encode()).hexdigest()[:16],
            messages=messages,
            task=self.kind,
            domain=self.config.domain,
            template_hash=self.template_hash,
            reference=reference,
            persona=context["persona"],
            format=context["format"],
            difficulty=context["difficulty"],
            variant=context["variant"],
            seed_source=seed.source,
            seed_row=seed.row,
            lineage_depth=seed_lineage_depth(fields) + 1,
            seed_fields=carried,
        )


class InstructionResponse(Task):
    config: InstructionTask

    def _builtin_template(self) -> str:
        if self.config.from_topic:
            name = "instruction_topic"
        elif self.config.turns > 1:
            name = "instruction_turns"
        else:
            name = "instruction"
        return (_TEMPLATES / f"{name}.jinja").read_text()

    def _slots(self, fields: dict[str, Any]) -> dict[str, Any]:
        return {"instruction": _text_field(fields, self.config.instruction_field), "turns": self.config.turns}

    def sample_fields(self, prompt: Prompt, text: str) -> SampleFields:
        if not self.config.from_topic and self.config.turns == 1:
            return super().sample_fields(prompt, text)
        conversation = parse_transcript(text)[: 2 * self.config.turns]
        prefix = [m for m in prompt.messages if m["role"] == "system"]
        return SampleFields([*prefix, *conversation], conversation[-1]["content"], None)


class ReasoningTrace(Task):
    config: ReasoningTask

    def _builtin_template(self) -> str:
        return (_TEMPLATES / "reasoning.jinja").read_text()

    def _slots(self, fields: dict[str, Any]) -> dict[str, Any]:
        return {"question": _text_field(fields, self.config.question_field)}

    def _reference(self, fields: dict[str, Any]) -> str | None:
        if self.config.answer_field is None or fields.get(self.config.answer_field) is None:
            return None
        reference = extract_final_answer(str(fields[self.config.answer_field]))
        if reference is None:
            raise SeedRowError(f"field '{self.config.answer_field}': no final answer found in it")
        return reference

    def sample_fields(self, prompt: Prompt, text: str) -> SampleFields:
        base = super().sample_fields(prompt, text)
        return SampleFields(base.messages, base.response, extract_final_answer(base.response))


class Augmentation(Task):
    config: AugmentationTask

    def _builtin_template(self) -> str:
        return (_TEMPLATES / "augmentation.jinja").read_text()

    def _slots(self, fields: dict[str, Any]) -> dict[str, Any]:
        return {"text": _text_field(fields, self.config.text_field), "language": self.config.language}

    def _variants(self) -> list[str | None]:
        return list(self.config.variants)


class Domain(Task):
    config: DomainTask

    def _template_source(self) -> str:
        source = super()._template_source()
        if not self.config.constraints:
            return source
        listed = "\n".join(f"- {c}" for c in self.config.constraints)
        return f"{source.rstrip()}\n\nConstraints:\n{listed}\n"


def build_task(config: TaskConfig) -> Task:
    kinds: dict[str, type[Task]] = {
        "instruction": InstructionResponse,
        "reasoning": ReasoningTrace,
        "augmentation": Augmentation,
        "domain": Domain,
    }
    return kinds[config.kind](config)


_SPEAKER = re.compile(r"^\s*\**\s*(user|assistant)\s*\**\s*:\s*\**\s*", re.IGNORECASE)


def parse_transcript(text: str) -> list[dict[str, str]]:
    """Read "User: ..." / "Assistant: ..." lines into alternating chat messages, ending on an answer."""
    messages: list[dict[str, str]] = []
    for line in text.splitlines():
        match = _SPEAKER.match(line)
        if match:
            role = match.group(1).lower()
            content = line[match.end() :].strip()
            if messages and messages[-1]["role"] == role:
                messages[-1]["content"] += "\n" + content
            else:
                messages.append({"role": role, "content": content})
        elif messages:
            messages[-1]["content"] += "\n" + line
    while messages and messages[0]["role"] != "user":
        messages.pop(0)
    if messages and messages[-1]["role"] != "assistant":
        messages.pop()
    for message in messages:
        message["content"] = message["content"].strip()
    if not messages or any(not m["content"] for m in messages):
        raise ResponseParseError("no complete 'User:' / 'Assistant:' exchange in the response")
    return messages


def _text_field(fields: dict[str, Any], name: str) -> str:
    if name not in fields:
        raise SeedRowError(f"field '{name}' is missing")
    value = fields[name]
    if not isinstance(value, str) or not value.strip():
        raise SeedRowError(f"field '{name}' must be non-empty text, got {value!r:.60}")
    return value


def seed_lineage_depth(fields: dict[str, Any]) -> int:
    """How many generations of synthetic data a seed row is from human data: its `lineage_depth`
    when it records one (a synthkiln row), else 1 for a row whose `source` is "synthetic", else 0."""
    depth = fields.get("lineage_depth")
    if depth is None:
        return 1 if fields.get("source") == "synthetic" else 0
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise SeedRowError(f"field 'lineage_depth' holds {depth!r}, not a generation count (an integer >= 0)")
    return depth


def _pick(options: list[str], rotation: int) -> str | None:
    return options[rotation % len(options)] if options else None
