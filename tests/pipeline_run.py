"""Run a recipe given as text: the end-to-end tests' module fixtures."""

from __future__ import annotations

from pathlib import Path

from engine.graph import Pipeline
from engine.recipe import load_recipe


def run_recipe_text(tmp: Path, text: str) -> Pipeline:
    """Write ``text`` as a recipe under ``tmp``, run every stage with its runs there, and return
    the finished pipeline."""
    recipe = tmp / "tiny.yaml"
    recipe.write_text(text)
    pipeline = Pipeline(load_recipe(recipe, [f"workdir={tmp / 'runs'}"]))
    report = pipeline.run()
    assert report.ok, report.failed
    return pipeline
