"""Errors of the exporter; each also inherits the builtin a caller would catch."""

from __future__ import annotations

from st_runtime.errors import StRuntimeError


class ExportError(StRuntimeError):
    """The model could not be exported."""


class UnsupportedModelError(ExportError, ValueError):
    """The model, or one of its modules, has no in-graph export."""


class ParityError(ExportError, ValueError):
    """The exported graph's outputs differ from sentence-transformers' beyond the tolerance."""


class OutputExistsError(ExportError, FileExistsError):
    """The output folder exists and --overwrite was not given (or it is not an st-export folder)."""


class ModelLoadError(ExportError, OSError):
    """The source model could not be found or loaded."""


class OutputLocationError(ExportError, OSError):
    """The output folder cannot be written where it was asked for (under a file, read-only, disk full)."""


class InvalidArgumentError(ExportError, ValueError):
    """An argument, or a file it names (--calibration), is unusable."""


class GraphExportError(ExportError, RuntimeError):
    """Tracing or saving the graph failed in a way st-export did not foresee (named by module and architecture)."""
