"""Errors raised by st_runtime and the exporters.

Every error also inherits the builtin a caller would naturally catch (ValueError, TypeError, ...), so
`except ValueError` keeps working for code migrated from sentence-transformers.
"""

from __future__ import annotations


class StRuntimeError(Exception):
    """Base class of every error this project raises on purpose."""


class ManifestError(StRuntimeError, ValueError):
    """The folder has no manifest, or the manifest is unreadable or of an unknown format version."""


class ModelFileError(StRuntimeError, ValueError):
    """A file the manifest lists is missing, truncated or does not match its recorded sha256."""


class InvalidInputError(StRuntimeError, TypeError, ValueError):
    """An argument to encode/predict is of the wrong type or value (a TypeError and a ValueError, so either
    `except` that sentence-transformers code uses catches it)."""


class ProviderError(StRuntimeError, RuntimeError):
    """A requested execution provider is not available in this onnxruntime build."""
