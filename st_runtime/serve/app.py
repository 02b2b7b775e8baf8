"""The st-serve ASGI app (Starlette): OpenAI `/v1/embeddings` and `/v1/models`, TEI `/embed`, `/embed_sparse`,
`/rerank`, `/predict`, `/tokenize`, `/info`, `/health`, and Prometheus `/metrics`, over exported folders.

Errors are answered in the caller's dialect: OpenAI's `{"error": {"message", "type", "param", "code"}}` under /v1,
TEI's `{"error", "error_type"}` elsewhere; never a traceback (those go to the server log).

Every request meets the same limits before any work: its Host (--allowed-hosts), API key, Content-Type (JSON only),
body size and arrival time (--max-request-bytes, --body-timeout), inputs per request, tokens and the model's queue.
Connections and header arrival are bounded one level down, in `protocol.py`.

The POST endpoints are plain ASGI callables (`PostEndpoint`) that `ServeApp` calls directly: a request's own path
through the server is body, validation, queue and answer, with no framework layer in between (each one costs
measurably at concurrency 1; docs/perf/serve.md). Everything else (GET endpoints, CORS preflights, lifespan,
unknown paths) goes through Starlette.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from st_runtime.base import check_text
from st_runtime.errors import ArgumentError, InvalidInputError, StRuntimeError
from st_runtime.serve import schemas
from st_runtime.serve.batcher import BatchLimits, Job, QueueFullError, RequestTooLargeError, ShuttingDownError
from st_runtime.serve.metrics import Metrics
from st_runtime.serve.models import ServedModel
from st_runtime.similarity import l2_normalize

logger = logging.getLogger("st_runtime.serve")
CONFIG_ENV = "ST_SERVE_CONFIG"  # the JSON ServeConfig handed to --workers processes
DISCONNECT_WATCH_AFTER = 0.02  # seconds a request waits before it listens for its client going away
ALONE_MAX_CHARS = 512  # a lone request this short runs on the event loop (a query: a few ms of graph run)
ALONE_QUIET_SECONDS = 1.0  # ... if no two requests were in flight together for this long (sequential traffic)
CONFIG_STATE = "st_serve.config"  # the lifespan state key under which uvicorn hands the ServeConfig to protocol.py
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class ModelConfig:
    name: str
    folder: str
    variant: str | None = None


@dataclass(frozen=True)
class ServeConfig:
    """Everything create_app needs; the CLI builds it from its flags."""

    models: tuple[ModelConfig, ...]
    threads: int | None = None
    limits: BatchLimits = field(default_factory=BatchLimits)
    max_client_batch_size: int = 2048
    max_request_bytes: int = 32 << 20
    max_tokenize_chars: int = 1 << 18  # characters of one /tokenize request, prompt included
    api_key: str | None = None
    cors: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ("*",)  # Host header names answered ("*": any, "*.example.com": subdomains)
    body_timeout: float = 30.0  # seconds for a request's body to arrive, from its headers
    header_timeout: float = 10.0  # seconds for a request's headers to arrive (protocol.py)
    max_connections: int = 1000  # open connections; the next ones are answered 503 (protocol.py)

    def __post_init__(self) -> None:
        if self.limits.max_queue < self.max_client_batch_size:
            raise ArgumentError(f"--max-queue {self.limits.max_queue} is less than --max-client-batch-size "
                                f"{self.max_client_batch_size}: a request the client limit lets through could never "
                                "be queued. Raise --max-queue or lower --max-client-batch-size.")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        data = json.loads(text)
        return cls(models=tuple(ModelConfig(**m) for m in data.pop("models")), limits=BatchLimits(**data.pop("limits")),
                   cors=tuple(data.pop("cors")), allowed_hosts=tuple(data.pop("allowed_hosts")), **data)


def dumps(content: Any) -> bytes:
    """JSON by orjson, numpy arrays included (float32 printed as the shortest text that reads back the same value)."""
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class ApiError(StRuntimeError):
    """An answer other than 200: status, a message saying what to change, and the request field it is about."""

    def __init__(self, status: int, message: str, *, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}


ENDPOINT_TASKS = {"/v1/embeddings": "sentence-embedding", "/embed": "sentence-embedding",
                  "/embed_sparse": "sparse-embedding", "/rerank": "text-ranking", "/predict": "text-ranking"}
_TEI_TYPES = {401: "Unauthorized", 404: "NotFound", 429: "Overloaded", 500: "Backend", 503: "Unhealthy"}  # else Validation
_OPENAI_TYPES = {401: "authentication_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class Server:
    """The served models, limits and metrics behind one app."""

    def __init__(self, config: ServeConfig) -> None:
        self.config, self.metrics, self.started = config, Metrics(), int(time.time())
        self.in_flight = 0  # POST requests received and not yet answered
        self.overlapped_at = -math.inf  # time.monotonic() when two requests were last in flight together
        self.models: dict[str, ServedModel] = {}
        for spec in config.models:
            served = ServedModel(spec.name, spec.folder, variant=spec.variant, threads=config.threads,
                                 limits=config.limits, on_batch=self.metrics.batch_hook(spec.name))
            self.models[spec.name] = served
            self.metrics.watch_queue(spec.name, lambda b=served.batcher: b.queue_depth)

    def stop(self) -> None:
        for served in self.models.values():
            served.batcher.stop()

    def pick(self, name: str | None, endpoint: str) -> ServedModel:
        """The model a request names, or (TEI endpoints without `model`) the first one of the endpoint's kind.

        Raises:
            ApiError: 404 for an unknown name, 400 for a model of another kind.
        """
        task = ENDPOINT_TASKS.get(endpoint)
        if name is None:
            served = next((m for m in self.models.values() if task is None or m.task == task), None)
            if served is None:
                raise ApiError(400, f"{endpoint} needs a {task} model and none is served (models: "
                                    f"{sorted(self.models)}).", param="model")
            return served
        if name not in self.models:
            raise ApiError(404, f"The model {name!r} does not exist; this server has {sorted(self.models)}.",
                           param="model")
        served = self.models[name]
        if task is not None and served.task != task:
            raise ApiError(400, f"Model {name!r} is a {served.task} model; {endpoint} needs a {task} model.",
                           param="model")
        return served

    async def run(self, receive: Receive, served: ServedModel, key: Hashable, items: list[Any],
                  options: dict[str, Any] | None = None) -> tuple[list[Any], int]:
        """Run a request's inputs: queued on the model's batcher (dropped if the client goes away first), or, for a
        lone short request on an idle server, at once on the event loop (`_alone`).

        Returns:
            (one result per input, input tokens)
        """
        if len(items) > self.config.max_client_batch_size:
            raise ApiError(413, f"{len(items)} inputs in one request, more than --max-client-batch-size "
                                f"{self.config.max_client_batch_size}; split the request.", param="input")
        try:
            if self._alone(served, items):
                await asyncio.sleep(0)  # requests that arrived with this one start first, and are seen
                if self._alone(served, items):
                    return served.batcher.run_now(key, items, options)
            return await self._queued(receive, served, key, items, options)
        except RequestTooLargeError as exc:
            raise ApiError(413, f"Request too large: {exc}.", param="input") from None
        except InvalidInputError as exc:
            raise ApiError(422, str(exc), param="input") from None
        except ApiError:
            raise
        except Exception as exc:
            raise ApiError(500, f"Model {served.name!r} failed on this request ({type(exc).__name__}); see the "
                                "server log.") from None

    def _alone(self, served: ServedModel, items: list[Any]) -> bool:
        """Sequential traffic: one short input, no other request in the server nor for ALONE_QUIET_SECONDS, nothing
        queued or running. No request could share its batch, and running it on the event loop saves the two thread
        hand-offs (0.3-0.7 ms; docs/perf/serve.md) while holding the loop for one short graph run. Under concurrent
        traffic (even 2 clients) requests take the queue: a run on the loop would keep the requests arriving during
        it from being read until it ends, instead of batching them sooner."""
        if len(items) != 1 or self.in_flight != 1 or not served.batcher.idle:
            return False
        if time.monotonic() - self.overlapped_at < ALONE_QUIET_SECONDS:
            return False
        item = items[0]
        return (len(item) if isinstance(item, str) else sum(len(text) for text in item)) <= ALONE_MAX_CHARS

    async def _queued(self, receive: Receive, served: ServedModel, key: Hashable, items: list[Any],
                      options: dict[str, Any] | None) -> tuple[list[Any], int]:
        """Queue on the batcher and wait. A request still waiting after DISCONNECT_WATCH_AFTER seconds starts listening
        for its client's disconnect (a quick request never pays for the listener)."""
        try:
            job = served.batcher.submit(key, items, options)
        except QueueFullError as exc:
            raise ApiError(429, f"Too many requests queued: {exc}.", headers={"Retry-After": "1"}) from None
        except RequestTooLargeError as exc:
            raise ApiError(413, str(exc), param="input") from None
        except ShuttingDownError:
            raise shutting_down() from None
        loop = asyncio.get_running_loop()
        watch: list[asyncio.Task] = []
        timer = loop.call_later(DISCONNECT_WATCH_AFTER,
                                lambda: watch.append(loop.create_task(_drop_when_gone(receive, served, job))))
        try:
            return await job.future
        except asyncio.CancelledError:
            if watch and watch[0].done() and not watch[0].cancelled():
                raise ApiError(499, "client closed the request") from None
            served.batcher.drop(job)  # the request itself was cancelled (server shutdown)
            raise
        finally:
            timer.cancel()
            if watch:
                watch[0].cancel()


async def _drop_when_gone(receive: Receive, served: ServedModel, job: Job) -> None:
    """When the client disconnects, drop its queued inputs and end its wait (the body is read already, so the next
    ASGI message is the disconnect)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    served.batcher.drop(job)
    job.future.cancel()


def _texts(value: str | list[str], where: str) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    try:
        for index, text in enumerate(texts):
            check_text(text, f"{where}[{index}]")
    except InvalidInputError as exc:
        raise ApiError(422, str(exc), param=where) from None
    return texts


def _prompt(served: ServedModel, prompt_name: str | None) -> str:
    try:
        return served.prompt_text(prompt_name)
    except KeyError as exc:
        raise ApiError(422, f"prompt_name: {exc.args[0]}.", param="prompt_name") from None


def _check_finite(served: ServedModel, rows: list[Any] | np.ndarray) -> None:
    """Raises ApiError 500 when a model output holds NaN or infinity: JSON has no such numbers (orjson would write null,
    which no client reads as a float), and a NaN score cannot be ranked. The same rule as TEI ("score is NaN")."""
    for index, row in enumerate(rows):
        if not np.isfinite(row).all():
            logger.error("st-serve: model %r returned NaN or infinity for input %d", served.name, index)
            raise ApiError(500, f"Model {served.name!r} returned NaN or infinity for input {index}; such values cannot "
                                "be answered as JSON. See the server log; check the exported model (st-export's "
                                "parity check).")


def shutting_down() -> ApiError:
    """503 for a request the server stops before answering (shutdown past --graceful-timeout, or a stopped batcher)."""
    return ApiError(503, "The server is shutting down and could not finish this request in time (--graceful-timeout); "
                         "retry it.", headers={"Retry-After": "1", "Connection": "close"})


def _truncate_normalize(served: ServedModel, rows: list[np.ndarray], dimensions: int | None, normalize: bool,
                        param: str) -> np.ndarray:
    """Rows stacked, truncated to `dimensions` then normalized, exactly as encode(truncate_dim, normalize_embeddings)."""
    embeddings = np.stack(rows)
    if dimensions is not None:
        if served.dimension is not None and dimensions > served.dimension:
            raise ApiError(422, f"{param}: {dimensions} is more than the model's {served.dimension} dimensions.",
                           param=param)
        embeddings = embeddings[:, :dimensions]
    if normalize:
        embeddings = l2_normalize(embeddings)
    return embeddings


# -- endpoints: (server, ASGI receive, parsed body) -> (model name, tokens, JSON payload) ---------------------------------

async def openai_embeddings(server: Server, receive: Receive, body: schemas.OpenAIEmbeddings) -> tuple[str, int, Any]:
    served = server.pick(body.model, "/v1/embeddings")
    if body.dimensions is not None and served.dimension is not None and body.dimensions > served.dimension:
        raise ApiError(422, f"dimensions: {body.dimensions} is more than the model's {served.dimension}.",
                       param="dimensions")
    texts = _texts(body.input, "input")
    rows, tokens = await server.run(receive, served, ("embed", _prompt(served, None), None), texts)
    _check_finite(served, rows)
    embeddings = _truncate_normalize(served, rows, body.dimensions, False, "dimensions")
    if body.encoding_format == "base64":
        values: list[Any] = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in embeddings]
    else:
        values = list(np.ascontiguousarray(embeddings, dtype=np.float32))  # rows, serialized by orjson
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(values)]
    return served.name, tokens, {"object": "list", "data": data, "model": served.name,
                                 "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


async def embed(server: Server, receive: Receive, body: schemas.Embed) -> tuple[str, int, Any]:
    served = server.pick(body.model, "/embed")
    texts, prompt = _texts(body.inputs, "inputs"), _prompt(served, body.prompt_name)
    rows, tokens = await server.run(receive, served, ("embed", prompt, None), texts, {"truncate": body.truncate})
    _check_finite(served, rows)
    embeddings = _truncate_normalize(served, rows, body.dimensions, body.normalize, "dimensions")
    return served.name, tokens, np.ascontiguousarray(embeddings, dtype=np.float32)


async def embed_sparse(server: Server, receive: Receive, body: schemas.EmbedSparse) -> tuple[str, int, Any]:
    served = server.pick(body.model, "/embed_sparse")
    texts, prompt = _texts(body.inputs, "inputs"), _prompt(served, body.prompt_name)
    rows, tokens = await server.run(receive, served, ("sparse", prompt, None), texts, {"truncate": body.truncate})
    _check_finite(served, [weights for _, weights in rows])
    return served.name, tokens, [[{"index": i, "value": v} for i, v in zip(ids.tolist(), weights.tolist(), strict=True)]
                                 for ids, weights in rows]


async def rerank(server: Server, receive: Receive, body: schemas.Rerank) -> tuple[str, int, Any]:
    served = server.pick(body.model, "/rerank")
    if served.model.num_labels != 1:
        raise ApiError(400, f"Model {served.name!r} has {served.model.num_labels} labels; /rerank needs one score per "
                            "text (use /predict).", param="model")
    texts = _texts(body.texts, "texts")
    check = _texts(body.query, "query")
    if not texts:
        return served.name, 0, []
    pairs = [(check[0], text) for text in texts]
    scores, tokens = await server.run(receive, served, ("pairs", _prompt(served, None), body.raw_scores), pairs,
                                      {"truncate": body.truncate})
    _check_finite(served, scores)
    order = sorted(range(len(texts)), key=lambda i: -float(scores[i]))[: body.top_n]
    return served.name, tokens, [{"index": i, "score": float(scores[i]), **({"text": texts[i]} if body.return_text else {})}
                                 for i in order]


async def predict(server: Server, receive: Receive, body: schemas.Predict) -> tuple[str, int, Any]:
    served = server.pick(body.model, "/predict")
    single = isinstance(body.inputs[0], str)
    pairs = [tuple(body.inputs)] if single else [tuple(p) for p in body.inputs]
    for index, pair in enumerate(pairs):
        _texts(list(pair), f"inputs[{index}]")
    scores, tokens = await server.run(receive, served, ("pairs", _prompt(served, None), body.raw_scores), pairs,
                                      {"truncate": body.truncate})
    _check_finite(served, scores)
    results = []
    for score in scores:
        values = np.atleast_1d(np.asarray(score, dtype=np.float64)).tolist()
        results.append(sorted(({"label": f"LABEL_{i}", "score": v} for i, v in enumerate(values)),
                              key=lambda item: -item["score"]))
    return served.name, tokens, results[0] if single else results


async def tokenize(server: Server, receive: Receive, body: schemas.Tokenize) -> tuple[str, int, Any]:
    """TEI's /tokenize, untruncated, under the limits of every endpoint (inputs per request, the model's queue, tokens)
    and --max-tokenize-chars, which bounds its cost before anything is tokenized; the answer is built as JSON text
    piece by piece (models.ServedModel._tokenize)."""
    served = server.pick(body.model, "/tokenize")
    prompt = _prompt(served, body.prompt_name)
    texts = [prompt + text for text in _texts(body.inputs, "inputs")]
    chars, limit = sum(map(len, texts)), server.config.max_tokenize_chars
    if chars > limit:
        raise ApiError(413, f"/tokenize got {chars} characters (prompt included), more than --max-tokenize-chars "
                            f"{limit}; send fewer or shorter inputs.", param="inputs")
    results, _ = await server.run(receive, served, ("tokenize", "", body.add_special_tokens), texts)
    tokens = sum(count for _, count in results)
    max_tokens = server.config.limits.max_input_tokens
    if max_tokens is not None and tokens > max_tokens:
        raise ApiError(413, f"Request too large: the request has {tokens} tokens, more than --max-input-tokens "
                            f"{max_tokens}. Send fewer or shorter inputs.", param="inputs")
    return served.name, tokens, [fragment for fragment, _ in results]


POST_ENDPOINTS: dict[str, tuple[type[BaseModel], Callable[..., Awaitable[tuple[str, int, Any]]]]] = {
    "/v1/embeddings": (schemas.OpenAIEmbeddings, openai_embeddings),
    "/embed": (schemas.Embed, embed),
    "/embed_sparse": (schemas.EmbedSparse, embed_sparse),
    "/rerank": (schemas.Rerank, rerank),
    "/predict": (schemas.Predict, predict),
    "/tokenize": (schemas.Tokenize, tokenize),
}


def error_answer(exc: ApiError, path: str) -> tuple[bytes, dict[str, str]]:
    """The JSON body and headers of an error, in the dialect of the endpoint's API."""
    if path.startswith("/v1/"):
        code = {404: "model_not_found", 401: "invalid_api_key"}.get(exc.status)
        payload: Any = {"error": {"message": exc.message, "type": _OPENAI_TYPES.get(exc.status, "invalid_request_error"),
                                  "param": exc.param, "code": code}}
    else:
        payload = {"error": exc.message, "error_type": _TEI_TYPES.get(exc.status, "Validation")}
    headers = dict(exc.headers)
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return dumps(payload), headers


async def send_error(send: Send, exc: ApiError, path: str) -> None:
    """Answer `exc` on an ASGI connection, in the dialect of `path`."""
    body, headers = error_answer(exc, path)
    await send({"type": "http.response.start", "status": exc.status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in headers.items())]})
    await send({"type": "http.response.body", "body": body})


def json_response(content: Any) -> Response:
    """A GET answer, serialized like every other one (orjson: a NaN from a manifest becomes null, never a 500)."""
    return Response(dumps(content), media_type="application/json")


def host_name(host: str) -> str:
    """The name part of a Host header: no port, no IPv6 brackets, no final dot, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def host_allowed(name: str, allowed: tuple[str, ...]) -> bool:
    """Whether a Host name matches --allowed-hosts: "*" any, "*.example.com" its subdomains, else the exact name."""
    return any(pattern == "*" or name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:]))
               for pattern in allowed)


def check_content_type(content_type: str) -> None:
    """Raises ApiError 415 unless the body is declared JSON (`application/json` or `application/*+json`, parameters
    such as charset allowed). A missing Content-Type is refused too: a browser can send that (or a form's type)
    cross-origin without a CORS preflight, JSON it cannot."""
    media = content_type.partition(";")[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    got = f"Content-Type {media!r}" if media else "no Content-Type"
    raise ApiError(415, f"The body must be JSON, sent with the header 'Content-Type: application/json' (got {got}); "
                        "with curl: -H 'Content-Type: application/json'.", param="body")


def check_api_key(api_key: bytes | None, authorization: str) -> None:
    """Raises ApiError 401 unless `authorization` is `Bearer <api_key>` (or no key is set)."""
    if api_key is None:
        return
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key):
        raise ApiError(401, "Missing or wrong API key: send the header 'Authorization: Bearer <key>'.")


class PostEndpoint:
    """One POST endpoint as a plain ASGI app: API key, Content-Type, body (size- and time-limited), validation by the
    endpoint's schema, the handler, an orjson answer, and the request's metrics."""

    def __init__(self, server: Server, path: str, api_key: bytes | None) -> None:
        self.server, self.path, self.api_key = server, path, api_key
        self.schema, self.handler = POST_ENDPOINTS[path]
        self.max_bytes, self.body_timeout = server.config.max_request_bytes, server.config.body_timeout
        self.in_progress = server.metrics.in_progress.labels(path)
        self._counted: dict[tuple[str, int], tuple[Any, Any, Any]] = {}  # (model, status) -> metric children

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start, model, status, tokens = time.perf_counter(), "-", 200, 0
        self.in_progress.inc()
        self.server.in_flight += 1
        if self.server.in_flight > 1:
            self.server.overlapped_at = time.monotonic()
        try:
            try:
                headers = dict(scope["headers"])
                check_api_key(self.api_key, headers.get(b"authorization", b"").decode("latin-1"))
                check_content_type(headers.get(b"content-type", b"").decode("latin-1"))
                body = self.schema.model_validate_json(await self._body(receive, headers.get(b"content-length")))
                model, tokens, payload = await self.handler(self.server, receive, body)
                answer, extra = dumps(payload), {}
            except ValidationError as exc:
                raise _validation_error(exc) from None
            except asyncio.CancelledError:  # uvicorn cancels what is still running when --graceful-timeout ends
                raise shutting_down() from None
        except ApiError as exc:
            status = exc.status
            answer, extra = error_answer(exc, self.path)
        except Exception:
            status = 500
            logger.exception("st-serve: unexpected error on %s", self.path)
            answer, extra = error_answer(ApiError(500, "Internal server error; see the server log."), self.path)
        try:
            await send({"type": "http.response.start", "status": status, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode()),
                *((k.lower().encode(), v.encode()) for k, v in extra.items())]})
            await send({"type": "http.response.body", "body": answer})
        finally:
            self.server.in_flight -= 1
            self.in_progress.dec()
            self._observe(model, status, tokens, time.perf_counter() - start)

    async def _body(self, receive: Receive, content_length: bytes | None) -> bytes:
        if content_length is not None and content_length.isdigit() and int(content_length) > self.max_bytes:
            raise self._too_large()
        chunks, size, more = [], 0, True
        try:
            async with asyncio.timeout(self.body_timeout):
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ApiError(499, "client closed the request")
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise self._too_large()
                    chunks.append(chunk)
                    more = message.get("more_body", False)
        except TimeoutError:
            raise ApiError(408, f"The body did not arrive within --body-timeout {self.body_timeout:g} s ({size} bytes "
                                "came); send it at once.", headers={"Connection": "close"}) from None
        return b"".join(chunks)

    def _too_large(self) -> ApiError:
        """413, and the connection closed: else uvicorn would go on reading (and dropping) a body that may not end."""
        return ApiError(413, f"The body is larger than --max-request-bytes {self.max_bytes}.",
                        headers={"Connection": "close"})

    def _observe(self, model: str, status: int, tokens: int, seconds: float) -> None:
        children = self._counted.get((model, status))
        if children is None:
            metrics = self.server.metrics
            children = self._counted[(model, status)] = (
                metrics.requests.labels(model, self.path, str(status)), metrics.latency.labels(model, self.path),
                metrics.tokens.labels(model, self.path))
        requests, latency, token_count = children
        requests.inc()
        latency.observe(seconds)
        if tokens:
            token_count.inc(tokens)


class ServeApp:
    """The st-serve ASGI app: POST endpoints called directly, everything else through Starlette (`rest`); with
    --cors, CORS wraps both; before all, the Host header must be one of --allowed-hosts."""

    def __init__(self, server: Server, posts: dict[str, PostEndpoint], rest: Starlette, cors: tuple[str, ...]) -> None:
        self.server, self._posts, self._rest = server, posts, rest
        hosts = tuple(host_name(h) if h != "*" and not h.startswith("*.") else h.lower()
                      for h in server.config.allowed_hosts)
        self._hosts = None if "*" in hosts else hosts
        self._app: ASGIApp = self._dispatch
        if cors:
            self._app = CORSMiddleware(self._dispatch, allow_origins=list(cors), allow_methods=["GET", "POST"],
                                       allow_headers=["Authorization", "Content-Type"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._hosts is not None and scope["type"] == "http":
            host = next((value for name, value in scope["headers"] if name == b"host"), b"").decode("latin-1")
            if not host_allowed(host_name(host), self._hosts):
                await send_error(send, ApiError(
                    400, f"Host {host!r} is not one this server answers to ({', '.join(self._hosts)}): call it by one "
                         "of those names, or start st-serve with --allowed-hosts naming this one.", param="host"),
                    scope["path"])
                return
        await self._app(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self._posts.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        await (endpoint or self._rest)(scope, receive, send)


def create_app(config: ServeConfig) -> ServeApp:
    """Load every model of `config` (each with its batcher thread) and return the ASGI app serving them.

    Raises:
        StRuntimeError (ManifestError, ModelFileError, ...): a folder cannot be loaded.
    """
    server = Server(config)
    api_key = config.api_key.encode() if config.api_key else None

    def error(exc: ApiError, path: str) -> Response:
        body, headers = error_answer(exc, path)
        return Response(body, status_code=exc.status, headers=headers, media_type="application/json")

    def authorize(request: Request) -> None:
        check_api_key(api_key, request.headers.get("authorization", ""))

    async def health(request: Request) -> Response:
        return json_response({"status": "ok", "models": sorted(server.models)})

    async def get_info(request: Request) -> Response:
        try:
            authorize(request)
            served = server.pick(request.query_params.get("model"), "/info")
        except ApiError as exc:
            return error(exc, "/info")
        limits = config.limits
        return json_response(served.info() | {
            "models": sorted(server.models), "version": _version(), "max_batch_tokens": limits.max_batch_tokens,
            "max_batch_requests": limits.max_batch_size, "max_concurrent_requests": limits.max_queue,
            "max_input_tokens": limits.max_input_tokens, "max_client_batch_size": config.max_client_batch_size})

    async def list_models(request: Request) -> Response:
        try:
            authorize(request)
        except ApiError as exc:
            return error(exc, "/v1/models")
        return json_response({"object": "list", "data": [
            {"id": name, "object": "model", "created": server.started, "owned_by": "st-serve",
             "task": m.task, "dimension": m.dimension, "max_seq_length": m.max_seq_length}
            for name, m in server.models.items()]})

    async def metrics_endpoint(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        try:
            authorize(request)
        except ApiError as exc:
            return error(exc, "/metrics")
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        yield {CONFIG_STATE: config}  # uvicorn hands the lifespan state to every connection: protocol.py reads it
        await run_in_threadpool(server.stop)

    posts = {path: PostEndpoint(server, path, api_key) for path in POST_ENDPOINTS}
    routes = [Route(path, endpoint, methods=["POST"]) for path, endpoint in posts.items()]  # for path variants
    routes += [Route("/health", health), Route("/info", get_info), Route("/v1/models", list_models),
               Route("/metrics", metrics_endpoint)]
    return ServeApp(server, posts, Starlette(routes=routes, lifespan=lifespan), config.cors)


def app_from_env() -> ServeApp:
    """The app of a --workers process: its ServeConfig comes as JSON in $ST_SERVE_CONFIG (uvicorn factory)."""
    return create_app(ServeConfig.from_json(os.environ[CONFIG_ENV]))


def _validation_error(exc: ValidationError) -> ApiError:
    """422 naming the field (and item) of the first problem pydantic found."""
    first = exc.errors(include_url=False)[0]
    loc = ".".join(str(part) for part in first["loc"])
    if first["type"] == "json_invalid":
        return ApiError(422, f"The body is not valid JSON: {first['msg']}.", param="body")
    if first["type"] == "model_type":
        return ApiError(422, "The body must be a JSON object.", param="body")
    message = first["msg"].removeprefix("Value error, ")
    return ApiError(422, f"{loc}: {message}" + ("" if first["type"] != "missing" else " (a required field)"),
                    param=str(first["loc"][0]) if first["loc"] else "body")


def _version() -> str:
    from st_runtime import __version__

    return __version__
