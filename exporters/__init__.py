"""exporters: turn a sentence-transformers model into a self-contained folder that st_runtime runs.

Needs the export extra (torch, sentence-transformers, transformers, onnx). One module per model kind (bi_encoder,
cross_encoder, sparse_encoder, multi_vector) registered in kinds.py; the data path from `export` to the folder, the
folder contract, and how to add a kind or a variant: docs/architecture.md.
"""

from __future__ import annotations

import importlib.util

_MISSING = [name for name in ("torch", "sentence_transformers", "transformers", "onnx") if importlib.util.find_spec(name) is None]
if _MISSING:
    raise ImportError(
        f"exporters needs the export extra ({', '.join(_MISSING)} not installed): pip install 'st-runtime[export]'"
    )

from exporters.api import export  # noqa: E402
from exporters.errors import (  # noqa: E402
    ExportError,
    ModelLoadError,
    OutputExistsError,
    OutputLocationError,
    ParityError,
    UnsupportedModelError,
)

__all__ = ["ExportError", "ModelLoadError", "OutputExistsError", "OutputLocationError", "ParityError",
           "UnsupportedModelError", "export"]
