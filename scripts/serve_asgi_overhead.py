"""What st-serve's own code adds to one request, without the network, for docs/perf/serve.md: its ASGI app and the
bare floor app (bench/floor_server.py) called in this process on one `POST /v1/embeddings` of one query, request by
request with a direct `encode` of the same query (all on the same model), each after a 5 ms pause (as a request at
concurrency 1 finds the machine: caches cold after the client's turn). Paired differences against the direct encode
of the same round cancel the host's drift, which the HTTP measurements (scripts/serve_overhead.py) cannot.

Rows: `event loop` (st-serve as it runs a lone request), `queued` (the same request through the batcher's thread), and
`queued, no count` (the batcher without its token count: what the second tokenization costs).

    .venv/bin/python scripts/serve_asgi_overhead.py --folder /tmp/serve-minilm --rounds 400
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.floor_server import make_app
from bench.serve import QUERIES, run_async
from st_runtime.serve.app import ModelConfig, ServeConfig, Server, create_app

PAUSE = 0.005


async def post(app: Any, body: bytes) -> int:
    """One POST through an ASGI app; the status it answered."""
    scope = {"type": "http", "method": "POST", "path": "/v1/embeddings",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # never disconnects
        return {}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"]


async def measure(folder: Path, threads: int, rounds: int) -> dict[str, Any]:
    app = create_app(ServeConfig(models=(ModelConfig(folder.name, str(folder)),), threads=threads))
    served = app.server.models[folder.name]
    model, batcher, floor = served.model, served.batcher, make_app(served.model)
    alone, count = Server._alone, batcher._count

    def queued(server: Server, *args: Any) -> bool:
        return False

    setups = {
        "event loop": lambda: None,
        "queued": lambda: setattr(Server, "_alone", queued),
        "queued, no count": lambda: (setattr(Server, "_alone", queued),
                                     setattr(batcher, "_count", lambda key, items, options: np.ones(len(items), int))),
    }
    times: dict[str, list[float]] = {name: [] for name in ["direct", "floor", *setups]}
    try:
        for i in range(30 + rounds):
            text = QUERIES[i % len(QUERIES)]
            body = json.dumps({"model": folder.name, "input": [text]}).encode()
            took: dict[str, float] = {}
            await asyncio.sleep(PAUSE)
            start = time.perf_counter()
            model.encode([text])
            took["direct"] = time.perf_counter() - start
            for name, app_ in [("floor", floor), *((n, app) for n in setups)]:
                Server._alone, batcher._count = alone, count
                if name in setups:
                    setups[name]()
                await asyncio.sleep(PAUSE)
                start = time.perf_counter()
                if await post(app_, body) != 200:
                    raise RuntimeError(f"{name}: the request failed")
                took[name] = time.perf_counter() - start
            if i >= 30:
                for name, seconds in took.items():
                    times[name].append(seconds)
    finally:
        Server._alone, batcher._count = alone, count
        app.server.stop()
    ms = {name: np.array(values) * 1e3 for name, values in times.items()}
    return {"direct_p50_ms": round(float(np.median(ms["direct"])), 3),
            **{f"{name} minus direct, ms": round(float(np.median(ms[name] - ms["direct"])), 3)
               for name in ms if name != "direct"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, required=True, help="a sentence-embedding folder written by st-export")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=400)
    args = parser.parse_args()
    print(json.dumps(run_async(measure(args.folder, args.threads, args.rounds))))


if __name__ == "__main__":
    main()
