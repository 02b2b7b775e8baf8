"""Errors of the quantizers."""

from __future__ import annotations

from st_runtime.errors import StRuntimeError


class QuantizationError(StRuntimeError, ValueError):
    """A variant cannot be produced (unsupported model, name clash without overwrite, ...)."""


class AccuracyError(QuantizationError):
    """A variant falls below the required accuracy; nothing was written."""
