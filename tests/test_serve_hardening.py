"""st-serve against hostile or careless requests (issue 25): every endpoint under the same limits, JSON bodies only,
allowed Host names, slow and too many connections, no machine paths in /info, a clear answer past the shutdown grace,
no NaN in an answer, queue and client limits that agree. In-process ASGI where the app decides; a real server on
127.0.0.1 where uvicorn's connection handling is the point. Every wait and loop is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import signal
import socket
import threading
import time
import tracemalloc

import numpy as np
import pytest

pytest.importorskip("uvicorn", reason="the serve extra is needed: pip install -e '.[serve,test]'")
httpx = pytest.importorskip("httpx")

from test_serve import TEXTS, ServerProcess, _metric, folders  # noqa: E402, F401  (folders: the module fixture)

from st_runtime.errors import ArgumentError  # noqa: E402
from st_runtime.serve import BatchLimits, ModelConfig, ServeConfig, create_app  # noqa: E402

# Texts in several scripts: Latin, Cyrillic, Greek, Arabic, Devanagari, CJK, emoji, combining marks.
SCRIPTS = ["The quick brown fox", "Съешь же ещё этих мягких булок", "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία",
           "نص حكيم له سر قاطع", "ऋषियों को सताने वाले दुष्ट", "我能吞下玻璃而不伤身体", "🙂🚀🌍 ok", "e\u0301a\u0300o\u0302"]


@pytest.fixture
def make_app(folders):  # noqa: F811
    """create_app on the tiny bi-encoder (and the reranker), with ServeConfig fields as given; stopped after."""
    apps = []

    def make(**fields):
        models = (ModelConfig("embed", str(folders["embed"])), ModelConfig("rerank", str(folders["rerank"])))
        app = create_app(ServeConfig(models=fields.pop("models", models), threads=1, **fields))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.server.stop()


def call(app, requests: list[tuple[str, str, dict]]) -> list[httpx.Response]:
    """Send (method, path, httpx kwargs) requests through the ASGI app, concurrently."""

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            return await asyncio.wait_for(asyncio.gather(*(http.request(m, p, **kw) for m, p, kw in requests)), 120)

    return asyncio.run(go())


def message(response: httpx.Response) -> str:
    payload = response.json()
    return payload["error"]["message"] if isinstance(payload["error"], dict) else payload["error"]


# -- 1. /tokenize under the same limits as every endpoint ----------------------------------------------------------

def test_tokenize_honours_the_client_batch_size(make_app):
    app = make_app()
    r, = call(app, [("POST", "/tokenize", {"json": {"inputs": ["x"] * 2049}})])
    assert r.status_code == 413 and "--max-client-batch-size" in message(r)


def test_tokenize_bounds_characters_before_tokenizing(make_app):
    app = make_app(max_tokenize_chars=1000)
    texts = [SCRIPTS[i % len(SCRIPTS)] for i in range(200)]
    fits = texts[: next(n for n in range(len(texts), 0, -1) if sum(map(len, texts[:n])) <= 1000)]
    over, ok = call(app, [("POST", "/tokenize", {"json": {"inputs": texts}}),
                          ("POST", "/tokenize", {"json": {"inputs": fits}})])
    assert over.status_code == 413 and "--max-tokenize-chars 1000" in message(over)
    assert ok.status_code == 200 and len(ok.json()) == len(fits)
    tokenizer = app.server.models["embed"]._untruncated()
    for text, tokens in zip(fits, ok.json(), strict=True):
        encoding = tokenizer.encode(text)
        assert [t["id"] for t in tokens] == encoding.ids
        assert [t["text"] for t in tokens if not t["special"]] == [text[s:e] for (s, e), special in
                                                                   zip(encoding.offsets, encoding.special_tokens_mask,
                                                                       strict=True) if not special]


def test_tokenize_honours_max_input_tokens(make_app):
    app = make_app(limits=BatchLimits(max_input_tokens=20))
    over, ok = call(app, [("POST", "/tokenize", {"json": {"inputs": [" ".join(SCRIPTS)]}}),
                          ("POST", "/tokenize", {"json": {"inputs": ["hello world"]}})])
    assert over.status_code == 413 and "--max-input-tokens 20" in message(over)
    assert ok.status_code == 200


def test_tokenize_waits_in_the_models_queue(make_app, monkeypatch):
    """With the model's queue full, /tokenize is turned away (429) like any other request, instead of running."""
    app = make_app(limits=BatchLimits(max_queue=4), max_client_batch_size=4)
    served, gate, running = app.server.models["embed"], threading.Event(), threading.Event()
    encode = served.model.encode

    def held(texts, **kwargs):
        running.set()
        gate.wait(20)
        return encode(texts, **kwargs)

    monkeypatch.setattr(served.model, "encode", held)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
            first = asyncio.ensure_future(http.post("/embed", json={"inputs": ["a " * 300, "b"]}))  # queued, held
            while not running.is_set():
                await asyncio.sleep(0.01)
            second = asyncio.ensure_future(http.post("/embed", json={"inputs": ["c", "d", "e", "f"]}))  # fills it
            while served.batcher.queue_depth < 4:
                await asyncio.sleep(0.01)
            tokenized = await http.post("/tokenize", json={"inputs": ["hello"]})
            gate.set()
            return tokenized, await asyncio.wait_for(first, 30), await asyncio.wait_for(second, 30)

    try:
        tokenized, first, second = asyncio.run(go())
    finally:
        gate.set()
    assert tokenized.status_code == 429 and tokenized.json()["error_type"] == "Overloaded"
    assert first.status_code == second.status_code == 200


def test_tokenize_memory_is_a_small_multiple_of_its_answer(make_app):
    """The answer is built as JSON text a few thousand tokens at a time: the request's Python memory peak stays a
    small multiple of the answer's size (the per-token dicts of before cost about ten times it)."""
    app = make_app()
    text = " ".join(SCRIPTS * 600)[:250_000]  # under the default --max-tokenize-chars (262144)
    call(app, [("POST", "/tokenize", {"json": {"inputs": ["warm up"]}})])
    tracemalloc.start()
    try:
        r, = call(app, [("POST", "/tokenize", {"json": {"inputs": [text, *SCRIPTS]}})])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r.status_code == 200 and sum(len(t) for t in r.json()) > 50_000
    assert peak < 6 * len(r.content), f"peak {peak} bytes for an answer of {len(r.content)}"


# -- 2. JSON bodies only -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data",
                                          None])
@pytest.mark.parametrize("path", ["/embed", "/v1/embeddings", "/tokenize"])
def test_bodies_that_are_not_declared_json_get_415(make_app, content_type, path):
    app = make_app()
    body = json.dumps({"inputs": "x", "input": "x", "model": "embed"}).encode()
    headers = {} if content_type is None else {"Content-Type": content_type}
    r, = call(app, [("POST", path, {"content": body, "headers": headers})])
    assert r.status_code == 415, r.text
    assert "Content-Type: application/json" in message(r) and "Traceback" not in r.text
    if path.startswith("/v1/"):
        assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON",
                                          "application/vnd.api+json"])
def test_json_content_types_are_accepted(make_app, content_type):
    app = make_app()
    r, = call(app, [("POST", "/embed", {"content": b'{"inputs": "x"}', "headers": {"Content-Type": content_type}})])
    assert r.status_code == 200, r.text


# -- 3. allowed Host names -------------------------------------------------------------------------------------------

def test_only_allowed_host_names_are_answered(make_app):
    app = make_app(allowed_hosts=("localhost", "127.0.0.1", "::1", "*.example.com"))
    cases = {"127.0.0.1:8080": 200, "localhost": 200, "[::1]:8080": 200, "LOCALHOST.": 200, "api.example.com": 200,
             "example.com": 400, "attacker.test": 400, "127.0.0.1.attacker.test": 400, "": 400}
    responses = call(app, [("GET", "/health", {"headers": {"Host": host}}) for host in cases])
    posts = call(app, [("POST", "/v1/embeddings", {"json": {"model": "embed", "input": "x"},
                                                    "headers": {"Host": "attacker.test:8080"}})])
    for (host, status), r in zip(cases.items(), responses, strict=True):
        assert r.status_code == status, (host, r.text)
    refused = responses[list(cases).index("attacker.test")]
    assert "--allowed-hosts" in message(refused) and refused.json()["error_type"] == "Validation"
    assert posts[0].status_code == 400 and "--allowed-hosts" in posts[0].json()["error"]["message"]


def test_loopback_servers_answer_loopback_names_only_by_default():
    from st_runtime.serve.cli import default_allowed_hosts

    assert default_allowed_hosts("127.0.0.1") == ("localhost", "127.0.0.1", "::1")
    assert default_allowed_hosts("127.0.0.2") == ("localhost", "127.0.0.1", "::1", "127.0.0.2")
    assert set(default_allowed_hosts("::1")) == set(default_allowed_hosts("localhost")) == {"localhost", "127.0.0.1",
                                                                                             "::1"}
    assert default_allowed_hosts("0.0.0.0") == default_allowed_hosts("192.168.1.5") == ("*",)


# -- 5 and 7. /info without machine paths; no NaN breaks an answer ---------------------------------------------------

@pytest.fixture
def nan_folder(folders, tmp_path):  # noqa: F811
    """The tiny bi-encoder with NaN accuracy and parity in its manifest and its source an absolute path."""
    folder = tmp_path / "embed"
    shutil.copytree(folders["embed"], folder)
    manifest = json.loads((folder / "st_runtime.json").read_text())
    manifest["variants"][0]["accuracy"] = {"max_abs_diff": math.nan, "min_cosine": math.nan}
    manifest["parity"]["max_abs_diff"] = math.nan
    manifest["source"]["name_or_path"] = "/home/exporter/private/models/my-minilm"
    (folder / "st_runtime.json").write_text(json.dumps(manifest))
    return folder


def test_info_shows_no_machine_path_and_nan_as_null(make_app, nan_folder):
    app = make_app(models=(ModelConfig("embed", str(nan_folder)),))
    info, models = call(app, [("GET", "/info", {}), ("GET", "/v1/models", {})])
    assert info.status_code == 200 and models.status_code == 200, info.text
    data = info.json()
    assert data["source"] == "my-minilm" and data["folder"] == "embed"
    assert "/home" not in info.text and str(nan_folder.parent) not in info.text and "NaN" not in info.text
    assert data["accuracy"] == {"max_abs_diff": None, "min_cosine": None} and data["parity"]["max_abs_diff"] is None


def test_nan_model_outputs_are_a_500_not_a_null(make_app, monkeypatch):
    app = make_app()
    embed, rerank = app.server.models["embed"].model, app.server.models["rerank"].model
    real_encode, real_predict = embed.encode, rerank.predict

    def nan_encode(texts, **kwargs):  # requests share batches: each text carries its own fault
        out = real_encode(texts, **kwargs)
        out[[text == "b" for text in texts], 0] = np.nan
        return out

    def inf_predict(pairs, **kwargs):
        out = real_predict(pairs, **kwargs)
        out[[text == "a" for _, text in pairs]] = np.nan
        out[[text == "b" for _, text in pairs]] = np.inf
        return out

    monkeypatch.setattr(embed, "encode", nan_encode)
    monkeypatch.setattr(rerank, "predict", inf_predict)
    responses = call(app, [
        ("POST", "/embed", {"json": {"inputs": ["a", "b"]}}),
        ("POST", "/v1/embeddings", {"json": {"model": "embed", "input": ["a", "b"], "encoding_format": "float"}}),
        ("POST", "/v1/embeddings", {"json": {"model": "embed", "input": ["a", "b"], "encoding_format": "base64"}}),
        ("POST", "/rerank", {"json": {"query": "q", "texts": ["a", "b", "c"]}}),
        ("POST", "/predict", {"json": {"inputs": ["q", "a"]}})])
    for r in responses:
        assert r.status_code == 500, r.text
        assert "NaN or infinity" in message(r)


# -- 8. queue and client limits agree ------------------------------------------------------------------------------------

def test_a_request_within_the_default_client_limit_can_queue(make_app):
    app = make_app()
    texts = [TEXTS[i % len(TEXTS)] for i in range(1500)]
    r, = call(app, [("POST", "/embed", {"json": {"inputs": texts}})])
    assert r.status_code == 200, r.text[:300]
    assert len(r.json()) == 1500


def test_a_queue_smaller_than_the_client_limit_is_refused(folders, tmp_path):  # noqa: F811
    with pytest.raises(ArgumentError, match="--max-queue 100 is less than --max-client-batch-size 200"):
        ServeConfig(models=(), limits=BatchLimits(max_queue=100), max_client_batch_size=200)
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "st_runtime.serve.cli", str(folders["embed"]), "--max-queue", "100",
                           "--max-client-batch-size", "200"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and done.stderr.startswith("st-serve: error: ")


# -- 3 and 4. a real server: Host names, slow clients, too many connections --------------------------------------------

def _raw(port: int, data: bytes = b"", timeout: float = 30) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if data:
        sock.sendall(data)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket's timeout bounds each wait)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return b"".join(chunks)


def _status_and_json(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.fixture(scope="module")
def slow_server(folders):  # noqa: F811
    srv = ServerProcess([str(folders["embed"]), "--header-timeout", "1", "--body-timeout", "1",
                         "--max-request-bytes", "4096"])
    yield srv
    assert srv.stop() == 0


def test_a_loopback_server_refuses_other_host_names(slow_server):
    ok = httpx.post(slow_server.url + "/embed", json={"inputs": "x"}, timeout=30)
    rebound = httpx.post(slow_server.url + "/embed", json={"inputs": "x"}, headers={"Host": "attacker.test"},
                         timeout=30)
    assert ok.status_code == 200 and rebound.status_code == 400 and "--allowed-hosts" in rebound.json()["error"]


def test_headers_that_trickle_in_get_408_and_the_connection_closes(slow_server):
    """One header byte every 0.2 s: uvicorn's keep-alive timer never fires on it; --header-timeout does."""
    sock = _raw(slow_server.port, b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    stop = threading.Event()

    def trickle():
        for _ in range(100):  # 20 s at most
            if stop.wait(0.2):
                return
            try:
                sock.sendall(b"X")
            except OSError:
                return

    thread = threading.Thread(target=trickle)
    thread.start()
    try:
        raw = _read_all(sock)
    finally:
        stop.set()
        thread.join(10)
    status, payload = _status_and_json(raw)
    assert status == 408 and "--header-timeout 1" in payload["error"]


def test_a_body_that_does_not_arrive_gets_408(slow_server):
    head = (b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{\"inputs\": ")
    status, payload = _status_and_json(_read_all(_raw(slow_server.port, head)))
    assert status == 408 and "--body-timeout 1" in payload["error"] and payload["error_type"] == "Validation"


def test_an_endless_body_gets_413_and_the_connection_closes(slow_server):
    """A chunked body that never ends: 413 once it passes --max-request-bytes, and the server stops reading it (the
    connection is closed) instead of discarding it for as long as the client sends."""
    sock = _raw(slow_server.port, b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n")
    chunk, sent = b"%x\r\n%s\r\n" % (1024, b" " * 1024), 0
    with contextlib.suppress(OSError):
        while sent < 2000:  # 2 MiB at most
            sock.sendall(chunk)
            sent += 1
            time.sleep(0.002)
    status, payload = _status_and_json(_read_all(sock))
    assert status == 413 and "--max-request-bytes 4096" in payload["error"]
    assert sent < 2000, "the server read the whole endless body"


def test_oversized_headers_get_431(slow_server):
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Pad: " + b"a" * (70 << 10) + b"\r\n\r\n"
    sock = _raw(slow_server.port)
    with contextlib.suppress(OSError):  # the server may close before all of it is sent
        sock.sendall(head)
    status, payload = _status_and_json(_read_all(sock))
    assert status == 431 and "headers" in payload["error"]


def test_connections_past_the_limit_get_503_and_service_resumes(folders):  # noqa: F811
    """8 idle connections hold an 8-connection server: the next client is told 503 at once (in the server's format),
    not left waiting; once they go, clients are served again."""
    srv = ServerProcess([str(folders["embed"]), "--max-connections", "8", "--header-timeout", "60"])
    try:
        idle = [_raw(srv.port) for _ in range(8)]
        time.sleep(0.5)
        r = httpx.post(srv.url + "/embed", json={"inputs": "x"}, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert "--max-connections" in r.json()["error"] and r.json()["error_type"] == "Unhealthy"
        for sock in idle:
            sock.close()
        deadline, status = time.monotonic() + 30, None
        while time.monotonic() < deadline and status != 200:
            status = httpx.post(srv.url + "/embed", json={"inputs": "x"}, timeout=30).status_code
            time.sleep(0.1)
        assert status == 200
    finally:
        assert srv.stop() == 0


def test_the_open_file_limit_is_raised_to_fit_the_connection_cap(monkeypatch):
    """Past the open-file limit accept() fails and clients wait unanswered: the CLI raises the soft limit to fit
    --max-connections, and refuses a cap the hard limit cannot hold (one line, before anything listens)."""
    import resource

    from st_runtime.serve import cli

    limits, calls = {"soft": 1024, "hard": 4096}, []
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (limits["soft"], limits["hard"]))
    monkeypatch.setattr(resource, "setrlimit", lambda kind, value: calls.append(value))
    cli.ensure_file_limit(1000)
    assert calls == [(1128, 4096)]
    limits["hard"] = 1100
    with pytest.raises(ArgumentError, match="--max-connections 1000 needs about 1128 open files"):
        cli.ensure_file_limit(1000)
    calls.clear()
    cli.ensure_file_limit(500)  # 1024 is enough: left alone
    assert calls == []


# -- 6. past the shutdown grace period: 503 in the server's format ---------------------------------------------------

def test_requests_still_running_past_the_grace_period_get_503(folders):  # noqa: F811
    srv = ServerProcess([str(folders["embed"]), "--max-batch-requests", "1", "--max-queue", "4096",
                         "--graceful-timeout", "0.5", "--log-level", "info"])
    body = {"inputs": TEXTS * 12, "normalize": False}  # 960 graph runs per request
    results: list[httpx.Response] = []

    def post() -> None:
        results.append(httpx.post(srv.url + "/embed", json=body, timeout=120))

    threads = [threading.Thread(target=post) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while _metric(srv, "st_serve_requests_in_progress", '"/embed"') < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        srv.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        assert srv.proc.wait(60) == 0
        log = srv.output()
    finally:
        srv.stop()
    statuses = sorted(r.status_code for r in results)
    assert len(results) == 3 and set(statuses) <= {200, 503} and 503 in statuses, statuses
    for r in results:
        if r.status_code == 503:
            assert "--graceful-timeout" in r.json()["error"] and r.json()["error_type"] == "Unhealthy"
    assert "Traceback" not in log and "Exception in ASGI application" not in log


# -- long inputs in any script (the tokenizer's exact cut and id truncation; tests/test_long_inputs.py) ------------

def test_a_long_pair_without_ascii_boundaries_is_scored_not_fatal(make_app, folders):  # noqa: F811
    """The audit's /rerank of ("¡" * 60000) twice aborted the server (quadratic pair truncation in tokenizers); now
    it is scored like any pair, and as the runtime scores it directly."""
    import st_runtime

    app = make_app()
    query = "¡" * 60_000
    texts = ["¡" * 60_000, "東京\u3000" * 20_000, "short"]
    r, = call(app, [("POST", "/rerank", {"json": {"query": query, "texts": texts, "raw_scores": True}})])
    assert r.status_code == 200, r.text
    scores = {item["index"]: item["score"] for item in r.json()}
    direct = st_runtime.CrossEncoder(folders["rerank"], intra_op_num_threads=1)
    expected = direct.predict([(query, t) for t in texts], activation_fn="identity")
    np.testing.assert_allclose([scores[i] for i in range(3)], expected, atol=1e-5)


def test_text_that_must_be_tokenized_whole_is_bounded_per_request(make_app):
    """A run without any boundary the tokenizer splits at (one 'word' here) is tokenized whole: its characters count
    against --max-uncut-chars; text that can be cut, however long, does not."""
    app = make_app(limits=BatchLimits(max_uncut_chars=100_000))
    over, cut, truncate = call(app, [
        ("POST", "/embed", {"json": {"inputs": ["ok", "x" * 150_000]}}),
        ("POST", "/v1/embeddings", {"json": {"model": "embed", "input": ["¡" * 1_000_000, "語\u3000" * 500_000]}}),
        ("POST", "/embed", {"json": {"inputs": ["ok", "word " * 200_000], "truncate": False}}),
    ])
    assert over.status_code == 413 and "input 1" in message(over) and "--max-uncut-chars" in message(over)
    assert cut.status_code == 200, cut.text
    assert truncate.status_code == 413 and "input 1" in message(truncate)


def test_a_request_is_tokenized_once(make_app, monkeypatch):
    """The count for `usage` and the limits and the graph run share one tokenization of each input."""
    from st_runtime.tokenizer import TextTokenizer

    seen: list[int] = []
    encode = TextTokenizer._encode
    monkeypatch.setattr(TextTokenizer, "_encode", lambda self, piece, *a: seen.append(len(piece)) or encode(self, piece, *a))
    app = make_app()
    embed, rerank = call(app, [("POST", "/embed", {"json": {"inputs": SCRIPTS}})]) + call(
        app, [("POST", "/rerank", {"json": {"query": "which one?", "texts": SCRIPTS}})])
    assert embed.status_code == rerank.status_code == 200
    assert sum(seen) == 2 * len(SCRIPTS), seen
