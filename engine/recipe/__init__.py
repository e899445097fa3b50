"""The recipe: its schema (`schema`) and how a file becomes a validated recipe (`loading`)."""

from .loading import LoadedRecipe, apply_overrides, load_recipe, parse_override
from .schema import Recipe, recipe_schema

__all__ = ["LoadedRecipe", "Recipe", "apply_overrides", "load_recipe", "parse_override", "recipe_schema"]
