"""The st-serve ASGI app (Starlette): OpenAI `/v1/embeddings` and `/v1/models`, TEI `/embed`, `/embed_sparse`,
`/rerank`, `/predict`, `/tokenize`, `/info`, `/health`, and Prometheus `/metrics`, over exported folders.

Errors are answered in the caller's dialect: OpenAI's `{"error": {"message", "type", "param", "code"}}` under /v1,
TEI's `{"error", "error_type"}` elsewhere; never a traceback (those go to the server log).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
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
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from st_runtime.base import check_text
from st_runtime.errors import InvalidInputError, StRuntimeError
from st_runtime.serve import schemas
from st_runtime.serve.batcher import BatchLimits, QueueFullError, RequestTooLargeError
from st_runtime.serve.metrics import Metrics
from st_runtime.serve.models import ServedModel
from st_runtime.similarity import l2_normalize

logger = logging.getLogger("st_runtime.serve")
CONFIG_ENV = "ST_SERVE_CONFIG"  # the JSON ServeConfig handed to --workers processes


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
    api_key: str | None = None
    cors: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        data = json.loads(text)
        return cls(models=tuple(ModelConfig(**m) for m in data.pop("models")), limits=BatchLimits(**data.pop("limits")),
                   cors=tuple(data.pop("cors")), **data)


class FastJSONResponse(JSONResponse):
    """JSON by orjson, numpy arrays included (float32 printed as the shortest text that reads back the same value)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class ApiError(StRuntimeError):
    """An answer other than 200: status, a message saying what to change, and the request field it is about."""

    def __init__(self, status: int, message: str, *, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}


ENDPOINT_TASKS = {"/v1/embeddings": "sentence-embedding", "/embed": "sentence-embedding",
                  "/embed_sparse": "sparse-embedding", "/rerank": "text-ranking", "/predict": "text-ranking"}
_TEI_TYPES = {401: "Unauthorized", 404: "NotFound", 413: "Validation", 422: "Validation", 400: "Validation",
              429: "Overloaded", 500: "Backend", 503: "Unhealthy"}
_OPENAI_TYPES = {401: "authentication_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class Server:
    """The served models, limits and metrics behind one app."""

    def __init__(self, config: ServeConfig) -> None:
        self.config, self.metrics, self.started = config, Metrics(), int(time.time())
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

    async def run(self, request: Request, served: ServedModel, key: Hashable, items: list[Any],
                  options: dict[str, Any] | None = None) -> tuple[list[Any], int]:
        """Queue inputs on the model's batcher and wait; drop them if the client goes away first.

        Returns:
            (one result per input, input tokens)
        """
        if len(items) > self.config.max_client_batch_size:
            raise ApiError(413, f"{len(items)} inputs in one request, more than --max-client-batch-size "
                                f"{self.config.max_client_batch_size}; split the request.", param="input")
        try:
            job = served.batcher.submit(key, items, options)
        except QueueFullError as exc:
            raise ApiError(429, f"Too many requests queued: {exc}.", headers={"Retry-After": "1"}) from None
        except RequestTooLargeError as exc:
            raise ApiError(413, str(exc), param="input") from None
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({job.future, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            served.batcher.drop(job)
            raise
        finally:
            gone.cancel()
        if job.future not in done:
            served.batcher.drop(job)
            job.future.cancel()
            raise ApiError(499, "client closed the request")
        exc = job.future.exception()
        if exc is None:
            return job.future.result()
        if isinstance(exc, RequestTooLargeError):
            raise ApiError(413, f"Request too large: {exc}.", param="input")
        if isinstance(exc, InvalidInputError):
            raise ApiError(422, str(exc), param="input")
        raise ApiError(500, f"Model {served.name!r} failed on this request ({type(exc).__name__}); see the server log.")


async def _disconnected(request: Request) -> None:
    """Return when the client disconnects (the body is read already, so the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


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


# -- endpoints: (server, request, parsed body) -> (model name, tokens, JSON payload) ---------------------------------

async def openai_embeddings(server: Server, request: Request, body: schemas.OpenAIEmbeddings) -> tuple[str, int, Any]:
    served = server.pick(body.model, "/v1/embeddings")
    if body.dimensions is not None and served.dimension is not None and body.dimensions > served.dimension:
        raise ApiError(422, f"dimensions: {body.dimensions} is more than the model's {served.dimension}.",
                       param="dimensions")
    texts = _texts(body.input, "input")
    rows, tokens = await server.run(request, served, ("embed", _prompt(served, None), None), texts)
    embeddings = _truncate_normalize(served, rows, body.dimensions, False, "dimensions")
    if body.encoding_format == "base64":
        values: list[Any] = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in embeddings]
    else:
        values = list(np.ascontiguousarray(embeddings, dtype=np.float32))  # rows, serialized by orjson
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(values)]
    return served.name, tokens, {"object": "list", "data": data, "model": served.name,
                                 "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


async def embed(server: Server, request: Request, body: schemas.Embed) -> tuple[str, int, Any]:
    served = server.pick(body.model, "/embed")
    texts, prompt = _texts(body.inputs, "inputs"), _prompt(served, body.prompt_name)
    rows, tokens = await server.run(request, served, ("embed", prompt, None), texts, {"truncate": body.truncate})
    embeddings = _truncate_normalize(served, rows, body.dimensions, body.normalize, "dimensions")
    return served.name, tokens, np.ascontiguousarray(embeddings, dtype=np.float32)


async def embed_sparse(server: Server, request: Request, body: schemas.EmbedSparse) -> tuple[str, int, Any]:
    served = server.pick(body.model, "/embed_sparse")
    texts, prompt = _texts(body.inputs, "inputs"), _prompt(served, body.prompt_name)
    rows, tokens = await server.run(request, served, ("sparse", prompt, None), texts, {"truncate": body.truncate})
    return served.name, tokens, [[{"index": i, "value": v} for i, v in zip(ids.tolist(), weights.tolist(), strict=True)]
                                 for ids, weights in rows]


async def rerank(server: Server, request: Request, body: schemas.Rerank) -> tuple[str, int, Any]:
    served = server.pick(body.model, "/rerank")
    if served.model.num_labels != 1:
        raise ApiError(400, f"Model {served.name!r} has {served.model.num_labels} labels; /rerank needs one score per "
                            "text (use /predict).", param="model")
    texts = _texts(body.texts, "texts")
    check = _texts(body.query, "query")
    if not texts:
        return served.name, 0, []
    pairs = [(check[0], text) for text in texts]
    scores, tokens = await server.run(request, served, ("pairs", _prompt(served, None), body.raw_scores), pairs,
                                      {"truncate": body.truncate})
    order = sorted(range(len(texts)), key=lambda i: -float(scores[i]))[: body.top_n]
    return served.name, tokens, [{"index": i, "score": float(scores[i]), **({"text": texts[i]} if body.return_text else {})}
                                 for i in order]


async def predict(server: Server, request: Request, body: schemas.Predict) -> tuple[str, int, Any]:
    served = server.pick(body.model, "/predict")
    single = isinstance(body.inputs[0], str)
    pairs = [tuple(body.inputs)] if single else [tuple(p) for p in body.inputs]
    for index, pair in enumerate(pairs):
        _texts(list(pair), f"inputs[{index}]")
    scores, tokens = await server.run(request, served, ("pairs", _prompt(served, None), body.raw_scores), pairs,
                                      {"truncate": body.truncate})
    results = []
    for score in scores:
        values = np.atleast_1d(np.asarray(score, dtype=np.float64)).tolist()
        results.append(sorted(({"label": f"LABEL_{i}", "score": v} for i, v in enumerate(values)),
                              key=lambda item: -item["score"]))
    return served.name, tokens, results[0] if single else results


async def tokenize(server: Server, request: Request, body: schemas.Tokenize) -> tuple[str, int, Any]:
    served = server.pick(body.model, "/tokenize")
    prompt = _prompt(served, body.prompt_name)
    texts = [prompt + text for text in _texts(body.inputs, "inputs")]
    tokens = await run_in_threadpool(served.tokenize, texts, body.add_special_tokens)
    return served.name, sum(len(t) for t in tokens), tokens


POST_ENDPOINTS: dict[str, tuple[type[BaseModel], Callable[..., Awaitable[tuple[str, int, Any]]]]] = {
    "/v1/embeddings": (schemas.OpenAIEmbeddings, openai_embeddings),
    "/embed": (schemas.Embed, embed),
    "/embed_sparse": (schemas.EmbedSparse, embed_sparse),
    "/rerank": (schemas.Rerank, rerank),
    "/predict": (schemas.Predict, predict),
    "/tokenize": (schemas.Tokenize, tokenize),
}


def create_app(config: ServeConfig) -> Starlette:
    """Load every model of `config` (each with its batcher thread) and return the ASGI app serving them.

    Raises:
        StRuntimeError (ManifestError, ModelFileError, ...): a folder cannot be loaded.
    """
    server = Server(config)
    api_key = config.api_key.encode() if config.api_key else None

    def error(exc: ApiError, path: str) -> JSONResponse:
        if path.startswith("/v1/"):
            code = {404: "model_not_found", 401: "invalid_api_key"}.get(exc.status)
            payload: Any = {"error": {"message": exc.message, "type": _OPENAI_TYPES.get(exc.status, "invalid_request_error"),
                                      "param": exc.param, "code": code}}
        else:
            payload = {"error": exc.message, "error_type": _TEI_TYPES.get(exc.status, "Validation")}
        headers = dict(exc.headers)
        if exc.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(payload, status_code=exc.status, headers=headers)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key):
            raise ApiError(401, "Missing or wrong API key: send the header 'Authorization: Bearer <key>'.")

    def post(path: str) -> Callable[[Request], Awaitable[Response]]:
        schema, handler = POST_ENDPOINTS[path]
        metrics = server.metrics
        in_progress = metrics.in_progress.labels(path)

        async def endpoint(request: Request) -> Response:
            start, model, status = time.perf_counter(), "-", 200
            in_progress.inc()
            try:
                authorize(request)
                if int(request.headers.get("content-length") or 0) > config.max_request_bytes:
                    raise ApiError(413, f"The body is larger than --max-request-bytes {config.max_request_bytes}.")
                raw = await request.body()
                if len(raw) > config.max_request_bytes:
                    raise ApiError(413, f"The body is larger than --max-request-bytes {config.max_request_bytes}.")
                try:
                    body = schema.model_validate_json(raw)
                except ValidationError as exc:
                    raise _validation_error(exc) from None
                model, tokens, payload = await handler(server, request, body)
                metrics.tokens.labels(model, path).inc(tokens)
                return FastJSONResponse(payload)
            except ApiError as exc:
                status = exc.status
                return error(exc, path)
            except Exception:
                status = 500
                logger.exception("st-serve: unexpected error on %s", path)
                return error(ApiError(500, "Internal server error; see the server log."), path)
            finally:
                in_progress.dec()
                metrics.requests.labels(model, path, str(status)).inc()
                metrics.latency.labels(model, path).observe(time.perf_counter() - start)

        return endpoint

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": sorted(server.models)})

    async def get_info(request: Request) -> Response:
        try:
            authorize(request)
            served = server.pick(request.query_params.get("model"), "/info")
        except ApiError as exc:
            return error(exc, "/info")
        limits = config.limits
        return JSONResponse(served.info() | {
            "models": sorted(server.models), "version": _version(), "max_batch_tokens": limits.max_batch_tokens,
            "max_batch_requests": limits.max_batch_size, "max_concurrent_requests": limits.max_queue,
            "max_input_tokens": limits.max_input_tokens, "max_client_batch_size": config.max_client_batch_size})

    async def list_models(request: Request) -> Response:
        try:
            authorize(request)
        except ApiError as exc:
            return error(exc, "/v1/models")
        return JSONResponse({"object": "list", "data": [
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
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(server.stop)

    routes = [Route(path, post(path), methods=["POST"]) for path in POST_ENDPOINTS]
    routes += [Route("/health", health), Route("/info", get_info), Route("/v1/models", list_models),
               Route("/metrics", metrics_endpoint)]
    middleware = [Middleware(CORSMiddleware, allow_origins=list(config.cors), allow_methods=["GET", "POST"],
                             allow_headers=["Authorization", "Content-Type"])] if config.cors else []
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.server = server
    return app


def app_from_env() -> Starlette:
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
