"""`edgecompress compress`: recipe in, bundle out."""

from edgecompress.pipeline.compress import run_compress
from edgecompress.pipeline.recipe import Recipe, load_recipe, recipe_from_dict

__all__ = ["Recipe", "load_recipe", "recipe_from_dict", "run_compress"]
