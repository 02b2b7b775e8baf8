"""What st-serve adds to one request at concurrency 1, for docs/perf/serve.md: p50 of `GET /health` (the bare HTTP
round trip through uvicorn and starlette), of `POST /tokenize` (plus validation and a thread hop, no model), of
`POST /v1/embeddings` with one short query, and of a direct `st_runtime` encode of the same query in this process.

    st-serve /tmp/serve-minilm --port 18777 --threads 2 &
    .venv/bin/python scripts/serve_overhead.py --port 18777 --folder /tmp/serve-minilm
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.serve import QUERIES, Connection, direct_latency

ROUNDS, WARMUP = 400, 30


def p50_ms(times: list[float]) -> float:
    return round(float(np.percentile(np.array(times) * 1e3, 50)), 3)


async def endpoint_p50(port: int, path: str, body: Callable[[str], dict[str, Any]] | None) -> float:
    """p50 ms of ROUNDS requests on one keep-alive connection: POST of body(query), or GET without a body."""
    connection = Connection("127.0.0.1", port)

    def call(i: int) -> Any:
        text = QUERIES[i % len(QUERIES)]
        return connection.request("GET", path) if body is None else connection.post(path, body(text))

    try:
        for i in range(WARMUP):
            await call(i)
        times = []
        for i in range(ROUNDS):
            start = time.perf_counter()
            status, answer = await call(i)
            times.append(time.perf_counter() - start)
            if status != 200:
                raise RuntimeError(f"{path} answered {status}: {answer[:200]!r}")
        return p50_ms(times)
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--folder", type=Path, required=True, help="the folder st-serve serves (model name = its name)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model = args.folder.name
    result = {
        "health_p50_ms": asyncio.run(endpoint_p50(args.port, "/health", None)),
        "tokenize_p50_ms": asyncio.run(endpoint_p50(args.port, "/tokenize", lambda t: {"inputs": t})),
        "embeddings_p50_ms": asyncio.run(endpoint_p50(args.port, "/v1/embeddings",
                                                      lambda t: {"model": model, "input": [t]})),
        "direct_encode_p50_ms": direct_latency(str(args.folder), args.threads, QUERIES, ROUNDS),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
