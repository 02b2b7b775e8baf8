"""MultiVectorEncoder (ColBERT / late interaction): tiny random-weight models exported and run by st_runtime against
sentence-transformers in the same test (per-token vectors, kept rows, MaxSim scores), int8 variants, a process without
torch, PyLate ColBERT folders, and the one-line refusal on the sentence-transformers 5 line."""

from __future__ import annotations

import importlib.util
import json
import re
import string
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from conftest import build_tiny_transformer, varied_sentences
from helpers import run_blocking_imports

import st_runtime

HAS_MULTI_VECTOR = importlib.util.find_spec("sentence_transformers.multi_vector_encoder") is not None
st6 = pytest.mark.skipif(not HAS_MULTI_VECTOR, reason="MultiVectorEncoder is new in sentence-transformers 6; this is "
                                                      "the sentence-transformers 5 line")
ST_VERSION = metadata.version("sentence-transformers")
# truncate_dim (constructor, saved config, encode argument) is new in sentence-transformers 6.3
HAS_TRUNCATE_DIM = HAS_MULTI_VECTOR and tuple(int(x) for x in re.findall(r"\d+", ST_VERSION)[:2]) >= (6, 3)
ATOL = 1e-5
LONG = " ".join(["Late interaction keeps one vector per token, and long texts are truncated."] * 30)
TEXTS = ["", " ", "a", "What is the capital of France?", "Paris, the capital of France; (famous!)", LONG,
         "Zürich, Москва, 東京 and القاهرة 🙂", "query: already prefixed?", *varied_sentences(14, seed=3)]
QUERIES = ["capital of France?", "", "Zürich 🙂", "late interaction retrieval, explained in depth " * 3,
           "a", "Who wrote the ONNX graph?"]

# name -> (arch, transformer options, dense layers (out_features, activation), mask options or None, normalize,
#          prompts, similarity_fn_name)
CONFIGS = {
    "bert-fixed-skiplist": ("bert", {"document_length": 20, "query_expansion": {"strategy": "fixed", "length": 12}},
                            ((16, None),), {"skiplist_words": list(string.punctuation)}, True,
                            {"query": "query: ", "document": "passage: "}, None),
    "distilbert-plain-2dense": ("distilbert", {"query_length": 10}, ((24, "tanh"), (12, None)), None, False, None,
                                None),
    "bert-min-attend-both": ("bert", {"query_length": 16, "query_expansion": {"strategy": "min", "length": 8,
                                                                                "attend": True}},
                             ((16, "tanh"), (8, None)),
                             {"skiplist_words": [".", ",", "?"], "skiplist_tasks": ["query", "document"]}, True,
                             None, "meanmaxsim"),
}


def build_model(name: str, transformer_dir: Path, bert_vocab: Path):
    import torch
    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask

    arch, options, dense, mask, normalize, prompts, similarity_fn_name = CONFIGS[name]
    folder = transformer_dir / arch
    if not folder.exists():
        build_tiny_transformer(folder, bert_vocab, arch=arch)
    transformer = Transformer(str(folder), max_seq_length=48, **options)
    modules, width = [transformer], transformer.get_embedding_dimension()
    torch.manual_seed(1)
    for out_features, activation in dense:
        act = torch.nn.Tanh() if activation == "tanh" else torch.nn.Identity()
        modules.append(Dense(width, out_features, bias=activation is not None, activation_function=act,
                             module_input_name="token_embeddings"))
        width = out_features
    if mask is not None:
        modules.append(MultiVectorMask(**mask))
    if normalize:
        modules.append(Normalize(module_input_name="token_embeddings"))
    return MultiVectorEncoder(modules=modules, device="cpu", prompts=prompts, similarity_fn_name=similarity_fn_name)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, bert_vocab: Path):
    """name -> (sentence-transformers model, exported folder), each built and exported once for the module."""
    from exporters import export

    root = tmp_path_factory.mktemp("multi-vector")
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            model = build_model(name, root, bert_vocab)
            export(model, root / f"out-{name}")
            cache[name] = (model, root / f"out-{name}")
        return cache[name]

    return get


def assert_same_rows(expected: list, actual: list, texts: list[str]) -> None:
    assert len(actual) == len(expected)
    for text, e, a in zip(texts, expected, actual, strict=True):
        e = np.asarray(e)
        assert a.dtype == np.float32
        assert a.shape == e.shape, f"{text[:30]!r}: {a.shape} rows kept, sentence-transformers keeps {e.shape}"
        if e.size:
            diff = float(np.abs(a.astype(np.float64) - e).max())
            assert diff <= ATOL, f"{text[:30]!r}: max abs diff {diff:.3g}"


@st6
@pytest.mark.parametrize("name", list(CONFIGS))
def test_token_vectors_and_maxsim_match_sentence_transformers(exported, name):
    reference, folder = exported(name)
    model = st_runtime.MultiVectorEncoder(folder)
    manifest = model.manifest
    assert manifest.task == "multi-vector-embedding"
    assert manifest.parity["max_abs_diff"] <= 1e-4
    assert model.similarity_fn_name == reference.similarity_fn_name
    expected_q = reference.encode_query(QUERIES, batch_size=4, convert_to_numpy=True)
    expected_d = reference.encode_document(TEXTS, batch_size=8, convert_to_numpy=True)
    for batch_size in (1, 7):  # a text's rows do not depend on its batch mates or their padding
        actual_q = model.encode_query(QUERIES, batch_size=batch_size)
        assert_same_rows(expected_q, actual_q, QUERIES)
        actual_d = model.encode_document(TEXTS, batch_size=batch_size)
        assert_same_rows(expected_d, actual_d, TEXTS)
    expected_none = reference.encode(TEXTS, batch_size=8, convert_to_numpy=True)
    assert_same_rows(expected_none, model.encode(TEXTS, batch_size=4), TEXTS)
    expected_scores = reference.similarity(expected_q, expected_d).numpy()
    scores = model.similarity(actual_q, actual_d)
    assert scores.shape == (len(QUERIES), len(TEXTS)) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(model.similarity(expected_q, expected_d), expected_scores, rtol=1e-5, atol=1e-4)
    pairs = min(len(QUERIES), len(TEXTS))
    np.testing.assert_allclose(model.similarity_pairwise(actual_q[:pairs], actual_d[:pairs]),
                               reference.similarity_pairwise(expected_q[:pairs], expected_d[:pairs]).numpy(),
                               rtol=1e-5, atol=1e-4)
    single = model.encode_query("capital of France?")
    assert single.ndim == 2 and single.shape == reference.encode_query("capital of France?").shape


@st6
def test_prompts_expansion_and_rank(exported):
    reference, folder = exported("bert-fixed-skiplist")
    model = st_runtime.MultiVectorEncoder(folder)
    assert model.prompts == {"query": "query: ", "document": "passage: "}
    assert model.query_expansion == {"strategy": "fixed", "attend": False, "length": 12, "token_id": 103}
    assert model.document_length == 20
    with pytest.raises(st_runtime.ManifestError, match=r"load it with st_runtime\.MultiVectorEncoder"):
        st_runtime.SentenceTransformer(folder)
    with pytest.raises(st_runtime.InvalidInputError):
        model.encode_query(None)
    assert model.encode_document([]) == []
    # every query keeps exactly the expansion length; documents lose the skiplisted punctuation
    assert {len(q) for q in model.encode_query(QUERIES)} == {12}
    for prompt_name in ("query", "document"):
        assert_same_rows(reference.encode(TEXTS, prompt_name=prompt_name, convert_to_numpy=True, task="document"),
                         model.encode(TEXTS, prompt_name=prompt_name, task="document"), TEXTS)
    assert_same_rows(reference.encode(TEXTS, prompt="custom: ", convert_to_numpy=True),
                     model.encode(TEXTS, prompt="custom: "), TEXTS)
    documents = TEXTS[:8]
    ranked = model.rank("What is the capital of France?", documents, top_k=3, return_documents=True)
    expected = reference.similarity(reference.encode_query(["What is the capital of France?"]),
                                    reference.encode_document(documents)).numpy()[0]
    assert [r["corpus_id"] for r in ranked] == np.argsort(-expected, kind="stable")[:3].tolist()
    assert ranked[0]["text"] == documents[ranked[0]["corpus_id"]]
    np.testing.assert_allclose([r["score"] for r in ranked], np.sort(expected)[::-1][:3], rtol=1e-5, atol=1e-4)


@st6
def test_load_opens_a_multi_vector_encoder(exported):
    reference, folder = exported("bert-fixed-skiplist")
    model = st_runtime.load(folder)
    assert type(model) is st_runtime.MultiVectorEncoder
    assert_same_rows(reference.encode_document(TEXTS, convert_to_numpy=True), model.encode_document(TEXTS), TEXTS)


def unit_rows(rows: list[np.ndarray], dim: int) -> None:
    for row in rows:
        assert row.shape[1] == dim and row.dtype == np.float32 and row.flags.c_contiguous
        if len(row):
            np.testing.assert_allclose(np.linalg.norm(row, axis=1), 1.0, rtol=1e-5)


@st6
def test_truncate_dim_per_call_default_and_saved(exported, tmp_path, bert_vocab):
    reference, folder = exported("bert-fixed-skiplist")  # 16-dimensional token vectors
    model = st_runtime.MultiVectorEncoder(folder)
    assert model.truncate_dim is None and model.get_embedding_dimension() == 16
    full = model.encode_document(TEXTS)
    per_call = model.encode_document(TEXTS, truncate_dim=4)
    unit_rows(per_call, 4)
    assert [len(r) for r in per_call] == [len(r) for r in full]  # the same rows, fewer dimensions
    for f, t in zip(full, per_call, strict=True):
        if len(f):
            cut = f[:, :4] / np.linalg.norm(f[:, :4], axis=1, keepdims=True)
            np.testing.assert_allclose(t, cut, rtol=1e-5, atol=1e-6)
    assert model.encode_query("capital of France?", truncate_dim=16).shape == (12, 16)
    assert model.encode_document([], truncate_dim=4) == []
    eight = st_runtime.MultiVectorEncoder(folder, truncate_dim=8)
    assert eight.truncate_dim == 8 and eight.get_embedding_dimension() == 8
    unit_rows(eight.encode_query(QUERIES), 8)
    unit_rows(eight.encode_document(TEXTS, truncate_dim=3), 3)  # a per-call value wins over the default
    np.testing.assert_allclose(eight.rank("capital of France?", TEXTS[:5])[0]["score"],
                               eight.similarity(eight.encode_query(["capital of France?"]),
                                                eight.encode_document(TEXTS[:5])).max(), rtol=1e-6)
    for bad in (0, -1, 2.5, "4", True):
        with pytest.raises(st_runtime.InvalidInputError, match="truncate_dim must be a positive int"):
            model.encode_document(TEXTS[:2], truncate_dim=bad)
    with pytest.raises(ValueError, match=r"truncate_dim must be None or an int from 1 to 16 \(the embedding dimension\), got 17"):
        st_runtime.MultiVectorEncoder(folder, truncate_dim=17)
    with pytest.raises(ValueError, match="from 1 to 16"):
        model.encode_query(QUERIES, truncate_dim=17)
    with pytest.raises(st_runtime.InvalidInputError):
        eight.truncate_dim = 0
    eight.truncate_dim = None
    assert eight.get_embedding_dimension() == 16

    # a value recorded in the manifest (what st-export writes for a model saved with truncate_dim) is the default
    saved_copy = tmp_path / "saved-copy"
    import shutil

    shutil.copytree(folder, saved_copy)
    manifest_path = saved_copy / "st_runtime.json"
    data = json.loads(manifest_path.read_text())
    data["task_config"]["truncate_dim"] = 6
    manifest_path.write_text(json.dumps(data))
    recorded = st_runtime.MultiVectorEncoder(saved_copy)
    assert recorded.truncate_dim == 6 and recorded.get_embedding_dimension() == 6
    unit_rows(recorded.encode_document(TEXTS), 6)
    assert st_runtime.MultiVectorEncoder(saved_copy, truncate_dim=2).get_embedding_dimension() == 2
    data["task_config"]["truncate_dim"] = 99
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(st_runtime.ManifestError, match="truncate_dim"):
        st_runtime.MultiVectorEncoder(saved_copy)

    if not HAS_TRUNCATE_DIM:
        pytest.skip(f"sentence-transformers {ST_VERSION} has no truncate_dim (new in 6.3): the parity against it is "
                    "not checked; the runtime checks above ran")
    from sentence_transformers import MultiVectorEncoder

    from exporters import export

    # per call, against sentence-transformers on the same model
    for truncate_dim in (4, 16):
        expected_q = reference.encode_query(QUERIES, truncate_dim=truncate_dim, convert_to_numpy=True)
        expected_d = reference.encode_document(TEXTS, truncate_dim=truncate_dim, convert_to_numpy=True)
        actual_q = model.encode_query(QUERIES, truncate_dim=truncate_dim, batch_size=3)
        actual_d = model.encode_document(TEXTS, truncate_dim=truncate_dim, batch_size=5)
        assert_same_rows(expected_q, actual_q, QUERIES)
        assert_same_rows(expected_d, actual_d, TEXTS)
        np.testing.assert_allclose(model.similarity(actual_q, actual_d),
                                   reference.similarity(expected_q, expected_d).numpy(), rtol=1e-5, atol=1e-4)

    # a model saved with truncate_dim: sentence-transformers writes it to config_sentence_transformers.json, reads it
    # back, st-export records it, st_runtime applies it by default (and a per-call value still wins)
    source = build_model("bert-min-attend-both", tmp_path / "transformers", bert_vocab)  # 8 dims, meanmaxsim
    source.truncate_dim = 5
    source.save(str(tmp_path / "saved"))
    assert json.loads((tmp_path / "saved" / "config_sentence_transformers.json").read_text())["truncate_dim"] == 5
    loaded = MultiVectorEncoder(str(tmp_path / "saved"), device="cpu")
    assert loaded.truncate_dim == 5 and loaded.get_embedding_dimension() == 5
    manifest = export(loaded, tmp_path / "saved-out")
    assert manifest.task_config.truncate_dim == 5 and manifest.embedding_dimension == 8
    runtime = st_runtime.MultiVectorEncoder(tmp_path / "saved-out")
    assert runtime.truncate_dim == 5 and runtime.get_embedding_dimension() == loaded.get_embedding_dimension()
    expected_q = loaded.encode_query(QUERIES, convert_to_numpy=True)
    expected_d = loaded.encode_document(TEXTS, convert_to_numpy=True)
    actual_q, actual_d = runtime.encode_query(QUERIES), runtime.encode_document(TEXTS)
    assert_same_rows(expected_q, actual_q, QUERIES)
    assert_same_rows(expected_d, actual_d, TEXTS)
    np.testing.assert_allclose(runtime.similarity(actual_q, actual_d),
                               loaded.similarity(expected_q, expected_d).numpy(), rtol=1e-5, atol=1e-4)
    assert_same_rows(loaded.encode(TEXTS, truncate_dim=3, convert_to_numpy=True), runtime.encode(TEXTS, truncate_dim=3),
                     TEXTS)


@st6
def test_exporter_records_truncate_dim_as_sentence_transformers_applies_it():
    from types import SimpleNamespace

    from exporters.errors import UnsupportedModelError
    from exporters.multi_vector import saved_truncate_dim

    assert saved_truncate_dim(SimpleNamespace(), 16) is None  # sentence-transformers < 6.3: no attribute
    assert saved_truncate_dim(SimpleNamespace(truncate_dim=None), 16) is None
    assert saved_truncate_dim(SimpleNamespace(truncate_dim=8), 16) == 8
    # above the dimension, sentence-transformers keeps every dimension and normalizes: truncate_dim=dimension
    assert saved_truncate_dim(SimpleNamespace(truncate_dim=64), 16) == 16
    for bad in (0, -2, 2.5, True):
        with pytest.raises(UnsupportedModelError, match="truncate_dim"):
            saved_truncate_dim(SimpleNamespace(truncate_dim=bad), 16)


@st6
def test_int8_variant_records_maxsim_spearman(exported, tmp_path):
    import shutil

    from quantizers import quantize
    from quantizers.configs import DynamicInt8
    from quantizers.errors import AccuracyError

    _, folder = exported("distilbert-plain-2dense")
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    heldout = varied_sentences(40, seed=11)
    with pytest.raises(AccuracyError):
        quantize(copy, [DynamicInt8()], heldout=heldout, min_accuracy=0.9999999)
    assert [v.name for v in st_runtime.load_manifest(copy).variants] == ["fp32"]
    manifest = quantize(copy, [DynamicInt8()], heldout=heldout, min_accuracy=0.9)
    variant = manifest.variants[1]
    assert variant.precision == "int8"
    assert 0.9 <= variant.accuracy["spearman"] == variant.accuracy["score"] <= 1.0
    quantized = st_runtime.MultiVectorEncoder(copy, variant=variant.name)
    assert [len(x) for x in quantized.encode_document(TEXTS)] == [len(x) for x in
                                                                   st_runtime.MultiVectorEncoder(copy).encode_document(TEXTS)]


@st6
def test_token_pooling_is_refused_by_name(tmp_path, bert_vocab):
    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.multi_vector_encoder.modules import HierarchicalTokenPooling, MultiVectorMask

    from exporters import export
    from exporters.errors import UnsupportedModelError

    build_tiny_transformer(tmp_path / "bert", bert_vocab)
    model = MultiVectorEncoder(modules=[Transformer(str(tmp_path / "bert")), MultiVectorMask(),
                                        HierarchicalTokenPooling(2.0)], device="cpu")
    with pytest.raises(UnsupportedModelError, match="HierarchicalTokenPooling"):
        export(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# PyLate ColBERT folders, as pylate.models.ColBERT.save writes them: name -> (tokens PyLate added to the tokenizer,
# pad token, PyLate's keys of config_sentence_transformers.json, Dense layers (out_features, bias)).
PYLATE_DENSE = "pylate.models.Dense.Dense"
PYLATE_FOLDERS = {
    "v3-colbert": (["[Q] ", "[D] "], "[MASK]",
                   {"model_type": "ColBERT", "query_prefix": "[Q] ", "document_prefix": "[D] ", "query_length": 12,
                    "document_length": 20, "attend_to_expansion_tokens": False,
                    "skiplist_words": list(string.punctuation), "do_query_expansion": True}, ((16, False),)),
    # PyLate <= 3 default skiplist (punctuation, no key), a saved prompt after the prefix, attended expansion
    "v3-attend-prompt": (["[Q] ", "[D] "], None,
                         {"model_type": "ColBERT", "prompts": {"query": "search: ", "document": ""},
                          "query_prefix": "[Q] ", "document_prefix": "[D] ", "query_length": 10, "document_length": 24,
                          "attend_to_expansion_tokens": True}, ((24, True), (8, False))),
    # before PyLate v3: no model_type (sentence-transformers converts it), in-vocabulary prefixes, no expansion
    "pre-v3": ([], None, {"query_prefix": "[unused0]", "document_prefix": "[unused1]", "query_length": 10,
                          "document_length": 20, "do_query_expansion": False, "skiplist_words": [".", ","]},
               ((16, False),)),
}


def build_pylate_folder(folder: Path, bert_vocab: Path, name: str, dense_type: str = PYLATE_DENSE) -> dict:
    """Write a tiny ColBERT folder in PyLate's layout (torch, safetensors and transformers only, so on both lines): the
    transformer and its tokenizer at the root (with the prefix tokens and pad token PyLate sets), token-level Dense
    layers named `dense_type` whose configs predate module IO names, and PyLate's config_sentence_transformers.json.
    Returns that config."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, BertModel

    added, pad_token, pylate_config, dense = PYLATE_FOLDERS[name]
    build_tiny_transformer(folder, bert_vocab)
    if added or pad_token:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tokenizer.add_tokens(added)  # as PyLate adds its prefixes, then resizes the embeddings
        if pad_token:
            tokenizer.pad_token = pad_token
        assert len(tokenizer) == len(bert_vocab.read_text(encoding="utf-8").splitlines()) + len(added)
        torch.manual_seed(3)
        transformer = BertModel.from_pretrained(folder)
        transformer.resize_token_embeddings(len(tokenizer))
        transformer.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    width = 32
    torch.manual_seed(2)
    for idx, (out_features, bias) in enumerate(dense, start=1):
        path = folder / f"{idx}_Dense"
        path.mkdir()
        (path / "config.json").write_text(json.dumps({"in_features": width, "out_features": out_features, "bias": bias,
                                                      "activation_function": "torch.nn.modules.linear.Identity"}))
        weights = {"linear.weight": torch.randn(out_features, width) / width**0.5}
        if bias:
            weights["linear.bias"] = torch.randn(out_features) / 10
        save_file(weights, str(path / "model.safetensors"))
        modules.append({"idx": idx, "name": str(idx), "path": path.name, "type": dense_type})
        width = out_features
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48, "do_lower_case": False}))
    config = {"__version__": {"sentence_transformers": "5.1.0", "transformers": "4.56.0", "pytorch": "2.8.0"},
              "prompts": {"query": "", "document": ""}, "default_prompt_name": None, "similarity_fn_name": "MaxSim",
              **pylate_config}
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config, indent=2))
    return config


@st6
@pytest.mark.parametrize("name", list(PYLATE_FOLDERS))
def test_pylate_folder_exports_with_parity(tmp_path, bert_vocab, name):
    from sentence_transformers import MultiVectorEncoder

    from exporters import export

    config = build_pylate_folder(tmp_path / "pylate", bert_vocab, name)
    reference = MultiVectorEncoder(str(tmp_path / "pylate"), device="cpu")
    # sentence-transformers reads the folder as PyLate meant it: mask and normalization appended, the prefix one token
    # ahead of the saved prompt, queries expanded to query_length, punctuation (or the saved words) skipped
    dense_count = len(PYLATE_FOLDERS[name][3])
    assert [type(m).__name__ for m in reference] == ["Transformer", *["Dense"] * dense_count, "MultiVectorMask",
                                                     "Normalize"]
    prefix = config["query_prefix"]
    assert reference.prompts["query"] == prefix + config["prompts"]["query"]
    assert len(reference.tokenizer.tokenize(prefix)) == 1
    query_rows = {len(q) for q in reference.encode_query(QUERIES)}
    if config.get("do_query_expansion", True):
        assert query_rows == {config["query_length"]}
    else:
        assert len(query_rows) > 1
    assert len(reference.encode_document("hello, world.")) == len(reference.encode_document("hello world"))

    manifest = export(tmp_path / "pylate", tmp_path / "out")
    assert manifest.source["model_type"] == "MultiVectorEncoder"
    model = st_runtime.MultiVectorEncoder(tmp_path / "out")
    assert (model.prompts["query"], model.prompts["document"]) == (reference.prompts["query"], reference.prompts["document"])
    expected_q = reference.encode_query(QUERIES, batch_size=4, convert_to_numpy=True)
    expected_d = reference.encode_document(TEXTS, batch_size=8, convert_to_numpy=True)
    actual_q, actual_d = model.encode_query(QUERIES, batch_size=3), model.encode_document(TEXTS, batch_size=5)
    assert_same_rows(expected_q, actual_q, QUERIES)
    assert_same_rows(expected_d, actual_d, TEXTS)
    np.testing.assert_allclose(model.similarity(actual_q, actual_d), reference.similarity(expected_q, expected_d).numpy(),
                               rtol=1e-5, atol=1e-5)


@st6
def test_pylate_class_table_is_sentence_transformers_own():
    from sentence_transformers.multi_vector_encoder import model

    from exporters.preflight import PYLATE_ALIASES

    assert model._CLASS_REF_ALIASES == PYLATE_ALIASES


EVIL_PYLATE = 'import pathlib\npathlib.Path({marker!r}).write_text("pylate code from the model folder ran")\n'


def test_unknown_pylate_module_is_refused_before_import(tmp_path, bert_vocab):
    """A `pylate.` class that sentence-transformers does not map is refused by name before anything is imported: the
    folder holds a `pylate` package that writes a marker when imported, and st-export runs inside it."""
    folder = tmp_path / "pylate"
    build_pylate_folder(folder, bert_vocab, "v3-colbert", dense_type="pylate.models.Evil.Evil")
    marker = tmp_path / "MARKER"
    for package in (folder / "pylate", folder / "pylate" / "models"):
        package.mkdir()
        (package / "__init__.py").write_text(EVIL_PYLATE.format(marker=str(marker)))
    (folder / "pylate" / "models" / "Evil.py").write_text(EVIL_PYLATE.format(marker=str(marker)))
    result = subprocess.run([sys.executable, "-m", "exporters.cli", str(folder), "-o", str(tmp_path / "out"), "-q"],
                            capture_output=True, text=True, cwd=folder, timeout=300)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("st-export: error: "), result.stderr
    for named in ("'pylate.models.Evil.Evil'", "nothing was imported", PYLATE_DENSE):
        assert named in lines[0]
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_pylate_names_are_mapped_in_modules_json_only_and_make_a_multi_vector_encoder(tmp_path):
    from exporters.errors import UnsupportedModelError
    from exporters.preflight import check_source_folder
    from exporters.source import model_type_of_folder

    def folder(name: str, types: list[str], model_type: str | None) -> Path:
        path = tmp_path / name
        path.mkdir()
        (path / "modules.json").write_text(json.dumps([{"idx": i, "name": str(i), "path": "", "type": t}
                                                       for i, t in enumerate(types)]))
        if model_type is not None:
            (path / "config_sentence_transformers.json").write_text(json.dumps({"model_type": model_type}))
        return path

    transformer = "sentence_transformers.models.Transformer"
    for model_type in (None, "SentenceTransformer", "ColBERT", "MultiVectorEncoder"):
        path = folder(f"pylate-{model_type}", [transformer, PYLATE_DENSE], model_type)
        check_source_folder(path)
        assert model_type_of_folder(path) == "MultiVectorEncoder"
    assert model_type_of_folder(folder("colbert", [transformer], "ColBERT")) == "MultiVectorEncoder"
    with pytest.raises(UnsupportedModelError, match="model_type 'CrossEncoder'"):
        model_type_of_folder(folder("pylate-cross", [transformer, PYLATE_DENSE], "CrossEncoder"))
    # a Router imports its route classes itself: there a PyLate name stays refused
    router = folder("router", ["sentence_transformers.base.modules.router.Router"], "ColBERT")
    (router / "router_config.json").write_text(json.dumps({"types": {"query_0_Dense": PYLATE_DENSE},
                                                           "structure": {"query": ["query_0_Dense"]}}))
    with pytest.raises(UnsupportedModelError, match="not in a Router"):
        check_source_folder(router)


CHILD = """
    import st_runtime
    model = st_runtime.MultiVectorEncoder(sys.argv[1])
    queries, documents = model.encode_query(json.loads(sys.argv[2])), model.encode_document(json.loads(sys.argv[3]))
    print(json.dumps({"scores": model.similarity(queries, documents).tolist(), "loaded": loaded_blocked()}))
"""


@st6
def test_runs_where_torch_cannot_be_imported(exported):
    reference, folder = exported("bert-fixed-skiplist")
    result = run_blocking_imports(CHILD, str(folder), json.dumps(QUERIES), json.dumps(TEXTS))
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["loaded"] == []
    expected = reference.similarity(reference.encode_query(QUERIES), reference.encode_document(TEXTS)).numpy()
    np.testing.assert_allclose(np.array(payload["scores"], dtype=np.float32), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(HAS_MULTI_VECTOR, reason="sentence-transformers >= 6 is installed: it exports this kind")
@pytest.mark.parametrize("layout", ["sentence-transformers", *PYLATE_FOLDERS])
def test_sentence_transformers_5_refuses_in_one_line(tmp_path, bert_vocab, capsys, layout):
    from exporters.cli import main

    source = tmp_path / "colbert"
    if layout in PYLATE_FOLDERS:
        build_pylate_folder(source, bert_vocab, layout)
    else:
        build_tiny_transformer(source, bert_vocab)
        (source / "config_sentence_transformers.json").write_text(json.dumps({"model_type": "MultiVectorEncoder"}))
        (source / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type":
                                                          "sentence_transformers.base.modules.transformer.Transformer"}]))
    assert main([str(source), "-o", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "MultiVectorEncoder" in error and "needs sentence-transformers >= 6" in error
    assert not (tmp_path / "out").exists()
