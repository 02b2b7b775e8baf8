"""The floor of serving from Python, for the concurrency-1 figure of docs/perf/serve.md: a bare ASGI app on uvicorn
(uvloop + httptools, as st-serve) that runs st_runtime's `encode` inline on the event loop for each
`POST /v1/embeddings` and answers with orjson: no framework, no validation, no queue, no thread hop, no batching.
What it adds to a direct `encode` is what any Python HTTP server adds on this machine.

    python -m bench.floor_server FOLDER --port 18779 --threads 2
"""

from __future__ import annotations

import argparse
from typing import Any


def make_app(model: Any) -> Any:
    import orjson

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/v1/embeddings":
            texts = orjson.loads(body)["input"]
            vectors = model.encode([texts] if isinstance(texts, str) else texts)
            answer = orjson.dumps({"object": "list", "data": [{"object": "embedding", "index": i, "embedding": v}
                                                              for i, v in enumerate(vectors)]},
                                  option=orjson.OPT_SERIALIZE_NUMPY)
        else:
            answer = b'{"status":"ok"}'
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_server", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a folder written by st-export")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18779)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    args = parser.parse_args(argv)

    import uvicorn

    import st_runtime

    model = st_runtime.SentenceTransformer(args.folder, intra_op_num_threads=args.threads)
    uvicorn.run(make_app(model), host=args.host, port=args.port, log_level="warning", access_log=False,
                loop="uvloop", http="httptools")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
