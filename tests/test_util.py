"""st_runtime.util (sentence-transformers' util functions in numpy), SparseEncoder.intersection, truncate_dim and a
settable max_seq_length, each against sentence-transformers run in the same test.

sentence-transformers 6 changed paraphrase_mining (chunk-independent candidates, max_pairs kept exactly),
community_detection (the center stays first and is never claimed twice; fewer rows than min_community_size gives no
community) and quantize_embeddings (no int8 ranges from one embedding); st_runtime follows 6. Where 5.x gives another
answer, the comparison runs only on 6 and 5.x is checked on inputs where both lines agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers import SparseEncoder as TorchSparseEncoder
from sentence_transformers import util as st_util
from sentence_transformers.base.modules import Router, Transformer
from sentence_transformers.sentence_transformer.modules import Pooling

import st_runtime
from exporters import export
from st_runtime import util

ST6 = int(sentence_transformers.__version__.split(".")[0]) >= 6
only_st6 = pytest.mark.skipif(not ST6, reason="sentence-transformers 5.x computes this differently (see the module doc)")


def rand(*shape: int, seed: int = 0, dtype: type = np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def ids(results: list[list[dict]]) -> list[list[int]]:
    return [[hit["corpus_id"] for hit in hits] for hits in results]


def scores(results: list[list[dict]]) -> np.ndarray:
    return np.array([[hit["score"] for hit in hits] for hits in results])


def clustered(sizes: list[int], seed: int = 0, spread: float = 0.3) -> np.ndarray:
    """Rows scattered around one random center per cluster, shuffled."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((len(sizes), 24))
    rows = np.concatenate([c + spread * rng.standard_normal((n, 24)) for c, n in zip(centers, sizes, strict=True)])
    return rows[rng.permutation(len(rows))].astype(np.float32)


# --- similarity ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cos_sim", "dot_score", "pairwise_cos_sim", "pairwise_dot_score"])
def test_similarity_functions_match(name):
    ours, theirs = getattr(util, name), getattr(st_util, name)
    a, b = rand(5, 16), rand(5, 16, seed=1)
    expected = theirs(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    actual = ours(a, b)
    assert actual.shape == expected.shape and actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(actual, 0)
    # lists and 1-D inputs, as sentence-transformers takes them; float64 stays float64
    np.testing.assert_allclose(ours(a.tolist(), b.tolist()), expected, rtol=1e-5, atol=1e-6)
    one = ours(a[0], b[0])
    assert one.shape == ((1, 1) if name in ("cos_sim", "dot_score") else ())
    if ST6 or not name.startswith("pairwise"):  # 5.x's pairwise_cos_sim fails on 1-D input
        np.testing.assert_allclose(one, theirs(torch.from_numpy(a[0]), torch.from_numpy(b[0])).numpy(), rtol=1e-5)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    assert ours(a64, b64).dtype == np.float64
    np.testing.assert_allclose(ours(a64, b64), theirs(torch.from_numpy(a64), torch.from_numpy(b64)).numpy(), rtol=1e-12)


# --- semantic_search -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("query_chunk_size", "corpus_chunk_size", "top_k", "score"), [
    (100, 500000, 10, "cos_sim"),
    (3, 70, 7, "cos_sim"),
    (4, 33, 5, "dot_score"),
    (100, 500000, 400, "cos_sim"),  # top_k above the corpus size
])
def test_semantic_search_matches(query_chunk_size, corpus_chunk_size, top_k, score):
    queries, corpus = rand(9, 24, seed=2), rand(300, 24, seed=3)
    kwargs = {"query_chunk_size": query_chunk_size, "corpus_chunk_size": corpus_chunk_size, "top_k": top_k}
    expected = st_util.semantic_search(torch.from_numpy(queries), torch.from_numpy(corpus),
                                       score_function=getattr(st_util, score), **kwargs)
    actual = util.semantic_search(queries, corpus, score_function=getattr(util, score), **kwargs)
    assert ids(actual) == ids(expected)
    assert len(actual[0]) == min(top_k, 300)
    np.testing.assert_allclose(scores(actual), scores(expected), rtol=1e-5, atol=1e-6)
    assert all(type(hit["score"]) is float and type(hit["corpus_id"]) is int for hits in actual for hit in hits)


def test_semantic_search_single_query_float64_and_ties():
    corpus = rand(50, 8, seed=4, dtype=np.float64)
    expected = st_util.semantic_search(torch.from_numpy(corpus[7]), torch.from_numpy(corpus), top_k=3)
    actual = util.semantic_search(corpus[7], corpus, top_k=3)
    assert ids(actual) == ids(expected) and ids(actual)[0][0] == 7
    np.testing.assert_allclose(scores(actual), scores(expected), rtol=1e-12)
    # Exact ties (a corpus repeated 4 times): torch.topk orders them arbitrarily; here the lower id comes first, and
    # the scores are sentence-transformers' scores.
    repeated = np.concatenate([corpus[:5]] * 4)
    actual = util.semantic_search(corpus[:2], repeated, top_k=6)
    expected = st_util.semantic_search(torch.from_numpy(corpus[:2]), torch.from_numpy(repeated), top_k=6)
    assert ids(actual)[0][:4] == [0, 5, 10, 15] and ids(actual)[1][:4] == [1, 6, 11, 16]
    np.testing.assert_allclose(scores(actual), scores(expected), rtol=1e-12)
    assert util.semantic_search(corpus[:2], corpus[:0]) == [[], []]
    with pytest.raises(ValueError, match="top_k"):
        util.semantic_search(corpus, corpus, top_k=-1)
    with pytest.raises(TypeError, match="dense"):
        util.semantic_search(scipy.sparse.csr_array(corpus[:2]), corpus)


# --- paraphrase mining ---------------------------------------------------------------------------------------------


def pairs_match(actual: list[list], expected: list[list], atol: float) -> None:
    """Same pairs with the same scores; the order may differ only between pairs whose scores are within atol."""
    assert len(actual) == len(expected)
    assert {(i, j) for _, i, j in actual} == {(i, j) for _, i, j in expected}
    np.testing.assert_allclose([s for s, _, _ in actual], [s for s, _, _ in expected], rtol=0, atol=atol)
    by_pair = {(i, j): s for s, i, j in expected}
    np.testing.assert_allclose([s for s, _, _ in actual], [by_pair[i, j] for _, i, j in actual], rtol=0, atol=atol)
    assert all(i < j and type(s) is float for s, i, j in actual)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_paraphrase_mining_embeddings_matches(dtype):
    embeddings = rand(60, 8, seed=5, dtype=dtype)
    atol = 1e-6 if dtype == np.float32 else 1e-12
    expected = st_util.paraphrase_mining_embeddings(torch.from_numpy(embeddings), top_k=5, query_chunk_size=7)
    actual = util.paraphrase_mining_embeddings(embeddings, top_k=5, query_chunk_size=7)
    pairs_match(actual, expected, atol)
    assert 150 < len(actual) < 60 * 5  # each row's 5 neighbours, mutual ones counted once
    if dtype == np.float64:  # no near-ties in float64: the very same list
        assert [p[1:] for p in actual] == [p[1:] for p in expected]
    # the candidates do not depend on corpus_chunk_size (sentence-transformers 6; 5.x takes top_k per chunk)
    chunked = util.paraphrase_mining_embeddings(embeddings, top_k=5, query_chunk_size=7, corpus_chunk_size=13)
    pairs_match(chunked, actual, atol)  # other matrix shapes: float32 scores may differ in the last bit
    # max_pairs keeps the highest-scoring pairs
    top = util.paraphrase_mining_embeddings(embeddings, top_k=5, max_pairs=20)
    pairs_match(top, actual[:20], atol)
    if ST6:
        pairs_match(chunked, st_util.paraphrase_mining_embeddings(torch.from_numpy(embeddings), top_k=5,
                                                                  query_chunk_size=7, corpus_chunk_size=13), atol)
        pairs_match(top, st_util.paraphrase_mining_embeddings(torch.from_numpy(embeddings), top_k=5, max_pairs=20), atol)
    assert util.paraphrase_mining_embeddings(embeddings[:0]) == []


# --- community detection -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("threshold", "min_size", "batch_size"), [(0.8, 5, 1024), (0.8, 5, 16), (0.9, 3, 7)])
def test_community_detection_matches(threshold, min_size, batch_size):
    embeddings = clustered([30, 20, 12, 8, 3])
    kwargs = {"threshold": threshold, "min_community_size": min_size, "batch_size": batch_size}
    expected = st_util.community_detection(torch.from_numpy(embeddings), **kwargs)
    actual = util.community_detection(embeddings, **kwargs)
    assert actual == expected
    assert len(actual) >= 3 and all(type(i) is int for c in actual for i in c)
    assert [len(c) for c in actual] == sorted((len(c) for c in actual), reverse=True)


def test_community_detection_grows_past_sort_max_size():
    # 130 rows in one community: more than the 50 looked at first, so the search doubles (50 -> 100 -> 130)
    embeddings = clustered([130, 40], spread=0.2, seed=1)
    expected = st_util.community_detection(torch.from_numpy(embeddings), threshold=0.7, min_community_size=10)
    actual = util.community_detection(embeddings, threshold=0.7, min_community_size=10)
    assert actual == expected and [len(c) for c in actual] == [130, 40]


@only_st6
def test_community_detection_overlapping_and_small_inputs():
    # A chain of rows whose neighbourhoods overlap: which center claims which row is sentence-transformers 6's rule.
    angles = np.linspace(0, 2.5, 40)
    embeddings = np.stack([np.cos(angles), np.sin(angles), 0.05 * rand(40, seed=6)], axis=1).astype(np.float32)
    for threshold, min_size in [(0.95, 4), (0.99, 3), (0.9, 8)]:
        expected = st_util.community_detection(torch.from_numpy(embeddings), threshold=threshold,
                                               min_community_size=min_size)
        assert util.community_detection(embeddings, threshold=threshold, min_community_size=min_size) == expected
        assert expected
    assert util.community_detection(embeddings[:3], min_community_size=5) == []
    assert st_util.community_detection(torch.from_numpy(embeddings[:3]), min_community_size=5) == []
    assert util.community_detection(np.zeros((0, 4), np.float32)) == []
    with pytest.raises(ValueError, match="min_community_size"):
        util.community_detection(embeddings, min_community_size=0)


# --- quantize_embeddings -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["float32", "int8", "uint8", "binary", "ubinary"])
def test_quantize_embeddings_matches(precision):
    embeddings, calibration = rand(120, 20, seed=7), rand(300, 20, seed=8)
    for kwargs in ({}, {"calibration_embeddings": calibration},
                   {"ranges": np.vstack([calibration.min(0), calibration.max(0)])}):
        expected = st_util.quantize_embeddings(embeddings, precision=precision, **kwargs)
        actual = util.quantize_embeddings(embeddings, precision, **kwargs)
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        np.testing.assert_array_equal(actual, expected)
    assert len(np.unique(actual)) > 2
    rows = list(embeddings[:10])  # a list of rows, as encode(convert_to_numpy=False) returns
    np.testing.assert_array_equal(util.quantize_embeddings(rows, precision, calibration_embeddings=calibration),
                                  st_util.quantize_embeddings(rows, precision, calibration_embeddings=calibration))
    if ST6:  # 1-D input keeps its shape, list of multi-vector matrices share one set of ranges
        np.testing.assert_array_equal(util.quantize_embeddings(embeddings[0], precision, calibration_embeddings=calibration),
                                      st_util.quantize_embeddings(embeddings[0], precision,
                                                                  calibration_embeddings=calibration))
        matrices = [embeddings[:30], embeddings[30:35], embeddings[35:]]
        for a, e in zip(util.quantize_embeddings(matrices, precision), st_util.quantize_embeddings(matrices, precision),
                        strict=True):
            np.testing.assert_array_equal(a, e)


def test_quantize_embeddings_errors():
    with pytest.raises(ValueError, match="single embedding"):
        util.quantize_embeddings(rand(1, 8), "int8")
    if ST6:
        with pytest.raises(ValueError, match="single embedding"):
            st_util.quantize_embeddings(rand(1, 8), "int8")
    with pytest.raises(ValueError, match="float"):
        util.quantize_embeddings(np.zeros((3, 8), np.int8), "int8")
    with pytest.raises(ValueError, match="precision"):
        util.quantize_embeddings(rand(3, 8), "float16")
    assert util.quantize_embeddings(rand(0, 12), "binary").shape == (0, 2)


# --- SparseEncoder.intersection ------------------------------------------------------------------------------------


def sparse_rows(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dense = np.where(rng.random((n, dim)) < 0.3, rng.random((n, dim)).astype(np.float32) + 0.1, 0).astype(np.float32)
    dense[0, :5] = -1.0  # negative weights: products of two negatives stay, mixed signs go (values > 0 only)
    return dense


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")  # torch, inside sentence-transformers' intersection
def test_sparse_intersection_matches():
    docs = sparse_rows(6, 40, seed=9)
    query = sparse_rows(1, 40, seed=10)[0]
    query[:3] = -1.0
    expected = TorchSparseEncoder.intersection(torch.from_numpy(query), torch.from_numpy(docs)).to_dense().numpy()
    assert (expected > 0).sum() > 10
    for form in (lambda x: x, scipy.sparse.csr_array, lambda x: st_runtime.sparse.to_csr(x)[0]):
        actual = st_runtime.SparseEncoder.intersection(query, form(docs))
        assert actual.shape == (6, 40)
        assert isinstance(actual, scipy.sparse.csr_array) == (form is scipy.sparse.csr_array)
        np.testing.assert_array_equal(actual.toarray(), expected)
    one = st_runtime.SparseEncoder.intersection(scipy.sparse.csr_array(query), docs[2])
    assert isinstance(one, scipy.sparse.csr_array) and one.shape == (40,)
    st_one = TorchSparseEncoder.intersection(torch.from_numpy(query), torch.from_numpy(docs[2])).to_dense().numpy()
    np.testing.assert_array_equal(one.toarray(), st_one)
    with pytest.raises(ValueError, match="1-D"):
        st_runtime.SparseEncoder.intersection(docs, docs)
    with pytest.raises(ValueError, match="mismatch"):
        st_runtime.SparseEncoder.intersection(query, docs[:, :30])


# --- models: paraphrase_mining, truncate_dim, max_seq_length -------------------------------------------------------


@pytest.fixture(scope="module")
def exported_folder() -> dict:
    """Where the tiny model is exported, once for the module (the tests change their model objects, not the folder)."""
    return {}


@pytest.fixture
def exported(tiny_bi_encoder, tmp_path_factory, exported_folder):
    """(sentence-transformers model, st_runtime model), fresh for each test, of a tiny BERT (mean pooling,
    max_seq_length 48); the seeded model is the same every time, so its folder is exported once."""
    model = tiny_bi_encoder()
    if "folder" not in exported_folder:
        exported_folder["folder"] = tmp_path_factory.mktemp("util") / "out"
        export(model, exported_folder["folder"])
    return model, st_runtime.SentenceTransformer(exported_folder["folder"])


def test_paraphrase_mining_and_truncate_dim(exported, sentences):
    model, runtime = exported
    texts = sentences[20:44]
    expected = st_util.paraphrase_mining(model, texts, top_k=3)
    pairs_match(util.paraphrase_mining(runtime, texts, top_k=3), expected, atol=1e-5)
    expected = st_util.paraphrase_mining(model, texts, top_k=3, truncate_dim=8)
    pairs_match(util.paraphrase_mining(runtime, texts, top_k=3, truncate_dim=8), expected, atol=1e-5)

    # truncate_dim in the constructor / as an attribute is encode's default, as in sentence-transformers
    model.truncate_dim = 8
    truncated = st_runtime.SentenceTransformer(runtime.folder, truncate_dim=8)
    assert truncated.get_sentence_embedding_dimension() == model.get_sentence_embedding_dimension() == 8
    np.testing.assert_allclose(truncated.encode(texts[:5]), model.encode(texts[:5]), atol=1e-5)
    np.testing.assert_allclose(truncated.encode(texts[:5], truncate_dim=4), model.encode(texts[:5], truncate_dim=4),
                               atol=1e-5)
    assert truncated.encode(texts[:2], output_value=None)[0]["sentence_embedding"].shape == (8,)
    truncated.truncate_dim = None
    assert truncated.encode(texts[0]).shape == (32,)

    # sentence-transformers slices [:, :truncate_dim]: -1 drops a dimension, 0 keeps none, 33 is ignored
    for bad in (-1, 0, 33, 2.5, True, "8"):
        with pytest.raises(ValueError, match="truncate_dim"):
            runtime.encode(texts[:2], truncate_dim=bad)
        with pytest.raises(ValueError, match="truncate_dim"):
            st_runtime.SentenceTransformer(runtime.folder, truncate_dim=bad)
    with pytest.raises(ValueError, match="from 1 to 32"):
        runtime.encode(texts[:2], truncate_dim=33)


def test_max_seq_length_is_settable(exported, sentences):
    model, runtime = exported
    texts = [*[t for t in sentences if len(t) > 200][:6], "short text"]
    assert runtime.max_seq_length == model.max_seq_length == 48
    full = runtime.encode(texts)
    model.max_seq_length = 16
    runtime.max_seq_length = 16
    assert runtime.max_seq_length == 16
    np.testing.assert_allclose(runtime.encode(texts), model.encode(texts), atol=1e-5)
    assert not np.allclose(runtime.encode(texts[:6]), full[:6], atol=1e-3)  # truncation really changed
    assert max(len(t) for t in runtime.encode(texts, output_value="token_embeddings")) == 16
    model.max_seq_length = 48
    runtime.max_seq_length = 48
    np.testing.assert_allclose(runtime.encode(texts), full, atol=1e-6)
    for bad in (49, 0, -1, 2.5, True, None):
        with pytest.raises(ValueError, match="max_seq_length"):
            runtime.max_seq_length = bad
    with pytest.raises(ValueError, match="from 1 to 48"):
        runtime.max_seq_length = 512
    assert runtime.max_seq_length == 48


def test_max_seq_length_applies_to_every_route(tiny_bi_encoder, tiny_transformers_dir, tmp_path, sentences):
    tiny_bi_encoder()  # builds the tiny BERT folder the routes load
    folder = str(tiny_transformers_dir / "bert-0")
    torch.manual_seed(0)
    router = Router.for_query_document(query_modules=[Transformer(folder, max_seq_length=24), Pooling(32)],
                                       document_modules=[Transformer(folder, max_seq_length=24), Pooling(32, "cls")])
    model = SentenceTransformer(modules=[router], device="cpu")
    export(model, tmp_path / "out")
    runtime = st_runtime.SentenceTransformer(tmp_path / "out")
    assert runtime.routes.opened == ("document",)
    texts = [t for t in sentences if len(t) > 100][:4]
    model.max_seq_length = runtime.max_seq_length = 8  # before the query route is opened
    np.testing.assert_allclose(runtime.encode_query(texts), model.encode_query(texts), atol=1e-5)
    np.testing.assert_allclose(runtime.encode_document(texts), model.encode_document(texts), atol=1e-5)
    assert max(len(t) for t in runtime.encode_query(texts, output_value="token_embeddings")) == 8
