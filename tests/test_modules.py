"""The bi-encoder modules beyond Transformer -> Pooling: StaticEmbedding (a real model2vec model), Router/Asym
routes, WeightedLayerPooling and CNN, each against sentence-transformers run in the same test; LSTM is refused."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny_transformer, package_dir, varied_sentences
from helpers import FP32_ATOL, assert_bi_encoder_parity
from safetensors.numpy import load_file
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import (
    CNN,
    LSTM,
    Dense,
    Normalize,
    Pooling,
    Router,
    StaticEmbedding,
    Transformer,
    WeightedLayerPooling,
)
from tokenizers import Tokenizer

import st_runtime
from exporters import UnsupportedModelError, export
from st_runtime import Manifest, ModelFileError


def tiny_bert(tiny_transformers_dir: Path, bert_vocab: Path) -> Path:
    """The tiny random BERT folder the tiny_bi_encoder factory uses (built once per session)."""
    folder = tiny_transformers_dir / "bert-0"
    if not folder.exists():
        build_tiny_transformer(folder, bert_vocab, arch="bert", seed=0)
    return folder


def assert_close(actual: np.ndarray, expected, atol: float = FP32_ATOL) -> None:
    expected = np.asarray(expected)
    assert actual.shape == expected.shape
    diff = float(np.abs(actual.astype(np.float64) - expected).max()) if expected.size else 0.0
    assert diff <= atol, f"max abs diff {diff:.3g} > {atol:g}"


# --- StaticEmbedding ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_static_model() -> SentenceTransformer:
    """The model2vec model shipped by tokenlearn-static-model (no modules.json) as a SentenceTransformer.

    Its safetensors hold a vocabulary-quantized table (10k int8 rows, a row per token via `mapping`, a weight per
    token); model2vec's own encode uses embeddings[mapping[id]] * weights[id], which is the full table handed to
    StaticEmbedding here. The config's "normalize": true is the Normalize module.
    """
    folder = package_dir("static_model") / "model"
    assert json.loads((folder / "config.json").read_text())["normalize"] is True
    tensors = load_file(str(folder / "model.safetensors"))
    table = tensors["embeddings"][tensors["mapping"]].astype(np.float32) * tensors["weights"][:, None]
    static = StaticEmbedding(Tokenizer.from_file(str(folder / "tokenizer.json")), embedding_weights=table)
    return SentenceTransformer(modules=[static, Normalize()], device="cpu")


def test_real_static_model_matches_sentence_transformers(real_static_model, tmp_path):
    texts = varied_sentences(240)
    manifest = export(real_static_model, tmp_path / "out")
    assert manifest.inputs == ("input_ids", "attention_mask")
    assert manifest.outputs == ("sentence_embedding",)
    assert manifest.max_seq_length is None  # StaticEmbedding never truncates
    assert manifest.embedding_dimension == 64
    assert not (tmp_path / "out" / "model.safetensors").exists()  # the graph holds the table
    # Texts past 512 tokens (where model2vec's own encode would cut) are embedded whole, by both.
    tokenizer = real_static_model[0].tokenizer
    assert max(len(tokenizer.encode(t, add_special_tokens=False).ids) for t in texts) > 512
    runtime = st_runtime.SentenceTransformer(tmp_path / "out")
    assert runtime.max_seq_length is None
    for batch_size in (1, 32):
        expected = real_static_model.encode(texts, batch_size=batch_size, show_progress_bar=False)
        assert_close(runtime.encode(texts, batch_size=batch_size), expected)
    assert_close(runtime.encode(texts[:30], prompt="query: "), real_static_model.encode(texts[:30], prompt="query: "))
    with pytest.raises(ValueError, match="no token embeddings"):
        runtime.encode(texts[:2], output_value="token_embeddings")


def test_static_embedding_truncates_where_its_tokenizer_does(tiny_transformers_dir, bert_vocab, tmp_path, sentences):
    """A BERT tokenizer with its own truncation (and a [CLS]/[SEP] post-processor that StaticEmbedding skips)."""
    tokenizer = Tokenizer.from_file(str(tiny_bert(tiny_transformers_dir, bert_vocab) / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=8)
    torch.manual_seed(0)
    model = SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_dim=16)], device="cpu")
    manifest = export(model, tmp_path / "out")
    assert manifest.max_seq_length == 8
    assert_bi_encoder_parity(model, tmp_path / "out", sentences)


# --- Router / Asym -----------------------------------------------------------------------------------------------


@pytest.fixture
def static_query_router(tiny_transformers_dir, bert_vocab) -> SentenceTransformer:
    """Inference-free style: a StaticEmbedding query route, a Transformer + Pooling document route (the default)."""
    folder = tiny_bert(tiny_transformers_dir, bert_vocab)
    torch.manual_seed(0)
    static = StaticEmbedding(Tokenizer.from_file(str(folder / "tokenizer.json")), embedding_dim=32)
    router = Router.for_query_document(query_modules=[static],
                                       document_modules=[Transformer(str(folder), max_seq_length=24), Pooling(32)])
    return SentenceTransformer(modules=[router, Normalize()], device="cpu",
                               prompts={"query": "query: ", "document": "passage: "})


def test_router_routes_queries_and_documents_to_their_own_graphs(static_query_router, tmp_path, sentences):
    model = static_query_router
    manifest = export(model, tmp_path / "out")
    routing = manifest.routing
    assert routing.tasks == {"query": "query", "document": "document"}
    assert (routing.default_route, routing.other_tasks_route, routing.primary) == ("document", None, "document")
    query, document = routing.routes["query"], routing.routes["document"]
    assert (query.variant().file, document.variant().file) == ("onnx/model_query.onnx", "onnx/model_document.onnx")
    assert query.inputs == ("input_ids", "attention_mask") and query.outputs == ("sentence_embedding",)
    assert query.tokenizer.file == "tokenizer_query.json" and query.tokenizer.max_seq_length is None
    assert document.tokenizer.file == "tokenizer.json" and document.tokenizer.max_seq_length == 24
    assert [m["type"] for m in query.modules] == ["StaticEmbedding", "Normalize"]
    assert manifest.variants == document.variants  # the top level mirrors the primary route
    assert not (tmp_path / "out" / "document_0_Transformer" / "model.safetensors").exists()

    runtime = st_runtime.SentenceTransformer(tmp_path / "out")
    assert runtime.routes.opened == ("document",)
    assert_close(runtime.encode_query(sentences), model.encode_query(sentences, show_progress_bar=False))
    assert runtime.routes.opened == ("document", "query")
    assert_close(runtime.encode_document(sentences), model.encode_document(sentences, show_progress_bar=False))
    assert_close(runtime.encode(sentences), model.encode(sentences, show_progress_bar=False))
    assert_close(runtime.encode(sentences[:20], task="query", prompt_name="document"),
                 model.encode(sentences[:20], task="query", prompt_name="document"))
    assert not np.allclose(runtime.encode_query(sentences[:5]), runtime.encode_document(sentences[:5]))
    with pytest.raises(ValueError, match="No route for task 'classification'"):
        runtime.encode("x", task="classification")
    with pytest.raises(ValueError, match="No route found"):
        model.encode("x", task="classification")

    # Documents never load the query graph: without its file they still encode; queries then fail clearly.
    (tmp_path / "out" / "onnx" / "model_query.onnx").unlink()
    runtime = st_runtime.SentenceTransformer(tmp_path / "out")
    assert_close(runtime.encode_document(sentences[:10]), model.encode_document(sentences[:10]))
    with pytest.raises(ModelFileError, match=r"model_query\.onnx is missing"):
        runtime.encode_query("x")


def test_asym_dense_heads_after_pooling_with_mapped_tasks(tiny_transformers_dir, bert_vocab, tmp_path, sentences):
    """The classic Asym: one transformer, a Dense head per route; a mapped extra task; no default route."""
    folder = tiny_bert(tiny_transformers_dir, bert_vocab)
    torch.manual_seed(0)
    router = Router({"query": [Dense(32, 16, activation_function=torch.nn.Tanh())], "document": [Dense(32, 16)]},
                    default_route=None, allow_empty_key=False, route_mappings={("search", None): "query"})
    model = SentenceTransformer(modules=[Transformer(str(folder), max_seq_length=32), Pooling(32), router],
                                device="cpu")
    manifest = export(model, tmp_path / "out")
    routing = manifest.routing
    assert routing.tasks == {"document": "document", "query": "query", "search": "query"}
    assert routing.default_route is None and routing.primary == "query"
    assert {r.tokenizer.file for r in routing.routes.values()} == {"tokenizer.json"}  # one tokenizer, shared
    assert not any((tmp_path / "out" / f"tokenizer_{name}.json").exists() for name in ("query", "document"))

    runtime = st_runtime.SentenceTransformer(tmp_path / "out")
    for task in ("query", "document", "search"):
        assert_close(runtime.encode(sentences, task=task), model.encode(sentences, task=task, show_progress_bar=False))
    assert_close(runtime.encode_query(sentences[:10]), model.encode_query(sentences[:10]))
    token_embeddings = runtime.encode(sentences[:3], task="document", output_value="token_embeddings")
    for actual, expected in zip(token_embeddings, model.encode(sentences[:3], task="document",
                                                                output_value="token_embeddings"), strict=True):
        assert_close(actual, expected.numpy())
    with pytest.raises(ValueError, match="no default route"):
        runtime.encode(sentences[:2])
    with pytest.raises(ValueError):
        model.encode(sentences[:2])


def test_routed_manifest_round_trips_and_old_manifests_still_load(static_query_router, tmp_path):
    export(static_query_router, tmp_path / "out")
    text = (tmp_path / "out" / "st_runtime.json").read_text()
    manifest = Manifest.from_json(text)
    assert manifest.to_json() == text
    old = json.loads(text)
    del old["routing"]  # a manifest from before routes existed: the top-level graph is the model
    assert Manifest.from_json(json.dumps(old)).routing is None
    broken = json.loads(text)
    broken["routing"]["tasks"]["query"] = "nowhere"
    with pytest.raises(st_runtime.ManifestError, match="missing or has malformed"):
        Manifest.from_json(json.dumps(broken))
    # A variant that only the primary route has (say, a quantizer that knew nothing of routes) fails at load time.
    partial = json.loads(text)
    partial["variants"].append({**partial["variants"][0], "name": "int8"})
    (tmp_path / "out" / "st_runtime.json").write_text(json.dumps(partial))
    with pytest.raises(st_runtime.ManifestError, match="No variant 'int8'"):
        st_runtime.SentenceTransformer(tmp_path / "out", variant="int8")


# --- WeightedLayerPooling, CNN, LSTM -----------------------------------------------------------------------------


def test_weighted_layer_pooling(tiny_transformers_dir, bert_vocab, tmp_path, sentences):
    folder = str(tiny_bert(tiny_transformers_dir, bert_vocab))
    torch.manual_seed(0)
    layers = WeightedLayerPooling(32, num_hidden_layers=2, layer_start=1)
    with torch.no_grad():
        layers.layer_weights.uniform_(0.5, 2.0)
    transformer = Transformer(folder, max_seq_length=32, config_kwargs={"output_hidden_states": True})
    model = SentenceTransformer(modules=[transformer, layers, Pooling(32)], device="cpu")
    plain = SentenceTransformer(modules=[Transformer(folder, max_seq_length=32), Pooling(32)], device="cpu")
    assert not np.allclose(model.encode(sentences[:5]), plain.encode(sentences[:5]), atol=1e-3)  # not a no-op
    manifest = export(model, tmp_path / "out")
    assert [m["type"] for m in manifest.modules] == ["Transformer", "WeightedLayerPooling", "Pooling"]
    assert_bi_encoder_parity(model, tmp_path / "out", sentences)


# sentence-transformers 6.3 zeroes the padding positions before CNN's convolution; before, a text's embedding
# depended on its batch mates.
CNN_MASKS_PADDING = tuple(int(part) for part in metadata.version("sentence-transformers").split(".")[:2]) >= (6, 3)


def test_cnn_including_its_dependence_on_batch_mates(tiny_transformers_dir, bert_vocab, tmp_path, sentences):
    """The export traces the installed CNN, padding behaviour included: where the convolution reads the padding
    positions, the runtime forms the very same length-sorted batches (ties included), so it matches at every batch
    size either way."""
    torch.manual_seed(0)
    cnn = CNN(32, out_channels=8, kernel_sizes=[1, 3, 5])
    model = SentenceTransformer(modules=[Transformer(str(tiny_bert(tiny_transformers_dir, bert_vocab)),
                                                     max_seq_length=32), cnn, Pooling(24)], device="cpu")
    manifest = export(model, tmp_path / "out")
    assert manifest.embedding_dimension == 24
    assert manifest.tokenizer.padding_sensitive == (not CNN_MASKS_PADDING)  # export found it by running the graph
    runtime = st_runtime.SentenceTransformer(tmp_path / "out")
    texts = sentences[:120]  # enough equal-length texts that a differently tie-broken sort forms other batches
    expected = {size: model.encode(texts, batch_size=size, show_progress_bar=False) for size in (7, 32)}
    assert np.allclose(expected[7], expected[32], atol=1e-5) == CNN_MASKS_PADDING
    for size, embeddings in expected.items():
        assert_close(runtime.encode(texts, batch_size=size), embeddings)


def test_lstm_is_refused_with_the_reason(tiny_transformers_dir, bert_vocab, tmp_path):
    folder = str(tiny_bert(tiny_transformers_dir, bert_vocab))
    model = SentenceTransformer(modules=[Transformer(folder), LSTM(32, 16), Pooling(32)], device="cpu")
    with pytest.raises(KeyError, match="sentence_lengths"):
        model.encode(["sentence-transformers itself cannot run it"])
    with pytest.raises(UnsupportedModelError, match=r"Module 1 .*LSTM.*sentence_lengths.*WordEmbeddings"):
        export(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_unsupported_module_inside_a_route_is_named(tiny_transformers_dir, bert_vocab, tmp_path):
    folder = str(tiny_bert(tiny_transformers_dir, bert_vocab))
    router = Router.for_query_document(query_modules=[Transformer(folder), LSTM(32, 16), Pooling(32)],
                                       document_modules=[Transformer(folder), Pooling(32)])
    with pytest.raises(UnsupportedModelError, match=r"Module 0 \(Router route 'query', item 1\) .*LSTM"):
        export(SentenceTransformer(modules=[router], device="cpu"), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
