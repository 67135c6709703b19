"""Stages: each takes an Arrow record batch and splits it into kept and rejected rows.

A stage does one thing and knows nothing of its neighbours; the pipeline wires them in order. This
package holds the interface (`base`), the cheap filters and one module per heavier stage; here, the
stages a recipe asks for, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from synthkiln.engine.config import Recipe
from synthkiln.engine.stages.base import FilterStage, Stage, StageStats, set_column
from synthkiln.engine.stages.filters import (
    EmptyResponse,
    FirstPerPrompt,
    ReferenceAnswer,
    Refusal,
    ResponseLength,
    Unterminated,
)

__all__ = ["FilterStage", "Stage", "StageStats", "default_prompt_stages", "default_stages", "set_column"]


def default_stages(recipe: Recipe, served_teacher: Callable[[str], Any] | None = None) -> list[Stage]:
    """The stages a recipe asks for, cheapest first. `served_teacher(label)` gives the pipeline's
    driver of a recipe teacher, which model-judging verifiers share (see `build_verifier`)."""
    filters = recipe.filters
    stages: list[Stage] = [EmptyResponse()]
    if filters.unterminated:
        stages.append(Unterminated())
    stages.append(ResponseLength(filters.min_words, filters.max_words))
    if filters.refusal:
        stages.append(Refusal())
    if recipe.task.kind == "reasoning" and recipe.task.answer_field:
        stages.append(ReferenceAnswer())
    if recipe.decontaminate.benchmarks:
        from synthkiln.engine.stages.decontam import ContaminationIndex, Decontaminate

        index = ContaminationIndex.for_config(recipe.decontaminate)
        stages.append(Decontaminate(index, recipe.decontaminate.text_field))
    if recipe.verify.verifiers:
        from synthkiln.engine.stages.verify import ServedTeachers, Verify

        served = None
        if served_teacher is not None:
            served = ServedTeachers([t.label for t in recipe.teachers], served_teacher)
        stages.append(Verify.from_config(recipe.verify, served, recipe.executor))
    if recipe.diversity.min_novelty is not None:
        from synthkiln.engine.stages.novelty import Novelty

        stages.append(Novelty(recipe.diversity.min_novelty, recipe.diversity.novelty_ngram))
    if recipe.generation.keep == "first":
        stages.append(FirstPerPrompt())
    if recipe.dedup.enabled:  # last: its index must hold exactly the accepted rows
        from synthkiln.engine.stages.dedup import NearDuplicates

        dedup = recipe.dedup
        stages.append(NearDuplicates(dedup.threshold, dedup.num_perm, dedup.ngram, dedup.text_field, dedup.backend,
                                     dedup.against))  # fmt: skip
    return stages


def default_prompt_stages(recipe: Recipe) -> list[Stage]:
    """Stages run on rendered prompts (column `prompt`) before generation: the teacher never sees a
    benchmark item."""
    config = recipe.decontaminate
    if not (config.benchmarks and config.seeds):
        return []
    from synthkiln.engine.stages.decontam import ContaminationIndex, Decontaminate

    return [Decontaminate(ContaminationIndex.for_config(config), text_field="prompt")]
