"""Errors raised by st_runtime and the exporters.

Every error also inherits the builtin a caller would naturally catch (ValueError, TypeError, ...), so
`except ValueError` keeps working for code migrated from sentence-transformers. Every error the project raises on
purpose derives from StRuntimeError; `run_cli` is the one boundary that turns them into an `error:` line and exit 1.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable


class StRuntimeError(Exception):
    """Base class of every error this project raises on purpose."""


class ManifestError(StRuntimeError, ValueError):
    """The folder has no manifest, or the manifest is unreadable or of an unknown format version."""


class ModelFileError(StRuntimeError, ValueError):
    """A file the manifest lists is missing, truncated or does not match its recorded sha256."""


class InvalidInputError(StRuntimeError, TypeError, ValueError):
    """An argument to encode/predict is of the wrong type or value (a TypeError and a ValueError, so either
    `except` that sentence-transformers code uses catches it)."""


class UncutTextError(InvalidInputError):
    """Texts whose parts that must be tokenized whole (no exact cut found) are longer together than a caller's bound
    (a server's cost per request)."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


class ProviderError(StRuntimeError, RuntimeError):
    """A requested execution provider is not available in this onnxruntime build."""


class ArgumentError(StRuntimeError, ValueError):
    """A command-line value that argparse cannot check (a folder that is not an export, a limit out of range)."""


# --- the one error boundary of every console script (st-export, st-bench, st-zoo, st-serve, st-embed) --------------

DEBUG_ENV = "ST_RUNTIME_DEBUG"
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C

# What a command reports as one line: the project's own errors, and the failures of the machine it runs on rather than
# of the code (a missing optional extra, a full disk, a read-only or missing path). Anything else is a bug: the
# traceback shows, as it should.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (StRuntimeError, ImportError, OSError)


def debug_enabled() -> bool:
    """ST_RUNTIME_DEBUG=1: the boundary prints the traceback above the error line."""
    return os.environ.get(DEBUG_ENV) == "1"


def one_line(exc: BaseException) -> str:
    """The error's message on one line (some library messages span several); its type name when it has none."""
    return " ".join(str(exc).split()) or type(exc).__name__


def run_cli(prog: str, body: Callable[[], int | None], *,
            expected: tuple[type[BaseException], ...] = EXPECTED_ERRORS) -> int:
    """Run a console script's `body` behind the project's one error boundary and return the exit code.

    `body()`'s own return value is the exit code (None: 0). An expected error (`expected`: StRuntimeError and the
    machine's ImportError/OSError unless the command adds more) becomes one line `PROG: error: MESSAGE` on stderr and
    exit 1; Ctrl-C becomes `PROG: interrupted` and exit 130. With ST_RUNTIME_DEBUG=1 the traceback is printed above
    that line (same exit code). Any other exception is a bug and propagates with its traceback.
    """
    try:
        code = body()
    except KeyboardInterrupt:
        if debug_enabled():
            traceback.print_exc()
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except expected as exc:
        if debug_enabled():
            traceback.print_exc()
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    return 0 if code is None else code
