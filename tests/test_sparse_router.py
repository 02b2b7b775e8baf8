"""Inference-free SPLADE: a SparseEncoder whose Router sends queries to SparseStaticEmbedding (a static weight per
vocabulary token, no transformer) and documents to an MLM transformer + SpladePooling. One graph per route; checked
against sentence-transformers' SparseEncoder run in the same test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import varied_sentences
from helpers import run_blocking_imports
from sentence_transformers import SparseEncoder as TorchSparseEncoder
from sentence_transformers.sparse_encoder.modules import MLMTransformer, Router, SparseStaticEmbedding, SpladePooling

import st_runtime
from exporters import UnsupportedModelError, export
from exporters.cli import main as st_export_main

ATOL = 1e-5
SPECIAL_TEXTS = [  # special tokens spelled out, repeated tokens, the pad token inside a text that gets padded
    "[CLS] hello [SEP] [MASK] world",
    "the the the cat the",
    "[PAD] a padded text [PAD]",
    "[PAD]",
    "",
    "a much longer text that is the longest in its batch, so it has no padding at all, with [PAD] inside it too",
    " ".join(["words past the truncation length"] * 20),
]


def inference_free_splade(mlm_dir: Path, **kwargs) -> TorchSparseEncoder:
    """Router.for_query_document: SparseStaticEmbedding with random IDF weights (sharing the MLM's tokenizer, as
    sentence-transformers' own example does) for queries; MLMTransformer + SpladePooling for documents (default)."""
    document = MLMTransformer(str(mlm_dir), max_seq_length=24)
    torch.manual_seed(1)
    idf = torch.rand(document.tokenizer.vocab_size) * 5
    idf[torch.rand(idf.shape) < 0.1] = 0.0  # tokens without a weight, as in a real IDF table
    query = SparseStaticEmbedding(tokenizer=document.tokenizer, weight=idf, frozen=True)
    router = Router.for_query_document(query_modules=[query],
                                       document_modules=[document, SpladePooling("max", "log1p_relu")])
    return TorchSparseEncoder(modules=[router], device="cpu", **kwargs)


@pytest.fixture(scope="module")
def exported(mlm_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """(sentence-transformers model, exported folder), with query/document prompts."""
    model = inference_free_splade(mlm_dir, prompts={"query": "query: ", "document": "passage: "})
    folder = tmp_path_factory.mktemp("inference-free") / "out"
    export(model, folder)
    return model, folder


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return SPECIAL_TEXTS + varied_sentences()[::4]


def st_dense(model: TorchSparseEncoder, method: str, texts, **kwargs) -> np.ndarray:
    return getattr(model, method)(texts, convert_to_sparse_tensor=False, show_progress_bar=False, **kwargs).cpu().numpy()


def assert_dense_close(expected: np.ndarray, actual: np.ndarray, atol: float = ATOL) -> None:
    assert actual.shape == expected.shape and actual.dtype == np.float32
    diff = float(np.abs(actual.astype(np.float64) - expected).max())
    assert diff <= atol, f"max abs diff {diff:.3g} > {atol:g}"


def spy_on_routes(runtime: st_runtime.SparseEncoder) -> list[str]:
    """Record the route of every graph run from now on (each route's graph is opened first)."""
    ran: list[str] = []

    def spy(name: str, run):
        def wrapped(*args, **kwargs):
            ran.append(name)
            return run(*args, **kwargs)
        return wrapped

    for name, task in {name: task for task, name in runtime.manifest.routing.tasks.items()}.items():
        backend = runtime.routes.graph(task).backend
        backend.run = spy(name, backend.run)
    return ran


def test_export_writes_one_graph_per_route(exported):
    model, folder = exported
    manifest = st_runtime.SparseEncoder(folder).manifest
    routing = manifest.routing
    assert routing.tasks == {"query": "query", "document": "document"}
    assert (routing.default_route, routing.other_tasks_route, routing.primary) == ("document", None, "document")
    query, document = routing.routes["query"], routing.routes["document"]
    assert query.variant().file == "onnx/model_query.onnx" and query.inputs == ("input_ids", "attention_mask")
    assert [m["type"] for m in query.modules] == ["SparseStaticEmbedding"]
    assert [m["type"] for m in document.modules] == ["MLMTransformer", "SpladePooling"]
    assert query.tokenizer.file == "tokenizer_query.json"  # no special tokens: its own file
    assert query.tokenizer.max_seq_length == document.tokenizer.max_seq_length == 24  # the shared tokenizer's length
    assert query.task_config == {"vocab_size": 30522} and document.task_config["pooling_strategy"] == "max"
    assert manifest.task_config == {"vocab_size": 30522, "max_active_dims": None}
    assert manifest.embedding_dimension == model.get_embedding_dimension() == 30522
    assert manifest.parity["max_abs_diff"] <= ATOL and manifest.parity["texts"] == 60  # 2 routes x 3 prompts x 10
    # The query graph is a scatter over the IDF vector: no transformer weights, no matrix products.
    graph = onnx.load(str(folder / "onnx" / "model_query.onnx")).graph
    assert [list(t.dims) for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT] == [[30522]]
    assert not {"MatMul", "Gemm", "Softmax"} & {node.op_type for node in graph.node}
    assert not (folder / "document_0_MLMTransformer" / "model.safetensors").exists()


def test_parity_with_sentence_transformers(exported, texts):
    model, folder = exported
    runtime = st_runtime.SparseEncoder(folder)
    for method in ("encode_query", "encode_document", "encode"):
        expected = st_dense(model, method, texts)
        actual = getattr(runtime, method)(texts, convert_to_sparse_tensor=False)
        assert_dense_close(expected, actual)
        if method == "encode_query":  # the static route copies weights: bit for bit
            np.testing.assert_array_equal(actual, expected)
    assert_dense_close(st_dense(model, "encode", texts, task="query", prompt_name="document"),
                       runtime.encode(texts, task="query", prompt_name="document", convert_to_sparse_tensor=False))
    assert not np.allclose(runtime.encode_query(texts[:5]).toarray(), runtime.encode_document(texts[:5]).toarray())
    with pytest.raises(ValueError, match="No route for task 'classification'"):
        runtime.encode("x", task="classification")
    with pytest.raises(ValueError, match="No route found"):
        model.encode("x", task="classification")


def test_decode_similarity_and_max_active_dims(exported, texts):
    model, folder = exported
    runtime = st_runtime.SparseEncoder(folder)
    queries, documents = texts[:20], texts[20:40]
    st_q, st_d = model.encode_query(queries), model.encode_document(documents)
    q, d = runtime.encode_query(queries), runtime.encode_document(documents)
    for st_emb, emb in ((st_q, q), (st_d, d)):
        for expected_row, actual_row in zip(model.decode(st_emb, top_k=10), runtime.decode(emb, top_k=10), strict=True):
            assert [t for t, _ in actual_row] == [t for t, _ in expected_row]
            np.testing.assert_allclose([w for _, w in actual_row], [w for _, w in expected_row], atol=ATOL)
    np.testing.assert_allclose(runtime.similarity(q, d), model.similarity(st_q, st_d).numpy(), atol=1e-4)
    assert runtime.sparsity(q) == pytest.approx(model.sparsity(st_q), rel=1e-6)
    top3 = runtime.encode_query(queries, max_active_dims=3, convert_to_sparse_tensor=False)
    np.testing.assert_array_equal(top3, st_dense(model, "encode_query", queries, max_active_dims=3))


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_query_route_matches_scatter_semantics_per_batch(exported, batch_size):
    """sentence-transformers scatters attention-mask values: a pad token spelled out in a text counts only where no
    padding follows it in the batch. The runtime forms the same batches and agrees bit for bit."""
    model, folder = exported
    runtime = st_runtime.SparseEncoder(folder)
    expected = st_dense(model, "encode_query", SPECIAL_TEXTS, batch_size=batch_size)
    actual = runtime.encode_query(SPECIAL_TEXTS, batch_size=batch_size, convert_to_sparse_tensor=False)
    np.testing.assert_array_equal(actual, expected)
    pad = runtime.tokenizer.spec.pad_token_id
    if batch_size == 1:  # never padded: "[PAD]" is a token of the text
        assert expected[3, pad] != 0
    if batch_size == 32:  # padded after its text: the padding's zero wins, in both
        assert expected[2, pad] == 0 and expected[3, pad] == 0


def test_queries_never_run_the_transformer(exported, texts):
    _, folder = exported
    runtime = st_runtime.SparseEncoder(folder)
    assert runtime.routes.opened == ("document",)  # the primary (default) route opens with the model
    ran = spy_on_routes(runtime)
    runtime.encode_query(texts, batch_size=8)
    runtime.encode(texts[:3], task="query")
    assert ran and set(ran) == {"query"}
    ran.clear()
    runtime.encode_document(texts[:3])
    runtime.encode(texts[:3])  # no task: sentence-transformers' default route, the document one
    assert ran and set(ran) == {"document"}


QUERY_ONLY_CHILD = """
    import st_runtime
    model = st_runtime.SparseEncoder(sys.argv[1])
    embeddings = model.encode_query(json.loads(sys.argv[2]), convert_to_sparse_tensor=False)
    print(json.dumps({"opened": list(model.routes.opened), "queries": embeddings.tolist(), "loaded": loaded_blocked()}))
"""


def test_queries_in_a_process_without_torch(exported, texts):
    model, folder = exported
    queries = texts[:8]
    result = run_blocking_imports(QUERY_ONLY_CHILD, str(folder), json.dumps(queries),
                                  blocked=("torch", "transformers", "sentence_transformers", "exporters"))
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["opened"] == ["document", "query"] and payload["loaded"] == []
    np.testing.assert_array_equal(np.float32(payload["queries"]), st_dense(model, "encode_query", queries))


def test_cli_exports_a_saved_folder(mlm_dir, tmp_path, texts, capsys):
    model = inference_free_splade(mlm_dir)
    model.save(str(tmp_path / "saved"))
    reloaded = TorchSparseEncoder(str(tmp_path / "saved"), device="cpu")
    assert st_export_main([str(tmp_path / "saved"), "-o", str(tmp_path / "out")]) == 0
    assert "sparse-embedding" in capsys.readouterr().out
    runtime = st_runtime.SparseEncoder(tmp_path / "out")
    for method in ("encode_query", "encode_document", "encode"):
        expected = st_dense(reloaded, method, texts[:30])
        assert_dense_close(expected, getattr(runtime, method)(texts[:30], convert_to_sparse_tensor=False))
        assert_dense_close(expected, st_dense(model, method, texts[:30]))


def test_no_default_route_and_a_lone_sparse_static_embedding(mlm_dir, tmp_path, texts):
    document = MLMTransformer(str(mlm_dir), max_seq_length=24)
    torch.manual_seed(2)
    query = SparseStaticEmbedding(tokenizer=document.tokenizer, weight=torch.rand(document.tokenizer.vocab_size))
    router = Router({"query": [query], "document": [document, SpladePooling("sum", "relu")]}, default_route=None,
                    allow_empty_key=False, route_mappings={("search", None): "query"})
    model = TorchSparseEncoder(modules=[router], device="cpu")
    manifest = export(model, tmp_path / "routed")
    assert manifest.routing.tasks == {"document": "document", "query": "query", "search": "query"}
    assert manifest.routing.default_route is None and manifest.routing.primary == "query"
    runtime = st_runtime.SparseEncoder(tmp_path / "routed")
    for task in ("query", "search", "document"):
        assert_dense_close(st_dense(model, "encode", texts[:20], task=task),
                           runtime.encode(texts[:20], task=task, convert_to_sparse_tensor=False))
    with pytest.raises(ValueError, match="no default route"):
        runtime.encode(texts[:2])
    with pytest.raises(ValueError):
        model.encode(texts[:2])

    lone = TorchSparseEncoder(modules=[query], device="cpu")  # a sparse encoder that is only the static weights
    manifest = export(lone, tmp_path / "lone")
    assert manifest.routing is None and manifest.inputs == ("input_ids", "attention_mask")
    np.testing.assert_array_equal(st_runtime.SparseEncoder(tmp_path / "lone").encode(texts, convert_to_sparse_tensor=False),
                                  st_dense(lone, "encode", texts))


def test_a_route_that_is_not_a_sparse_chain_is_refused(mlm_dir, tmp_path):
    document = MLMTransformer(str(mlm_dir), max_seq_length=24)
    query = SparseStaticEmbedding(tokenizer=document.tokenizer)
    router = Router.for_query_document(query_modules=[query, SpladePooling("max")], document_modules=[document,
                                                                                                     SpladePooling("max")])
    with pytest.raises(UnsupportedModelError, match=r"this chain's modules are \['SparseStaticEmbedding', 'SpladePooling'\]"):
        export(TorchSparseEncoder(modules=[router], device="cpu"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
