"""Errors of the model zoo; each also inherits the builtin a caller would catch."""

from __future__ import annotations

from st_runtime.errors import StRuntimeError


class ZooError(StRuntimeError):
    """Base class of the zoo's errors."""


class RecipeError(ZooError, ValueError):
    """A recipe file is malformed; the message names the file and the field."""


class UnknownRecipeError(ZooError, LookupError):
    """No recipe has this name; the message lists the known ones."""


class SourceNotFoundError(ZooError, FileNotFoundError):
    """None of a recipe's sources is present on this machine; the message says where to put the weights."""


class SourceIntegrityError(ZooError, ValueError):
    """A source is present but corrupt, partial or of another version (sha256 mismatch, missing or truncated file)."""


class ModelMismatchError(ZooError, ValueError):
    """The source holds another model than the recipe describes (kind, architecture or dimension)."""


class FloorError(ZooError, ValueError):
    """A variant's accuracy score is below the recipe's floor for it."""


class UnknownVariantError(ZooError, ValueError):
    """A variant was asked for that the recipe does not build; the message lists those it does."""
