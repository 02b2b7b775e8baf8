"""models_zoo: named recipes that export pretrained sentence-transformers models offline (a local folder, the
Hugging Face cache, or pip packages that ship the weights; checksums verified), build their variants, check
each against its accuracy floor, and record the validated results.

Importing it is light (no torch); `build` imports the exporters when it runs.
"""

from models_zoo.build import BuildReport, build, resolve_for_export
from models_zoo.errors import (
    FloorError,
    ModelMismatchError,
    RecipeError,
    SourceIntegrityError,
    SourceNotFoundError,
    UnknownRecipeError,
    UnknownVariantError,
    ZooError,
)
from models_zoo.recipe import Recipe, VariantSpec, find_recipe, get_recipe, load_recipe, load_recipes
from models_zoo.results import markdown_table, read_results
from models_zoo.sources import Resolved, cache_dir, resolve

__all__ = [
    "BuildReport",
    "FloorError",
    "ModelMismatchError",
    "Recipe",
    "RecipeError",
    "Resolved",
    "SourceIntegrityError",
    "SourceNotFoundError",
    "UnknownRecipeError",
    "UnknownVariantError",
    "VariantSpec",
    "ZooError",
    "build",
    "cache_dir",
    "find_recipe",
    "get_recipe",
    "load_recipe",
    "load_recipes",
    "markdown_table",
    "read_results",
    "resolve",
    "resolve_for_export",
]
