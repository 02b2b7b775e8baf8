"""exporters: turn a sentence-transformers model into a self-contained folder that st_runtime runs.

Needs the export extra (torch, sentence-transformers, transformers, onnx). One module per model kind (bi_encoder,
cross_encoder, sparse_encoder, multi_vector) registered in kinds.py; the data path from `export` to the folder, the
folder contract, and how to add a kind or a variant: docs/architecture.md.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from exporters.errors import (
    ExportError,
    ModelLoadError,
    OutputExistsError,
    OutputLocationError,
    ParityError,
    UnsupportedModelError,
)

__all__ = ["ExportError", "ModelLoadError", "OutputExistsError", "OutputLocationError", "ParityError",
           "UnsupportedModelError", "export", "require_export_extra"]


def require_export_extra() -> None:
    """Raise one ImportError naming the extra to install when torch, sentence-transformers, transformers or onnx is
    missing (st-export turns it into its one error line)."""
    missing = [name for name in ("torch", "sentence_transformers", "transformers", "onnx")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"exporters needs the export extra ({', '.join(missing)} not installed): "
                          "pip install 'st-runtime[export]'")


def __getattr__(name: str) -> Any:
    if name == "export":  # imported on first use, so that `st-export` without torch can say so in one line
        require_export_extra()
        from exporters.api import export

        return export
    raise AttributeError(f"module 'exporters' has no attribute {name!r}")
