"""The manifest is the folder contract: it round-trips and refuses what it does not understand."""

from __future__ import annotations

import json

import pytest

from st_runtime.errors import ManifestError
from st_runtime.manifest import FORMAT_VERSION, Manifest, TokenizerSpec, Variant


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
    (lambda d: d.update(format_version=2), "format_version 2"),
    (lambda d: d.pop("format_version"), "format_version None"),
    (lambda d: d.pop("tokenizer"), "missing or has malformed"),
    (lambda d: d["variants"].append({"nme": "typo"}), "missing or has malformed"),
])
def test_malformed_manifests_are_refused(mutate, message):
    data = json.loads(make_manifest().to_json())
    mutate(data)
    with pytest.raises(ManifestError, match=message):
        Manifest.from_json(json.dumps(data))
