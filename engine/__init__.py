"""Orchestration: recipes, teachers, tasks, stages, the pipeline and the dataset writer.

`Pipeline`, `Recipe` and `load_recipe` are imported on first use: a corpus command (and every Ray
worker running its tasks) imports this package without paying for the pipeline's modules."""

from typing import Any

from synthkiln.engine.errors import SynthkilnError

__all__ = ["Pipeline", "Recipe", "SynthkilnError", "load_recipe"]


def __getattr__(name: str) -> Any:
    if name == "Pipeline":
        from synthkiln.engine.pipeline import Pipeline

        return Pipeline
    if name in ("Recipe", "load_recipe"):
        from synthkiln.engine import config

        return getattr(config, name)
    raise AttributeError(f"module 'synthkiln.engine' has no attribute {name!r}")
