"""`st-serve`: serve exported folders over HTTP (OpenAI and TEI APIs), torch-free, with batching across requests.

    st-export sentence-transformers/all-MiniLM-L6-v2 -o minilm
    st-serve minilm --port 8080
    curl -s localhost:8080/v1/embeddings -H 'Content-Type: application/json' -d '{"model": "minilm", "input": "hi"}'
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import resource
import signal
import sys
from pathlib import Path

EXAMPLES = """examples:
  st-serve minilm                                   one model, named after its folder, on 127.0.0.1:8080
  st-serve minilm reranker --name embed --name rerank --port 9000
  st-serve minilm --variant qint8_avx512_vnni --threads 4 --max-batch-tokens 8192
  ST_SERVE_API_KEY=secret st-serve minilm --host 0.0.0.0 --allowed-hosts embed.example.com --cors https://app.example.com
  st-serve minilm --workers 4 --threads 2           4 processes on one port, 2 onnxruntime threads each
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="st-serve", description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", metavar="FOLDER", help="folders written by st-export")
    p.add_argument("--name", action="append", default=[], help="name of each folder's model, in order (default: the "
                                                               "folder name); the `model` field of requests")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--variant", help="manifest variant to run, for every model (default fp32)")
    p.add_argument("--threads", type=int, help="onnxruntime threads per model (default: one per core)")
    p.add_argument("--max-batch-tokens", type=int, default=16384,
                   help="padded tokens (inputs x longest) per graph run (default 16384)")
    p.add_argument("--max-batch-requests", type=int, default=64,
                   help="inputs (texts or pairs) per graph run, merged across requests (default 64)")
    p.add_argument("--max-queue", type=int, default=4096,
                   help="inputs waiting per model; beyond, 429 with Retry-After (default 4096; at least "
                        "--max-client-batch-size)")
    p.add_argument("--max-input-tokens", type=int, help="tokens in one request; beyond, 413 (default: no limit)")
    p.add_argument("--max-uncut-chars", type=int, default=1 << 20,
                   help="characters in one request that must be tokenized whole (a run of text without any space or "
                        "punctuation the model's tokenizer splits at); beyond, 413 (default 1 Mi)")
    p.add_argument("--max-client-batch-size", type=int, default=2048,
                   help="inputs in one request; beyond, 413 (default 2048)")
    p.add_argument("--max-request-bytes", type=int, default=32 << 20, help="request body size; beyond, 413 (32 MiB)")
    p.add_argument("--max-tokenize-chars", type=int, default=1 << 18,
                   help="characters of one /tokenize request, prompt included; beyond, 413 (default 262144)")
    p.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds for a request body to arrive after its headers; beyond, 408 (default 30)")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds for a request's headers to arrive; beyond, 408 and the connection is closed "
                        "(default 10)")
    p.add_argument("--max-connections", type=int, default=1000,
                   help="open connections per process; the next ones are answered 503 (default 1000)")
    p.add_argument("--allowed-hosts", nargs="+", metavar="HOST",
                   help="Host header names answered, e.g. embed.example.com, '*.example.com', '*' for any; others get "
                        "400 (default: localhost, 127.0.0.1 and ::1 when --host is a loopback address, else any)")
    p.add_argument("--api-key", default=os.environ.get("ST_SERVE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $ST_SERVE_API_KEY; none: no key)")
    p.add_argument("--cors", nargs="+", default=[], metavar="ORIGIN", help="origins allowed by CORS ('*' for any)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes sharing the port, each loading every model (default 1); pair with --threads")
    p.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="seconds to finish in-flight requests after SIGTERM/SIGINT (default 30)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def config_from_args(args: argparse.Namespace) -> object:
    """The ServeConfig the flags describe.

    Raises:
        ArgumentError (a ValueError): a missing folder, more names than folders, a name used twice, or a non-positive
            limit.
    """
    from st_runtime.errors import ArgumentError
    from st_runtime.serve import BatchLimits, ModelConfig, ServeConfig

    if len(args.name) > len(args.folders):
        raise ArgumentError(f"{len(args.name)} --name for {len(args.folders)} folders; give at most one per folder.")
    models = []
    for index, folder in enumerate(args.folders):
        path = Path(folder)
        if not (path / "st_runtime.json").is_file():
            raise ArgumentError(f"{folder!r} is not a folder written by st-export (no st_runtime.json); export it "
                                "first: st-export MODEL -o FOLDER.")
        name = args.name[index] if index < len(args.name) else path.resolve().name
        if any(m.name == name for m in models):
            raise ArgumentError(f"Two models are named {name!r}; give each its own with --name.")
        models.append(ModelConfig(name, str(path.resolve()), args.variant))
    for flag in ("max_batch_tokens", "max_batch_requests", "max_queue", "max_client_batch_size", "max_request_bytes",
                 "max_tokenize_chars", "max_connections", "workers"):
        if getattr(args, flag) < 1:
            raise ArgumentError(f"--{flag.replace('_', '-')} must be a positive int, got {getattr(args, flag)}.")
    for flag in ("threads", "max_input_tokens", "max_uncut_chars"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ArgumentError(f"--{flag.replace('_', '-')} must be a positive int, got {getattr(args, flag)}.")
    for flag in ("body_timeout", "header_timeout", "graceful_timeout"):
        if not getattr(args, flag) > 0:
            raise ArgumentError(f"--{flag.replace('_', '-')} must be a positive number of seconds, got "
                                f"{getattr(args, flag)}.")
    limits = BatchLimits(max_batch_tokens=args.max_batch_tokens, max_batch_size=args.max_batch_requests,
                         max_queue=args.max_queue, max_input_tokens=args.max_input_tokens,
                         max_uncut_chars=args.max_uncut_chars)
    return ServeConfig(models=tuple(models), threads=args.threads, limits=limits,
                       max_client_batch_size=args.max_client_batch_size, max_request_bytes=args.max_request_bytes,
                       max_tokenize_chars=args.max_tokenize_chars, api_key=args.api_key or None, cors=tuple(args.cors),
                       allowed_hosts=tuple(args.allowed_hosts or default_allowed_hosts(args.host)),
                       body_timeout=args.body_timeout, header_timeout=args.header_timeout,
                       max_connections=args.max_connections)


def default_allowed_hosts(host: str) -> tuple[str, ...]:
    """Bound to a loopback address, only this machine can connect, but any web page its browser opens can reach the
    server through DNS rebinding (a name of the page's that then resolves to 127.0.0.1); answering only the loopback
    names stops that. Bound elsewhere, the names the server is reached by are unknown: any (set --allowed-hosts)."""
    from st_runtime.serve.app import LOOPBACK_HOSTS

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return tuple(dict.fromkeys((*LOOPBACK_HOSTS, host))) if loopback else ("*",)


def ensure_file_limit(max_connections: int) -> None:
    """Raise the soft open-file limit towards the hard one so that --max-connections connections (and the models'
    files) fit: past the limit, accept() fails and new clients wait unanswered.

    Raises:
        ArgumentError: the hard limit is too low for --max-connections.
    """
    from st_runtime.errors import ArgumentError

    needed = max_connections + 128  # the models' files, the listening socket, the batchers' threads' pipes, ...
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        raise ArgumentError(f"--max-connections {max_connections} needs about {needed} open files, and this process "
                            f"may open {hard} (ulimit -n); lower --max-connections or raise the limit.")


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGTERM or SIGINT; in-flight requests finish first, then exit 0. A flag or folder that
    cannot be served is one `st-serve: error:` line and exit 1, before anything listens."""
    from st_runtime.errors import run_cli

    args = build_parser().parse_args(argv)
    return run_cli("st-serve", lambda: run(args))


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from st_runtime.serve.app import CONFIG_ENV, create_app
    from st_runtime.serve.protocol import ServeProtocol

    config = config_from_args(args)
    ensure_file_limit(args.max_connections)
    uvicorn_args = {"host": args.host, "port": args.port, "log_level": args.log_level, "access_log": args.access_log,
                    "timeout_graceful_shutdown": args.graceful_timeout, "http": ServeProtocol, "lifespan": "on"}
    if args.workers > 1:
        os.environ[CONFIG_ENV] = config.to_json()  # type: ignore[attr-defined]
        target: object = "st_runtime.serve.app:app_from_env"
        uvicorn_args |= {"factory": True, "workers": args.workers}
    else:
        target = create_app(config)  # type: ignore[arg-type]  # loads the models: errors show before listening
    # uvicorn re-raises the signal that stopped it once it has shut down; a handler that only returns makes that a
    # clean exit (status 0) instead of death by SIGTERM.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    uvicorn.run(target, **uvicorn_args)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
