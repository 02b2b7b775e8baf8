"""st-serve: an inference server for folders exported by st-export, torch-free, with dynamic batching across requests.

OpenAI-compatible `/v1/embeddings` and `/v1/models`, TEI-compatible `/embed`, `/embed_sparse`, `/rerank`, `/predict`,
`/tokenize`, `/info`, `/health`, and Prometheus `/metrics`. Needs the serve extra: pip install "st-runtime[serve]".
The runtime core never imports this package.
"""

from __future__ import annotations

try:
    import orjson  # noqa: F401
    import prometheus_client  # noqa: F401
    import pydantic  # noqa: F401
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(f"st_runtime.serve needs the serve extra ({exc.name} is missing): "
                      'pip install "st-runtime[serve]"') from exc

from st_runtime.serve.app import ModelConfig, ServeConfig, create_app
from st_runtime.serve.batcher import BatchLimits

__all__ = ["BatchLimits", "ModelConfig", "ServeConfig", "create_app"]
