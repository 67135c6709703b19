from __future__ import annotations

import pytest

from synthkiln.engine.config import AugmentationTask, DomainTask, InstructionTask, ReasoningTask
from synthkiln.engine.errors import RecipeError
from synthkiln.engine.seeds import SeedRow
from synthkiln.engine.tasks import ResponseParseError, SeedRowError, build_task, parse_transcript


def seed(**fields) -> SeedRow:
    return SeedRow("seeds.jsonl", 1, fields)


def test_instruction_rotation_and_stable_ids() -> None:
    task = build_task(
        InstructionTask(
            kind="instruction", personas=["a chef", "a pilot"], formats=["a list"], prompts_per_seed=2
        )
    )
    prompts = task.prompts(seed(instruction="Describe bread."), ordinal=0)
    assert [p.persona for p in prompts] == ["a chef", "a pilot"]
    assert "a chef" in prompts[0].messages[-1]["content"]
    assert "Describe bread." in prompts[0].messages[-1]["content"]
    assert prompts[0].prompt_id != prompts[1].prompt_id
    again = build_task(
        InstructionTask(
            kind="instruction", personas=["a chef", "a pilot"], formats=["a list"], prompts_per_seed=2
        )
    ).prompts(seed(instruction="Describe bread."), ordinal=0)
    assert [p.prompt_id for p in again] == [p.prompt_id for p in prompts]


def test_template_override_changes_hash_and_missing_slot_is_a_seed_error() -> None:
    builtin = build_task(InstructionTask(kind="instruction"))
    custom = build_task(InstructionTask(kind="instruction", template="Q: {{ instruction }} ({{ level }})"))
    assert builtin.template_hash != custom.template_hash
    with pytest.raises(SeedRowError, match="'level' is undefined"):
        custom.prompts(seed(instruction="hi"), 0)
    with pytest.raises(SeedRowError, match="field 'instruction' is missing"):
        builtin.prompts(seed(question="hi"), 0)
    with pytest.raises(RecipeError, match="task template"):
        build_task(InstructionTask(kind="instruction", template="{% if %}"))


def test_reasoning_reference_from_gsm8k_answer_and_answer_extraction() -> None:
    task = build_task(ReasoningTask(kind="reasoning"))
    (prompt,) = task.prompts(seed(question="What is 2+3?", answer="2+3=5\n#### 5"), 0)
    assert prompt.reference == "5"
    assert "working backwards" in prompt.messages[-1]["content"]
    fields = task.sample_fields(prompt, "2 plus 3 is 5. Check: 5-3=2.\nThe answer is: 5")
    assert fields.answer == "5"
    assert fields.messages[-1] == {"role": "assistant", "content": fields.response}
    with pytest.raises(SeedRowError, match="no final answer"):
        task.prompts(seed(question="q", answer="unknown"), 0)


def test_augmentation_one_prompt_per_variant() -> None:
    task = build_task(
        AugmentationTask(kind="augmentation", variants=["paraphrase", "translate"], language="German")
    )
    prompts = task.prompts(seed(text="Cats sleep a lot.", lineage_depth=1), 0)
    assert [p.variant for p in prompts] == ["paraphrase", "translate"]
    assert "German" in prompts[1].messages[-1]["content"]
    assert all(p.lineage_depth == 2 for p in prompts)


def test_domain_slots_and_constraints() -> None:
    task = build_task(
        DomainTask(
            kind="domain",
            domain="clinical",
            template="Write a clinical note for a {{ age }}-year-old with {{ condition }}.",
            constraints=["no patient names"],
            system="You are a physician.",
        )
    )
    (prompt,) = task.prompts(seed(age=54, condition="asthma"), 0)
    assert prompt.messages[0] == {"role": "system", "content": "You are a physician."}
    assert "54-year-old with asthma" in prompt.messages[1]["content"]
    assert "- no patient names" in prompt.messages[1]["content"]
    assert prompt.domain == "clinical"


def test_multi_turn_transcript_parsing() -> None:
    task = build_task(InstructionTask(kind="instruction", from_topic=True, turns=2))
    (prompt,) = task.prompts(seed(instruction="volcanoes"), 0)
    text = "User: What is lava?\nAssistant: Molten rock.\nIt is hot.\nUser: Where?\nAssistant: In volcanoes.\nUser: more"
    fields = task.sample_fields(prompt, text)
    assert [m["role"] for m in fields.messages] == ["user", "assistant", "user", "assistant"]
    assert fields.messages[1]["content"] == "Molten rock.\nIt is hot."
    assert fields.response == "In volcanoes."
    with pytest.raises(ResponseParseError):
        parse_transcript("Just an essay about volcanoes.")
