"""Load benchmark of st-serve against a naive server (sentence-transformers `encode` per request behind starlette,
bench/naive_server.py) and, when given, infinity-emb: throughput and p50/p95/p99 latency at several concurrencies,
with short queries and with documents. Loopback only; every cell is bounded in requests and in seconds.

    python -m bench.serve --folder EXPORTED --source ST_FOLDER [--threads 2] [--infinity /tmp/infinity-venv/bin]

Each server runs alone (started, measured, stopped) on the same threads; the load generator (asyncio, one keep-alive
connection per client) runs in this process on the same machine, so the numbers include its cost too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

QUERIES = ["how do I reset my password", "capital of france", "best pasta recipe with tomatoes",
           "what is the speed of light", "cheap flights to tokyo in may", "symptoms of the flu",
           "python sort a list of dicts by key", "who wrote the odyssey"]
DOCUMENT = ("The history of the city begins with a small fishing village on the river delta. Over the centuries it grew "
            "into a trading port, then an industrial center whose factories drew workers from the whole region. ")


def documents(n: int = 16) -> list[str]:
    """Paragraphs of roughly 200 tokens, each a little different."""
    return [f"Chapter {i}. " + DOCUMENT * 4 + f"It is known for its {i}th bridge." for i in range(n)]


@dataclass(frozen=True)
class ServerSpec:
    """One server to measure: which kind (--servers), how to start it, where it answers."""

    kind: str  # "st-serve", "naive" or "infinity"
    command: list[str]
    port: int
    path: str  # the embeddings endpoint
    env: dict[str, str] = field(default_factory=dict)
    variant: str | None = None  # st-serve's --variant


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], port: int, timeout: float = 180.0, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a server and wait (bounded) for its /health."""
    import httpx

    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-serve-{port}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{command[0]} exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"{command[0]} did not answer /health within {timeout:.0f} s; see {log.name}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Connection:
    """A minimal HTTP/1.1 keep-alive client on one socket: far cheaper per request than httpx, so that the load
    generator, which shares the machine with the server, costs little (answers must carry Content-Length)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, payload: Any) -> tuple[int, bytes]:
        """POST JSON; a kept-alive connection the server closed meanwhile (idle timeout) is reopened once."""
        return await self.request("POST", path, json.dumps(payload).encode())

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is not None:
            try:
                return await self._exchange(method, path, body)
            except (asyncio.IncompleteReadError, ConnectionError):
                self.close()
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return await self._exchange(method, path, body)

    async def _exchange(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), None)
        if length is None:
            raise RuntimeError(f"no Content-Length in the answer: {head[:200]!r}")
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def load(url: str, model: str, texts: list[str], concurrency: int, max_requests: int, max_seconds: float,
               path: str = "/v1/embeddings") -> dict[str, float]:
    """`concurrency` clients (one keep-alive connection each) send one text per request until max_requests are done
    or max_seconds have passed."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    sent = 0
    stop_at = time.monotonic() + max_seconds

    async def client(worker: int) -> None:
        nonlocal sent, warmed
        connection = Connection(host, int(port))
        try:
            await connection.post(path, {"model": model, "input": texts[:1]})  # connect and warm up, not timed
            warmed += 1
            if warmed == concurrency:
                all_warm.set()
            await ready.wait()
            while sent < max_requests and time.monotonic() < stop_at:
                text = texts[(sent + worker) % len(texts)]
                sent += 1
                start = time.perf_counter()
                status, body = await connection.post(path, {"model": model, "input": [text]})
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    raise RuntimeError(f"{url}{path} answered {status}: {body[:200]!r}")
        finally:
            connection.close()

    ready, all_warm, warmed = asyncio.Event(), asyncio.Event(), 0
    tasks = [asyncio.ensure_future(client(w)) for w in range(concurrency)]
    await asyncio.wait_for(all_warm.wait(), max_seconds + 180)  # every client connected and warmed up: start the clock
    ready.set()
    begin = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*tasks), max_seconds + 180)
    elapsed = time.perf_counter() - begin
    ms = np.array(latencies) * 1e3
    return {"requests": len(latencies), "seconds": round(elapsed, 2), "req_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def run_async(coroutine: Any) -> Any:
    """Run the load generator on uvloop where installed (the serve extra has it): the client shares the machine, and
    costs less per request there, for every server alike."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def direct_latency(folder: str, threads: int, texts: list[str], n: int = 200, variant: str | None = None) -> float:
    """p50 ms of st_runtime encode on one text, in this process: the floor a server adds its overhead to."""
    import st_runtime

    model = st_runtime.SentenceTransformer(folder, intra_op_num_threads=threads, variant=variant)
    model.encode(texts[:1])
    times = []
    for i in range(n):
        start = time.perf_counter()
        model.encode([texts[i % len(texts)]])
        times.append(time.perf_counter() - start)
    return round(float(np.percentile(np.array(times) * 1e3, 50)), 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", required=True, help="exported folder (st-export) for st-serve")
    parser.add_argument("--source", help="sentence-transformers folder for the naive server (skipped when absent)")
    parser.add_argument("--threads", type=int, default=2, help="inference threads of every server (default 2)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--max-requests", type=int, default=400, help="requests per cell at most (default 400)")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="seconds per cell at most (default 20)")
    parser.add_argument("--infinity", help="bin folder of a venv with infinity-emb (its infinity_emb command)")
    parser.add_argument("--servers", nargs="+", default=["st-serve", "naive", "infinity"])
    parser.add_argument("--workloads", nargs="+", default=["queries", "documents"], choices=["queries", "documents"])
    parser.add_argument("--serve-args", default="", help="more st-serve flags, e.g. '--max-batch-tokens 4096'")
    parser.add_argument("--variants", nargs="+", default=[],
                        help="st-serve once per variant of the folder (rows 'st-serve (VARIANT)'); default: its default")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)

    workloads = {name: texts for name, texts in (("queries", QUERIES), ("documents", documents()))
                 if name in args.workloads}
    python = sys.executable
    servers: dict[str, ServerSpec] = {}  # by row label
    for variant in args.variants or [None]:
        port = free_port()
        servers["st-serve" if variant is None else f"st-serve ({variant})"] = ServerSpec(
            "st-serve", [python, "-m", "st_runtime.serve.cli", args.folder, "--name", "m", "--port", str(port),
                         "--threads", str(args.threads), "--log-level", "warning",
                         *(["--variant", variant] if variant else []), *args.serve_args.split()],
            port, "/v1/embeddings", variant=variant)
    if args.source:
        port = free_port()
        servers["naive"] = ServerSpec("naive", [python, "-m", "bench.naive_server", args.source, "--port", str(port),
                                                "--threads", str(args.threads)], port, "/v1/embeddings")
    if args.infinity and args.source:
        port = free_port()
        servers["infinity"] = ServerSpec(
            "infinity", [str(Path(args.infinity) / "infinity_emb"), "v2", "--model-id", args.source,
                         "--served-model-name", "m", "--port", str(port), "--host", "127.0.0.1", "--device", "cpu",
                         "--engine", "torch", "--no-model-warmup"], port, "/embeddings",
            env={"OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"})
    results: dict[str, Any] = {"threads": args.threads, "serve_args": args.serve_args, "variants": args.variants,
                               "direct_p50_ms": {}, "cells": []}
    for name, texts in workloads.items():
        results["direct_p50_ms"][name] = direct_latency(args.folder, args.threads, texts)
        print(f"direct st_runtime encode, {name}: p50 {results['direct_p50_ms'][name]} ms", flush=True)
    for server, spec in servers.items():
        if spec.kind not in args.servers:
            continue
        url = f"http://127.0.0.1:{spec.port}"
        try:
            proc = start(spec.command, spec.port, env=spec.env)
        except (RuntimeError, OSError) as exc:
            print(f"{server}: not measured ({exc})", flush=True)
            results["cells"].append({"server": server, "error": str(exc)})
            continue
        try:
            for workload, texts in workloads.items():
                for concurrency in args.concurrency:
                    cell = run_async(load(url, "m", texts, concurrency, args.max_requests, args.max_seconds,
                                          spec.path))
                    cell = {"server": server, "workload": workload, "concurrency": concurrency, **cell}
                    if concurrency == 1 and spec.kind == "st-serve":  # its direct encode right after (drift)
                        cell["direct_p50_ms"] = direct_latency(args.folder, args.threads, texts, variant=spec.variant)
                    results["cells"].append(cell)
                    print(json.dumps(cell), flush=True)
        finally:
            stop(proc)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return 0


def markdown(results: dict[str, Any]) -> str:
    """The cells as a markdown table, workload and concurrency first."""
    lines = ["| workload | concurrency | server | requests | req/s | p50 ms | p95 ms | p99 ms | direct encode p50 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    cells = sorted((c for c in results["cells"] if "error" not in c),
                   key=lambda c: (c["workload"] != "queries", c["concurrency"]))
    for c in cells:
        direct = f"{c['direct_p50_ms']:.2f}" if "direct_p50_ms" in c else ""
        lines.append(f"| {c['workload']} | {c['concurrency']} | {c['server']} | {c['requests']} | {c['req_per_s']} | "
                     f"{c['p50_ms']:.1f} | {c['p95_ms']:.1f} | {c['p99_ms']:.1f} | {direct} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
