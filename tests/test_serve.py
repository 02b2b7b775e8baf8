"""st-serve: the real server (uvicorn in a subprocess, loopback, a free port) on tiny exported models, driven by the
official openai client and httpx; results must equal direct runtime calls. Every wait and loop is bounded."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("uvicorn", reason="the serve extra is needed: pip install -e '.[serve,test]'")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from conftest import build_tiny_transformer, varied_sentences  # noqa: E402

import st_runtime  # noqa: E402
from st_runtime.serve.batcher import Batcher, BatchLimits  # noqa: E402

API_KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
TEXTS = varied_sentences(80, seed=3)
ATOL = 1e-5  # batch mates change padding, hence the float summation order; nothing else differs


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_transformers_dir, bert_vocab, mlm_dir) -> dict[str, Path]:
    """A tiny bi-encoder (with a query prompt), a tiny one-label cross-encoder and a tiny SPLADE model, exported once."""
    import torch
    from helpers import tiny_tokenizer
    from sentence_transformers import CrossEncoder, SentenceTransformer, SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from sentence_transformers.sparse_encoder.modules import SpladePooling
    from transformers import BertConfig, BertForSequenceClassification

    from exporters import export

    root = tmp_path_factory.mktemp("serve")
    source = tiny_transformers_dir / "bert-0"
    if not source.exists():
        build_tiny_transformer(source, bert_vocab)
    transformer = Transformer(str(source), max_seq_length=48)
    bi = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")],
                             device="cpu", prompts={"query": "query: "})
    export(bi, root / "embed")
    tokenizer = tiny_tokenizer(bert_vocab, model_max_length=64)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(num_labels=1, initializer_range=0.2, vocab_size=tokenizer.vocab_size,
                                             hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                             intermediate_size=64, max_position_embeddings=64)).save_pretrained(root / "ce")
    tokenizer.save_pretrained(root / "ce")
    export(CrossEncoder(str(root / "ce"), device="cpu"), root / "rerank")
    splade = SparseEncoder(modules=[Transformer(str(mlm_dir), transformer_task="fill-mask", max_seq_length=48),
                                    SpladePooling("max")], device="cpu")
    export(splade, root / "splade")
    return {"embed": root / "embed", "rerank": root / "rerank", "splade": root / "splade"}


@pytest.fixture(scope="module")
def direct(folders):
    """The same folders loaded in this process: what the server's answers are compared with."""
    return {"embed": st_runtime.SentenceTransformer(folders["embed"], intra_op_num_threads=1),
            "rerank": st_runtime.CrossEncoder(folders["rerank"], intra_op_num_threads=1),
            "splade": st_runtime.SparseEncoder(folders["splade"], intra_op_num_threads=1)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`st-serve` in a subprocess on 127.0.0.1 and a free port; ready once /health answers (60 s at most)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"st-serve-{self.port}.log", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "st_runtime.serve.cli", *args, "--host", "127.0.0.1",
                                      "--port", str(self.port), "--threads", "1", "--log-level", "warning"],
                                     stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"st-serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"st-serve did not start within 60 s:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(folders):
    srv = ServerProcess([str(folders["embed"]), str(folders["rerank"]), str(folders["splade"]), "--max-queue", "128",
                         "--max-input-tokens", "2000", "--max-client-batch-size", "100", "--max-batch-requests", "16",
                         "--cors", "https://app.example"], env={"ST_SERVE_API_KEY": API_KEY})
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        yield c


def test_openai_client_embeddings_equal_direct_encode(server, direct):
    oa = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, timeout=60, max_retries=0)
    texts = TEXTS[:12]
    expected = direct["embed"].encode(texts)
    result = oa.embeddings.create(model="embed", input=texts)  # the client asks for base64 and decodes it
    np.testing.assert_allclose(np.array([d.embedding for d in result.data]), expected, atol=ATOL)
    assert [d.index for d in result.data] == list(range(12)) and result.model == "embed"
    tokens = int(direct["embed"].tokenizer.encode(texts)["attention_mask"].sum())
    assert result.usage.prompt_tokens == result.usage.total_tokens == tokens
    floats = oa.embeddings.create(model="embed", input="hello world", encoding_format="float", dimensions=8)
    np.testing.assert_allclose(floats.data[0].embedding, direct["embed"].encode("hello world", truncate_dim=8), atol=ATOL)
    assert {m.id for m in oa.models.list().data} == {"embed", "rerank", "splade"}
    with pytest.raises(openai.NotFoundError):
        oa.embeddings.create(model="nope", input="x")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).embeddings.create(model="embed", input="x")
    with pytest.raises(openai.UnprocessableEntityError):
        oa.embeddings.create(model="embed", input="x", dimensions=10_000)


def test_base64_is_little_endian_float32(client, direct):
    r = client.post("/v1/embeddings", json={"model": "embed", "input": ["a b c"], "encoding_format": "base64"})
    vector = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, direct["embed"].encode("a b c"), atol=ATOL)


def test_tei_endpoints_equal_direct_calls(client, direct):
    texts = TEXTS[20:30]
    r = client.post("/embed", json={"inputs": texts, "prompt_name": "query", "dimensions": 16})
    assert r.status_code == 200, r.text
    expected = direct["embed"].encode(texts, prompt_name="query", truncate_dim=16, normalize_embeddings=True)
    np.testing.assert_allclose(np.array(r.json()), expected, atol=ATOL)
    raw = client.post("/embed", json={"inputs": "one text", "normalize": False, "model": "embed"}).json()
    np.testing.assert_allclose(raw[0], direct["embed"].encode("one text"), atol=ATOL)

    sparse = client.post("/embed_sparse", json={"inputs": texts[:4]}).json()
    csr = direct["splade"].encode(texts[:4], sparse_format="numpy")
    for row, got in enumerate(sparse):
        ids, weights = csr.row(row)
        assert [item["index"] for item in got] == ids.tolist()
        np.testing.assert_allclose([item["value"] for item in got], weights, atol=ATOL)

    query, docs = "What is the capital of France?", texts
    ranked = client.post("/rerank", json={"query": query, "texts": docs, "top_n": 3, "return_text": True}).json()
    expected_rank = direct["rerank"].rank(query, docs, top_k=3, return_documents=True)
    assert [r["index"] for r in ranked] == [e["corpus_id"] for e in expected_rank]
    assert [r["text"] for r in ranked] == [e["text"] for e in expected_rank]
    np.testing.assert_allclose([r["score"] for r in ranked], [e["score"] for e in expected_rank], atol=ATOL)
    raw_scores = client.post("/rerank", json={"query": query, "texts": docs, "raw_scores": True}).json()
    logits = direct["rerank"].predict([(query, d) for d in docs], activation_fn="identity")
    np.testing.assert_allclose([r["score"] for r in sorted(raw_scores, key=lambda r: r["index"])], logits, atol=ATOL)

    pairs = [[query, d] for d in docs[:3]]
    predicted = client.post("/predict", json={"inputs": pairs}).json()
    np.testing.assert_allclose([p[0]["score"] for p in predicted], direct["rerank"].predict(pairs), atol=ATOL)
    single = client.post("/predict", json={"inputs": pairs[0]}).json()
    assert single[0]["label"] == "LABEL_0"

    tokens = client.post("/tokenize", json={"inputs": ["hello world"]}).json()
    assert [t["text"] for t in tokens[0]] == ["[CLS]", "hello", "world", "[SEP]"] and tokens[0][1]["start"] == 0


def test_health_info_metrics_and_cors(server, client):
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200  # no key needed
    info = client.get("/info", params={"model": "rerank"}).json()
    assert info["task"] == "text-ranking" and info["variant"] == "fp32" and info["precision"] == "fp32"
    assert info["max_seq_length"] and "accuracy" in info and info["models"] == ["embed", "rerank", "splade"]
    assert client.get("/info").json()["dimension"] == 32
    client.post("/embed", json={"inputs": ["metrics"]})
    text = client.get("/metrics").text
    for name in ("st_serve_requests_total", "st_serve_request_duration_seconds_bucket", "st_serve_batch_size_bucket",
                 "st_serve_queue_depth", "st_serve_input_tokens_total"):
        assert name in text, name
    assert 'endpoint="/embed",model="embed",status="200"' in text
    preflight = httpx.options(server.url + "/embed", timeout=10, headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"


@pytest.mark.parametrize(("path", "body", "status", "field"), [
    ("/embed", b"{not json", 422, "JSON"),
    ("/embed", {"inputs": 5}, 422, "inputs"),
    ("/embed", {"inputs": ["ok", None]}, 422, "item 1"),
    ("/embed", {"inputs": "x", "normalize": "yes"}, 422, "normalize"),
    ("/embed", {"inputs": "x", "prompt_name": "nope"}, 422, "prompt_name"),
    ("/rerank", {"query": "q"}, 422, "texts"),
    ("/predict", {"inputs": [["only one"]]}, 422, "item 0"),
    ("/v1/embeddings", {"input": "x"}, 422, "model"),
    ("/embed", {"inputs": ["x"] * 101}, 413, "--max-client-batch-size"),
    ("/embed", {"inputs": [" ".join(["word"] * 40)] * 60}, 413, "--max-input-tokens"),
    ("/embed", {"inputs": ["ok", " ".join(["word"] * 80)], "truncate": False}, 413, "input 1"),
    ("/embed", {"inputs": "x", "model": "nope"}, 404, "nope"),
    ("/rerank", {"query": "q", "texts": ["a"], "model": "embed"}, 400, "text-ranking"),
])
def test_errors_name_the_problem(client, path, body, status, field):
    kwargs = {"content": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    r = client.post(path, **kwargs)
    assert r.status_code == status, r.text
    payload = r.json()
    message = payload["error"]["message"] if path.startswith("/v1/") else payload["error"]
    assert field in message and "Traceback" not in message


def test_api_key_is_required(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        r = httpx.post(server.url + "/embed", json={"inputs": "x"}, headers=headers, timeout=10)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(server.url + "/metrics", timeout=10).status_code == 401


def test_concurrent_clients_are_batched_and_get_their_own_results(server, direct):
    """32 clients x 20 requests of 1-3 texts: every answer equals a direct encode, and graph runs merged requests."""
    rng = np.random.default_rng(0)
    plans = [[TEXTS[int(s) : int(s) + int(n)] for s, n in zip(rng.integers(0, 70, 20), rng.integers(1, 4, 20),
                                                               strict=True)] for _ in range(32)]

    async def one_client(http, plan):
        out = []
        for texts in plan:
            r = await http.post("/v1/embeddings", json={"model": "embed", "input": texts})
            assert r.status_code == 200, r.text
            out.append((texts, np.array([d["embedding"] for d in r.json()["data"]])))
        return out

    async def run_all():
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60, limits=limits) as http:
            return await asyncio.wait_for(asyncio.gather(*(one_client(http, p) for p in plans)), timeout=120)

    before = _metric(server, "st_serve_batch_size_count", 'model="embed"')
    results = asyncio.run(run_all())
    for texts, embeddings in (item for client_results in results for item in client_results):
        np.testing.assert_allclose(embeddings, direct["embed"].encode(texts), atol=ATOL)
    runs = _metric(server, "st_serve_batch_size_count", 'model="embed"') - before
    total = sum(len(texts) for plan in plans for texts in plan)
    assert runs < 640, f"{runs} graph runs for 640 concurrent requests ({total} texts): nothing was merged"


def test_full_queue_answers_429_with_retry_after(server):
    """Many concurrent 100-text requests against a 128-input queue: some are turned away at once, none fails."""

    async def burst():
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as http:
            body = {"inputs": [TEXTS[i % 40] for i in range(100)], "model": "embed"}
            await asyncio.gather(*(http.get("/health") for _ in range(24)))  # open the connections first
            return await asyncio.wait_for(asyncio.gather(*(http.post("/embed", json=body) for _ in range(24))), 120)

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429} and 429 in codes and 200 in codes, codes
    busy = next(r for r in responses if r.status_code == 429)
    assert busy.headers["retry-after"] == "1" and busy.json()["error_type"] == "Overloaded"


def test_sigterm_finishes_in_flight_requests_and_exits_0(folders, direct):
    srv = ServerProcess([str(folders["embed"]), "--max-batch-requests", "1"])
    body = {"inputs": TEXTS * 2, "normalize": False}  # 160 graph runs per request
    results: list[tuple[float, int, list]] = []

    def call() -> None:
        r = httpx.post(srv.url + "/embed", json=body, timeout=60)
        results.append((time.monotonic(), r.status_code, r.json()))

    try:
        threads = [threading.Thread(target=call) for _ in range(6)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while (_metric(srv, "st_serve_requests_in_progress", '"/embed"') < 6 and not results
               and time.monotonic() < deadline):
            time.sleep(0.05)  # until all six are received (a connection not yet read is closed by the shutdown)
        signalled = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert srv.proc.wait(60) == 0, srv.output()
    finally:
        srv.stop()
    assert len(results) == 6 and all(status == 200 for _, status, _ in results)
    assert any(done > signalled for done, _, _ in results), "no request was still running at SIGTERM"
    np.testing.assert_allclose(np.array(results[0][2]), direct["embed"].encode(TEXTS * 2), atol=ATOL)


def _metric(server, name: str, label: str) -> float:
    text = httpx.get(server.url + "/metrics", headers=AUTH, timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name) and label in line)


# -- the batcher alone: splitting, packing, dropping, failures ------------------------------------------------------

def _batcher(limits: BatchLimits, gate: threading.Event | None = None):
    runs: list[list] = []

    def run(key, inputs):
        runs.append(list(inputs))
        if gate is not None:
            gate.wait(10)
        if "boom" in inputs:
            raise RuntimeError("boom")
        return [f"{key}:{x}" for x in inputs]

    return Batcher("t", run, lambda key, items, options: np.array([len(x) for x in items]), limits), runs


def test_batcher_splits_a_large_request_and_packs_by_tokens():
    batcher, runs = _batcher(BatchLimits(max_batch_tokens=12, max_batch_size=4, max_queue=100))

    async def go():
        job = batcher.submit("k", ["aaaa", "b", "cc", "dddddd", "e", "ff", "g"])
        return await asyncio.wait_for(job.future, 10)

    results, tokens = asyncio.run(go())
    batcher.stop()
    assert results == [f"k:{x}" for x in ["aaaa", "b", "cc", "dddddd", "e", "ff", "g"]] and tokens == 17
    assert all((len(r) <= 4 and len(r) * max(map(len, r)) <= 12) or len(r) == 1 for r in runs)
    assert sorted(x for r in runs for x in r) == sorted(["aaaa", "b", "cc", "dddddd", "e", "ff", "g"])


def test_batcher_drops_the_work_of_gone_clients_and_isolates_failures():
    gate = threading.Event()
    batcher, runs = _batcher(BatchLimits(max_batch_tokens=100, max_batch_size=2, max_queue=100), gate)

    async def go():
        first = batcher.submit("k", ["x"])
        await asyncio.sleep(0.2)  # the worker now runs ["x"] and waits on the gate
        gone = batcher.submit("k", ["gone1", "gone2", "gone3"])
        failing = batcher.submit("other", ["boom"])
        kept = batcher.submit("k", ["y"])
        batcher.drop(gone)
        gate.set()
        with pytest.raises(RuntimeError, match="boom"):
            await asyncio.wait_for(failing.future, 10)
        return await asyncio.wait_for(first.future, 10), await asyncio.wait_for(kept.future, 10)

    first, kept = asyncio.run(go())
    batcher.stop()
    assert first == (["k:x"], 1) and kept == (["k:y"], 1)
    assert not any(x.startswith("gone") for r in runs for x in r)


def test_model_errors_are_500_without_traceback(folders, monkeypatch):
    from st_runtime.serve import ModelConfig, ServeConfig, create_app

    app = create_app(ServeConfig(models=(ModelConfig("embed", str(folders["embed"])),), threads=1))
    served = app.server.models["embed"]

    def broken(*args, **kwargs):
        raise RuntimeError("Traceback (most recent call last): secret internals")

    monkeypatch.setattr(served.model, "encode", broken)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            return await http.post("/embed", json={"inputs": ["x"]}), await http.post("/v1/embeddings",
                                                                                      json={"model": "embed", "input": "x"})

    try:
        tei, oa = asyncio.run(go())
    finally:
        app.server.stop()
    assert tei.status_code == 500 and tei.json()["error_type"] == "Backend"
    assert oa.status_code == 500 and oa.json()["error"]["type"] == "server_error"
    for r in (tei, oa):
        assert "Traceback" not in r.text and "secret" not in r.text and "RuntimeError" in r.text
    json.loads(tei.text)


async def _asgi_post(app, path: str, payload: dict, gone: asyncio.Event | None = None) -> list[dict]:
    """POST through the ASGI app itself; `gone` set: the client disconnects (else it never does)."""
    body = json.dumps(payload).encode()
    scope = {"type": "http", "method": "POST", "path": path,
             "headers": [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive() -> dict:
        if messages:
            return messages.pop()
        await (gone or asyncio.Event()).wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


@pytest.fixture
def embed_app(folders, monkeypatch):
    """The ASGI app on the tiny bi-encoder, its encode recording (texts, thread) per graph run, held while `gate` is
    clear."""
    from st_runtime.serve import ModelConfig, ServeConfig, create_app

    app = create_app(ServeConfig(models=(ModelConfig("embed", str(folders["embed"])),), threads=1))
    served = app.server.models["embed"]
    encode, gate, runs = served.model.encode, threading.Event(), []
    gate.set()

    def recorded_encode(texts, **kwargs):
        runs.append((list(texts), threading.current_thread().name))
        gate.wait(20)
        return encode(texts, **kwargs)

    monkeypatch.setattr(served.model, "encode", recorded_encode)
    yield app, gate, runs
    gate.set()
    app.server.stop()


def test_a_lone_short_request_runs_at_once_and_requests_arriving_together_share_batches(embed_app, direct):
    app, _, runs = embed_app

    async def go():
        lone = await _asgi_post(app, "/embed", {"inputs": [TEXTS[0]], "normalize": False})
        together = await asyncio.gather(*(_asgi_post(app, "/embed", {"inputs": [t], "normalize": False})
                                          for t in TEXTS[1:9]))
        after = await _asgi_post(app, "/embed", {"inputs": [TEXTS[9]], "normalize": False})
        return lone, together, after

    lone, together, after = asyncio.run(go())
    assert runs[0] == ([TEXTS[0]], threading.main_thread().name)  # on the event loop, past the queue
    assert all(thread.startswith("st-serve-") for _, thread in runs[1:])  # the batcher's thread, also for `after`:
    assert runs[-1][0] == [TEXTS[9]]  # concurrent traffic a moment ago, so it takes the queue
    assert len(runs) - 2 < 8, f"8 requests that arrived together ran in {len(runs) - 2} graph runs"
    for text, sent in zip(TEXTS[:10], [lone, *together, after], strict=True):
        assert sent[0]["status"] == 200
        np.testing.assert_allclose(json.loads(sent[1]["body"]), direct["embed"].encode([text]), atol=ATOL)


def test_a_client_that_disconnects_loses_its_queued_work(embed_app):
    """Request B waits behind A (held in its graph run); B's client goes away; B's inputs never reach the model and B's
    wait ends (499), while A is answered."""
    app, gate, runs = embed_app
    gate.clear()

    async def go() -> tuple[list[dict], list[dict]]:
        a = asyncio.ensure_future(_asgi_post(app, "/embed", {"inputs": ["held 1", "held 2"]}))
        while not runs:
            await asyncio.sleep(0.01)
        gone = asyncio.Event()
        b = asyncio.ensure_future(_asgi_post(app, "/embed", {"inputs": ["never run 1", "never run 2"]}, gone))
        await asyncio.sleep(0.1)  # B is queued and listening for its client
        gone.set()
        b_sent = await asyncio.wait_for(b, 10)
        gate.set()
        return await asyncio.wait_for(a, 20), b_sent

    a_sent, b_sent = asyncio.run(go())
    assert a_sent[0]["status"] == 200 and b_sent[0]["status"] == 499
    assert [texts for texts, _ in runs] == [["held 1", "held 2"]]
    assert app.server.models["embed"].batcher.queue_depth == 0


def test_serve_never_imports_torch(folders):
    code = ("import sys\n"
            "for name in ('torch', 'transformers', 'sentence_transformers', 'optimum'):\n"
            "    sys.modules[name] = None\n"
            "from st_runtime.serve import ModelConfig, ServeConfig, create_app\n"
            f"app = create_app(ServeConfig(models=(ModelConfig('m', {str(folders['embed'])!r}),), threads=1))\n"
            "app.server.stop()\n"
            "import st_runtime.serve.cli\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
