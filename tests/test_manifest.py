"""The manifest is the folder contract: it round-trips and refuses what it does not understand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from st_runtime.errors import ManifestError
from st_runtime.manifest import FORMAT_VERSION, Manifest, TokenizerSpec, Variant
from st_runtime.task_configs import (
    BiEncoderConfig,
    CrossEncoderConfig,
    MultiVectorConfig,
    SparseEncoderConfig,
    SparseGraphConfig,
    SpladePooling,
)


def make_manifest() -> Manifest:
    return Manifest(
        task="sentence-embedding",
        inputs=("input_ids", "attention_mask"),
        outputs=("token_embeddings", "sentence_embedding"),
        tokenizer=TokenizerSpec(max_seq_length=128, pad_token="<pad>", pad_token_id=1),
        variants=(Variant(name="fp32", file="onnx/model.onnx"),
                  Variant(name="qint8_avx2", file="onnx/model_qint8_avx2.onnx", precision="int8", isa="avx2",
                          accuracy={"mean_cosine": 0.995})),
        embedding_dimension=384,
        prompts={"query": "query: "},
        files={"onnx/model.onnx": "ab" * 32},
    )


def test_round_trip_is_lossless_and_stable():
    manifest = make_manifest()
    text = manifest.to_json()
    assert Manifest.from_json(text) == manifest
    assert Manifest.from_json(text).to_json() == text
    assert json.loads(text)["format_version"] == FORMAT_VERSION


def test_variant_lookup():
    manifest = make_manifest()
    assert manifest.variant().name == "fp32"
    assert manifest.variant(name="qint8_avx2").isa == "avx2"
    assert manifest.variant(file_name="model_qint8_avx2.onnx").name == "qint8_avx2"
    with pytest.raises(ManifestError, match="Available"):
        manifest.variant(name="fp16")


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(format_version=3), "format_version 3"),
    (lambda d: d.pop("format_version"), "format_version None"),
    (lambda d: d.pop("tokenizer"), "missing or has malformed"),
    (lambda d: d["variants"].append({"nme": "typo"}), "missing or has malformed"),
])
def test_malformed_manifests_are_refused(mutate, message):
    data = json.loads(make_manifest().to_json())
    mutate(data)
    with pytest.raises(ManifestError, match=message):
        Manifest.from_json(json.dumps(data))


# --- the typed task contract -------------------------------------------------------------------------------------

FORMAT1 = Path(__file__).parent / "data" / "format1"  # st_runtime.json files of tiny folders exported before the
# task_config was typed, kept as written: every kind, and a Router model (inference-free SPLADE)
CONFIG_CLASSES = {
    "sentence-embedding.json": (BiEncoderConfig, None),
    "text-ranking.json": (CrossEncoderConfig, None),
    "sparse-embedding.json": (SparseEncoderConfig, None),
    "sparse-embedding-router.json": (SparseEncoderConfig, SparseGraphConfig),
    "multi-vector-embedding.json": (MultiVectorConfig, None),
}


@pytest.mark.parametrize("name", sorted(CONFIG_CLASSES))
def test_folders_of_the_current_format_load_and_write_back_unchanged(name):
    text = (FORMAT1 / name).read_text(encoding="utf-8")
    manifest = Manifest.from_json(text)
    top, route = CONFIG_CLASSES[name]
    assert type(manifest.task_config) is top
    assert manifest.task_config == json.loads(text)["task_config"]  # the typed config reads as the dict it came from
    if route is not None:
        assert {type(r.task_config) for r in manifest.routing.routes.values()} == {route}
    # format 1 reads as format 2 (which only added optional keys): the same JSON but for the version
    assert manifest.format_version == FORMAT_VERSION == 2
    assert manifest.to_json() == text.replace('"format_version": 1,', '"format_version": 2,', 1)


@pytest.mark.parametrize("mutate, key", [
    (lambda d: d["variants"][0].update(report={"fusions": {"BiasGelu": 2}}), "report"),
    (lambda d: d["task_config"].update(truncate_dim=6), "truncate_dim"),
])
def test_format_1_with_keys_of_format_2_is_refused(mutate, key):
    data = _format1("multi-vector-embedding.json")
    assert data["format_version"] == 1
    mutate(data)
    with pytest.raises(ManifestError, match=rf"format_version 1 but uses keys of format 2 \(.*{key}"):
        Manifest.from_json(json.dumps(data))


def test_typed_task_configs_of_each_kind():
    cross = Manifest.from_json((FORMAT1 / "text-ranking.json").read_text()).task_config
    assert (cross.num_labels, cross.activation) == (3, "identity")
    splade = Manifest.from_json((FORMAT1 / "sparse-embedding.json").read_text()).task_config
    assert splade.vocab_size == 30522 and splade.max_active_dims is None
    assert splade.splade == SpladePooling(pooling_strategy="sum", activation_function="log1p_relu", chunk_size=5)
    routed = Manifest.from_json((FORMAT1 / "sparse-embedding-router.json").read_text())
    assert routed.task_config.splade is None  # the top level of a Router model records the vocabulary only
    assert routed.routing.routes["query"].task_config.splade is None  # SparseStaticEmbedding
    assert routed.routing.routes["document"].task_config.splade.pooling_strategy == "max"
    multi = Manifest.from_json((FORMAT1 / "multi-vector-embedding.json").read_text()).task_config
    assert multi.query_expansion.length == 12 and multi.query_expansion.strategy == "fixed"
    assert multi.document_length == 20 and multi.truncate_dim is None and "truncate_dim" not in multi
    assert isinstance(multi.skiplist_ids, tuple) and multi.skiplist_tasks == ("document",)


def _format1(name: str) -> dict:
    return json.loads((FORMAT1 / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name, mutate, message", [
    # a misspelt key is refused by name, with the keys the task takes
    ("text-ranking.json", lambda d: d["task_config"].update(activaton=d["task_config"].pop("activation")),
     r"task_config\.activaton is not a key of a text-ranking task_config \(its keys: activation, activation_fn"),
    ("sentence-embedding.json", lambda d: d["task_config"].update(vocab_size=5),
     r"task_config\.vocab_size is not a key of a sentence-embedding task_config"),
    ("sparse-embedding-router.json", lambda d: d["routing"]["routes"]["query"]["task_config"].update(max_active_dims=3),
     r"routing\.routes\['query'\]\.task_config\.max_active_dims is not a key"),
    # a missing key, and a wrong type, are refused by name
    ("text-ranking.json", lambda d: d["task_config"].pop("num_labels"), r"task_config\.num_labels is missing"),
    ("sparse-embedding.json", lambda d: d["task_config"].pop("chunk_size"), r"task_config\.chunk_size is missing"),
    ("sparse-embedding.json", lambda d: d["task_config"].update(pooling_strategy="mean"),
     r"task_config\.pooling_strategy is 'mean': expected one of \['max', 'sum'\]"),
    ("multi-vector-embedding.json", lambda d: d["task_config"].update(has_mask_module="yes"),
     r"task_config\.has_mask_module is 'yes': expected true or false"),
    ("multi-vector-embedding.json", lambda d: d["task_config"]["query_expansion"].update(length="12"),
     r"task_config\.query_expansion\.length is '12'"),
    ("multi-vector-embedding.json", lambda d: d.update(format_version=2) or d["task_config"].update(truncate_dim=0),
     r"task_config\.truncate_dim is 0"),
    ("multi-vector-embedding.json", lambda d: d["task_config"].update(skiplist_ids=[1, "2"]),
     r"task_config\.skiplist_ids is \[1, '2'\]: expected a list of token ids"),
    # the task itself is one of the four
    ("sentence-embedding.json", lambda d: d.update(task="sentence-embeddings"), r"task is 'sentence-embeddings'"),
])
def test_task_config_keys_are_checked_by_name(name, mutate, message):
    data = _format1(name)
    mutate(data)
    with pytest.raises(ManifestError, match=r"st_runtime\.json is missing or has malformed fields: " + message):
        Manifest.from_json(json.dumps(data))


def test_optional_task_config_keys_and_variant_reports_are_written_only_when_set():
    data = _format1("multi-vector-embedding.json") | {"format_version": 2}
    data["task_config"]["truncate_dim"] = 6
    data["variants"].append({"name": "O2", "file": "onnx/model_O2.onnx", "report": {"fusions": {"BiasGelu": 2}}})
    manifest = Manifest.from_json(json.dumps(data))
    assert manifest.task_config.truncate_dim == 6 and manifest.task_config["truncate_dim"] == 6
    assert manifest.variant(name="O2").report == {"fusions": {"BiasGelu": 2}}
    written = json.loads(manifest.to_json())
    assert written["task_config"]["truncate_dim"] == 6
    assert "report" not in written["variants"][0] and written["variants"][1]["report"] == {"fusions": {"BiasGelu": 2}}
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_a_manifest_takes_its_task_s_config_class():
    with pytest.raises(TypeError, match="text-ranking manifest's task_config is a CrossEncoderConfig"):
        Manifest(**{**make_manifest().__dict__, "task": "text-ranking"})
