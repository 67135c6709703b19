"""Orchestration: recipes, teachers, tasks, stages, the pipeline and the dataset writer."""

from synthkiln.engine.config import Recipe, load_recipe
from synthkiln.engine.errors import SynthkilnError
from synthkiln.engine.pipeline import Pipeline

__all__ = ["Pipeline", "Recipe", "SynthkilnError", "load_recipe"]
