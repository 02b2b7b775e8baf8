"""What a server adds to one request at concurrency 1, for docs/perf/serve.md: one-query `POST /v1/embeddings` to
each server given, and a direct `st_runtime` encode of the same query in this process, in short blocks of requests
taking turns (the order rotating), so that the host's drift hits every column alike. Prints each column's p50 and
the median over rounds of (a server's block p50 minus the direct block p50 of the same round).

Blocks rather than single requests: onnxruntime's threads keep spinning for a while after a run, so a request
right after another process's run would measure that contention, which a server alone at concurrency 1 never sees.

    st-serve /tmp/serve-minilm --port 18777 --threads 2 &
    python -m bench.floor_server /tmp/serve-minilm --port 18779 --threads 2 &
    .venv/bin/python scripts/serve_overhead.py --folder /tmp/serve-minilm --server st-serve=18777 --server floor=18779
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.serve import QUERIES, Connection, run_async

WARMUP = 30


async def interleaved(folder: Path, servers: dict[str, int], threads: int, rounds: int, block: int) -> dict[str, Any]:
    import st_runtime

    model = st_runtime.SentenceTransformer(folder, intra_op_num_threads=threads)
    connections = {name: Connection("127.0.0.1", port) for name, port in servers.items()}

    async def timed(name: str, text: str) -> float:
        start = time.perf_counter()
        if name == "direct":
            model.encode([text])
        else:
            status, answer = await connections[name].post("/v1/embeddings", {"model": folder.name, "input": [text]})
            if status != 200:
                raise RuntimeError(f"{name} answered {status}: {answer[:200]!r}")
        return time.perf_counter() - start

    names = [*servers, "direct"]
    for i in range(WARMUP):
        for name in names:
            await timed(name, QUERIES[i % len(QUERIES)])
    p50s: dict[str, list[float]] = {name: [] for name in names}
    try:
        for r in range(rounds):
            for k in range(len(names)):
                name = names[(r + k) % len(names)]
                times = [await timed(name, QUERIES[i % len(QUERIES)]) for i in range(block)]
                p50s[name].append(float(np.median(times)) * 1e3)
    finally:
        for connection in connections.values():
            connection.close()
    direct = np.array(p50s["direct"])
    result = {f"{name}_p50_ms": round(float(np.median(values)), 3) for name, values in p50s.items()}
    result |= {f"{name}_minus_direct_ms": round(float(np.median(np.array(p50s[name]) - direct)), 3) for name in servers}
    result |= {f"{name}_minus_direct_by_round_ms": [round(float(v), 2) for v in np.array(p50s[name]) - direct]
               for name in servers}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, required=True, help="the folder the servers serve (model name = its name)")
    parser.add_argument("--server", action="append", required=True, metavar="NAME=PORT",
                        help="a server on 127.0.0.1 (repeat)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads of the direct encode")
    parser.add_argument("--rounds", type=int, default=12, help="blocks per server (and of direct encodes)")
    parser.add_argument("--block", type=int, default=50, help="requests per block")
    args = parser.parse_args()
    servers = {name: int(port) for name, port in (item.split("=", 1) for item in args.server)}
    print(json.dumps(run_async(interleaved(args.folder, servers, args.threads, args.rounds, args.block))))


if __name__ == "__main__":
    main()
