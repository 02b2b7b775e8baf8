"""st_runtime.SentenceTransformer: the encode API, similarity, thread safety and bad input."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from sentence_transformers.util import quantize_embeddings as st_quantize_embeddings
from sentence_transformers.util import similarity as st_similarity

import st_runtime
from exporters import export
from st_runtime import InvalidInputError, ManifestError, ModelFileError
from st_runtime.task_configs import TASKS


@pytest.fixture
def exported(tiny_bi_encoder, tmp_path):
    """(sentence-transformers model, exported folder) for a tiny BERT with mean pooling and Normalize."""
    model = tiny_bi_encoder(normalize=True, prompts={"query": "query: ", "document": "passage: "})
    export(model, tmp_path / "out")
    return model, tmp_path / "out"


def test_single_string_list_and_empty(exported):
    model, folder = exported
    runtime = st_runtime.SentenceTransformer(folder)
    single = runtime.encode("hello world")
    assert single.shape == (32,)
    np.testing.assert_allclose(single, model.encode("hello world"), atol=1e-5)
    empty = runtime.encode([])
    assert empty.shape == (0, 32) and empty.dtype == np.float32
    assert runtime.get_sentence_embedding_dimension() == 32


def test_results_come_back_in_input_order(exported, sentences):
    _, folder = exported
    runtime = st_runtime.SentenceTransformer(folder)
    together = runtime.encode(sentences[:40], batch_size=7)
    one_by_one = np.stack([runtime.encode(t) for t in sentences[:40]])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_token_embeddings_match_sentence_transformers(exported, sentences):
    model, folder = exported
    runtime = st_runtime.SentenceTransformer(folder)
    texts = sentences[:12]
    expected = model.encode(texts, output_value="token_embeddings")
    actual = runtime.encode(texts, output_value="token_embeddings")
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=False):
        assert a.shape == tuple(e.shape)
        np.testing.assert_allclose(a, e.numpy(), atol=1e-5)
    everything = runtime.encode(texts[:2], output_value=None)
    assert set(everything[0]) == {"sentence_embedding", "token_embeddings", "input_ids", "attention_mask"}


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_precision_matches_sentence_transformers_quantize(exported, sentences, precision):
    _model, folder = exported
    runtime = st_runtime.SentenceTransformer(folder)
    float_embeddings = runtime.encode(sentences[:50])
    actual = runtime.encode(sentences[:50], precision=precision)
    expected = st_quantize_embeddings(float_embeddings, precision=precision)
    assert actual.dtype == expected.dtype
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("side", ["right", "left"])
def test_tokenizer_pads_as_the_tokenizers_library(exported, sentences, side):
    """TextTokenizer tokenizes without padding and pads itself: the batch equals tokenizers' own padded batch."""
    from tokenizers import Tokenizer

    from st_runtime.tokenizer import TextTokenizer

    _, folder = exported
    spec = dataclasses.replace(st_runtime.SentenceTransformer(folder).manifest.tokenizer, padding_side=side)
    theirs = Tokenizer.from_file(str(folder / spec.file))
    theirs.enable_padding(direction=side, pad_id=spec.pad_token_id, pad_token=spec.pad_token)
    expected = theirs.encode_batch(sentences[:9])
    feeds = TextTokenizer(folder, spec).encode(sentences[:9])
    assert feeds["input_ids"].shape[1] > min(len(t) for t in sentences[:9]) // 10  # real, padded text
    np.testing.assert_array_equal(feeds["input_ids"], [e.ids for e in expected])
    np.testing.assert_array_equal(feeds["attention_mask"], [e.attention_mask for e in expected])
    np.testing.assert_array_equal(feeds["token_type_ids"], [e.type_ids for e in expected])


def test_batches_are_cut_by_token_count(exported, sentences):
    """encode forms its batches by token count (sentence-transformers sorts by characters), so they pad less, and the
    results equal sentence-transformers'."""
    from st_runtime.base import length_sorted_batches, tokenized_batches

    model, folder = exported
    runtime = st_runtime.SentenceTransformer(folder)
    tokenizer = runtime.routes.graph(None).tokenizer
    texts = sentences[:96]
    padded = sum(feeds["input_ids"].size for _, feeds in tokenized_batches(texts, tokenizer, 8, False))
    by_characters = sum(tokenizer.encode([texts[i] for i in index])["input_ids"].size
                        for index in length_sorted_batches([len(t) for t in texts], 8))
    real = int(tokenizer.tokenize(texts).lengths.sum())
    assert real <= padded < by_characters
    np.testing.assert_allclose(runtime.encode(texts, batch_size=8), model.encode(texts, batch_size=8), atol=1e-5)


def test_batches_also_keep_to_a_token_budget():
    from st_runtime.base import length_sorted_batches

    lengths = [5, 40, 12, 12, 3, 100, 7, 12]
    batches = list(length_sorted_batches(lengths, 4, stable=True, max_tokens=36))
    # longest first; a batch holds at most 4 items and 36 padded tokens; an item over the budget runs alone
    assert [list(b) for b in batches] == [[5], [1], [2, 3, 7], [6, 0, 4]]
    assert [list(b) for b in length_sorted_batches(lengths, 4, stable=True)] == [[5, 1, 2, 3], [7, 6, 0, 4]]
    with pytest.raises(ValueError, match="max_tokens"):
        next(length_sorted_batches(lengths, 4, max_tokens=0))


def test_encode_on_cpu_runs_token_budget_batches(exported, sentences):
    """On onnxruntime's CPU provider a batch holds at most 256 padded tokens per thread (faster: activations stay in
    the caches), whatever batch_size says; the results do not change."""
    from st_runtime.backends import CPU_BATCH_TOKENS_PER_THREAD

    model, folder = exported
    runtime = st_runtime.SentenceTransformer(folder, intra_op_num_threads=1)
    graph = runtime.routes.graph(None)
    assert graph.backend.batch_tokens == CPU_BATCH_TOKENS_PER_THREAD
    assert st_runtime.SentenceTransformer(folder, intra_op_num_threads=3).backend.batch_tokens == 3 * CPU_BATCH_TOKENS_PER_THREAD
    texts = [" ".join(sentences[i : i + 4]) for i in range(40)]  # about 40-60 tokens each: 5-6 per 256-token batch
    shapes = []
    run = graph.backend.run
    graph.backend.run = lambda outputs, feeds: shapes.append(feeds["input_ids"].shape) or run(outputs, feeds)
    try:
        embeddings = runtime.encode(texts, batch_size=32)
    finally:
        del graph.backend.run
    assert len(shapes) > 2 and all(rows * length <= CPU_BATCH_TOKENS_PER_THREAD or rows == 1 for rows, length in shapes)
    np.testing.assert_allclose(embeddings, model.encode(texts, batch_size=32), atol=1e-5)


def test_encode_query_and_document_use_prompts(exported, sentences):
    model, folder = exported
    runtime = st_runtime.SentenceTransformer(folder)
    np.testing.assert_allclose(runtime.encode_query(sentences[:5]), model.encode_query(sentences[:5]), atol=1e-5)
    np.testing.assert_allclose(runtime.encode_document(sentences[:5]), model.encode_document(sentences[:5]), atol=1e-5)
    assert not np.allclose(runtime.encode_query(sentences[:5]), runtime.encode(sentences[:5]))
    with pytest.raises(ValueError, match="not found"):
        runtime.encode("x", prompt_name="nope")


@pytest.mark.parametrize("fn", ["cosine", "dot", "euclidean", "manhattan"])
def test_similarity_functions_match(tiny_bi_encoder, tmp_path, sentences, fn):
    model = tiny_bi_encoder(similarity_fn_name=fn)
    export(model, tmp_path / "out")
    runtime = st_runtime.SentenceTransformer(tmp_path / "out")
    assert runtime.similarity_fn_name == fn
    a, b = runtime.encode(sentences[:6]), runtime.encode(sentences[6:10])
    np.testing.assert_allclose(runtime.similarity(a, b), model.similarity(a, b).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(runtime.similarity_pairwise(a[:4], b), model.similarity_pairwise(a[:4], b).numpy(),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(runtime.similarity(a, b), st_similarity.SimilarityFunction.to_similarity_fn(fn)(a, b),
                               rtol=1e-5, atol=1e-5)


def test_normalize_and_truncate_dim(exported, sentences):
    model, folder = exported
    runtime = st_runtime.SentenceTransformer(folder)
    actual = runtime.encode(sentences[:8], truncate_dim=10, normalize_embeddings=True)
    expected = model.encode(sentences[:8], truncate_dim=10, normalize_embeddings=True)
    assert actual.shape == (8, 10)
    np.testing.assert_allclose(actual, expected, atol=1e-5)
    listed = runtime.encode(sentences[:3], convert_to_numpy=False)
    assert isinstance(listed, list) and listed[0].shape == (32,)


def test_thread_safe_encode(exported, sentences):
    _, folder = exported
    runtime = st_runtime.SentenceTransformer(folder, intra_op_num_threads=1)
    expected = runtime.encode(sentences, batch_size=16)
    barrier = threading.Barrier(4)

    def work(offset: int) -> np.ndarray:
        barrier.wait()
        texts = sentences[offset:] + sentences[:offset]
        return np.roll(runtime.encode(texts, batch_size=5 + offset % 7), offset, axis=0)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, [0, 13, 57, 101] * 3))
    for result in results:
        np.testing.assert_allclose(result, expected, atol=1e-5)


@pytest.mark.parametrize("bad", [None, 5, [1, 2], ["ok", None], ["ok", b"bytes"], {"a": 1}])
def test_bad_inputs_raise_clear_errors(exported, bad):
    _, folder = exported
    runtime = st_runtime.SentenceTransformer(folder)
    with pytest.raises(InvalidInputError, match="string"):
        runtime.encode(bad)


def test_bad_arguments(exported):
    _, folder = exported
    runtime = st_runtime.SentenceTransformer(folder)
    with pytest.raises(ValueError, match="batch_size"):
        runtime.encode(["a"], batch_size=0)
    with pytest.raises(ValueError, match="precision"):
        runtime.encode(["a"], precision="float16")
    with pytest.raises(ValueError, match="output_value"):
        runtime.encode(["a"], output_value="logits")
    with pytest.raises(ValueError, match="torch"):
        runtime.encode(["a"], convert_to_tensor=True)


def test_folder_without_manifest(tmp_path, minilm_dir):
    with pytest.raises(ManifestError, match=r"st_runtime\.json"):
        st_runtime.SentenceTransformer(minilm_dir)
    with pytest.raises(ManifestError, match="not a folder"):
        st_runtime.SentenceTransformer(tmp_path / "missing")


def test_corrupt_and_truncated_graph_are_refused(exported, tmp_path):
    _, folder = exported
    corrupt = tmp_path / "corrupt"
    shutil.copytree(folder, corrupt)
    data = bytearray((corrupt / "onnx/model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (corrupt / "onnx/model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="sha256"):
        st_runtime.SentenceTransformer(corrupt)

    truncated = tmp_path / "truncated"
    shutil.copytree(folder, truncated)
    data = (truncated / "onnx/model.onnx").read_bytes()
    (truncated / "onnx/model.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelFileError, match="sha256"):
        st_runtime.SentenceTransformer(truncated)
    with pytest.raises(ModelFileError, match="could not load"):
        st_runtime.SentenceTransformer(truncated, verify=False)

    (truncated / "onnx/model.onnx").unlink()
    with pytest.raises(ModelFileError, match="missing"):
        st_runtime.SentenceTransformer(truncated)


def test_manifest_of_unknown_version_or_task(exported, tmp_path):
    _, folder = exported
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    manifest = st_runtime.load_manifest(other)
    st_runtime.Manifest(**{**manifest.__dict__, "format_version": 99}).save(other)
    with pytest.raises(ManifestError, match="format_version 99"):
        st_runtime.SentenceTransformer(other)
    st_runtime.Manifest(**{**manifest.__dict__, "task": "text-reranking"}).save(other)
    with pytest.raises(ManifestError, match="text-reranking"):
        st_runtime.SentenceTransformer(other)
    (other / "st_runtime.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        st_runtime.SentenceTransformer(other)


def test_load_opens_a_folder_with_the_class_its_manifest_names(exported, tmp_path, sentences):
    model, folder = exported
    runtime = st_runtime.load(folder, truncate_dim=8, variant="fp32")  # the class's own arguments pass through
    assert type(runtime) is st_runtime.SentenceTransformer and runtime.variant.name == "fp32"
    np.testing.assert_allclose(runtime.encode(sentences[:10]), model.encode(sentences[:10], truncate_dim=8), atol=1e-5)
    # the registry: each manifest task (every one the manifest accepts) names the class whose `task` it is
    assert set(st_runtime.TASK_CLASSES) == set(TASKS)
    for task, name in st_runtime.TASK_CLASSES.items():
        assert getattr(st_runtime, name).task == task
    with pytest.raises(ManifestError, match="no model class for task 'text-reranking'"):
        st_runtime.kinds.model_class("text-reranking")
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    manifest = st_runtime.load_manifest(other)
    st_runtime.Manifest(**{**manifest.__dict__, "task": "text-reranking"}).save(other)
    with pytest.raises(ManifestError, match="text-reranking"):
        st_runtime.load(other)
    with pytest.raises(ManifestError, match="not a folder"):
        st_runtime.load(tmp_path / "missing")


def test_unknown_provider_is_an_error_or_logged_fallback(exported, caplog):
    _, folder = exported
    with pytest.raises(st_runtime.ProviderError, match="not available"):
        st_runtime.SentenceTransformer(folder, providers=["NoSuchExecutionProvider"])
    runtime = st_runtime.SentenceTransformer(folder, providers="NoSuchExecutionProvider", fallback_to_cpu=True)
    assert runtime.session.get_providers() == ["CPUExecutionProvider"]
    assert "falling back" in caplog.text


def test_variant_selection(exported):
    _, folder = exported
    assert st_runtime.SentenceTransformer(folder, file_name="onnx/model.onnx").variant.name == "fp32"
    with pytest.raises(ManifestError, match="Available: fp32"):
        st_runtime.SentenceTransformer(folder, variant="qint8")


class _Port:
    """An OpenVINO input port as compile_model leaves it when it folds a no-op Cast of the input into it."""

    def __init__(self, names: set[str], any_name: str) -> None:
        self._names, self._any = names, any_name

    def get_names(self) -> set[str]:
        return self._names

    def get_any_name(self) -> str:
        return self._any


def test_openvino_inputs_are_fed_by_the_graph_input_name():
    from st_runtime.backends import input_name

    assert input_name(_Port({"/Cast_1_output_0", "attention_mask"}, "/Cast_1_output_0")) == "attention_mask"
    assert input_name(_Port({"input_ids"}, "input_ids")) == "input_ids"
    assert input_name(_Port({"/Only_output_0"}, "/Only_output_0")) == "/Only_output_0"
