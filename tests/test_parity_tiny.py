"""fp32 parity of exported tiny random-weight bi-encoders with sentence-transformers, run in the same test."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_bi_encoder_parity

from exporters import export

POOLING_MODES = ["cls", "lasttoken", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", ("cls", "mean", "max")]


@pytest.mark.parametrize("pooling_mode", POOLING_MODES, ids=lambda m: "+".join(m) if isinstance(m, tuple) else m)
@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_every_pooling_mode(tiny_bi_encoder, tmp_path, sentences, pooling_mode, arch):
    model = tiny_bi_encoder(arch=arch, pooling_mode=pooling_mode)
    manifest = export(model, tmp_path / "out")
    expected_inputs = ("input_ids", "attention_mask", "token_type_ids") if arch == "bert" else ("input_ids",
                                                                                                "attention_mask")
    assert manifest.inputs == expected_inputs
    assert_bi_encoder_parity(model, tmp_path / "out", sentences)


@pytest.mark.parametrize("pooling_mode", ["mean", "cls", "lasttoken", "max", "weightedmean"])
def test_include_prompt_false_excludes_prompt_tokens(tiny_bi_encoder, tmp_path, sentences, pooling_mode):
    prompts = {"query": "query: represent this question for retrieval ", "document": "passage: "}
    model = tiny_bi_encoder(pooling_mode=pooling_mode, include_prompt=False, prompts=prompts)
    manifest = export(model, tmp_path / "out")
    assert "prompt_length" in manifest.inputs
    for prompt_name in (None, "query", "document"):
        assert_bi_encoder_parity(model, tmp_path / "out", sentences, prompt_name=prompt_name)
    assert_bi_encoder_parity(model, tmp_path / "out", sentences[:20], prompt="an ad-hoc prompt: ")


def test_weightedmean_rule_follows_the_installed_pooling(tiny_bi_encoder, tmp_path, sentences):
    """sentence-transformers 6 numbers weightedmean positions from each text's first unmasked token of the mask it
    was given, and excluding a prompt keeps the text's positions; 5.x numbers them from 0. The exporter finds the
    installed rule by running Pooling; a multi-mode Pooling (weightedmean in the middle) with and without a prompt
    matches sentence-transformers either way."""
    from sentence_transformers import __version__

    from exporters import bi_encoder

    installed_major = int(__version__.split(".")[0])
    assert bi_encoder.WEIGHTS_START_AT_FIRST_TOKEN is (installed_major >= 6)
    model = tiny_bi_encoder(pooling_mode=("cls", "weightedmean", "max"), include_prompt=False,
                            prompts={"query": "query: a long instruction prompt "})
    export(model, tmp_path / "out")
    for prompt_name in (None, "query"):
        assert_bi_encoder_parity(model, tmp_path / "out", sentences, prompt_name=prompt_name)


def test_dense_chain_with_normalize(tiny_bi_encoder, tmp_path, sentences):
    dense = ((24, torch.nn.Tanh()), (16, None), (8, torch.nn.ReLU()))
    model = tiny_bi_encoder(pooling_mode="mean", dense=dense, normalize=True)
    manifest = export(model, tmp_path / "out")
    assert manifest.embedding_dimension == 8
    assert [m["type"] for m in manifest.modules] == ["Transformer", "Pooling", "Dense", "Dense", "Dense", "Normalize"]
    assert_bi_encoder_parity(model, tmp_path / "out", sentences)


@pytest.mark.parametrize("normalize", [True, False])
def test_with_and_without_normalize(tiny_bi_encoder, tmp_path, sentences, normalize):
    model = tiny_bi_encoder(dense=((20, torch.nn.GELU()),), normalize=normalize)
    export(model, tmp_path / "out")
    assert_bi_encoder_parity(model, tmp_path / "out", sentences)
    assert_bi_encoder_parity(model, tmp_path / "out", sentences[:30], normalize_embeddings=True)


def test_layer_norm_and_dropout(tiny_bi_encoder, tmp_path, sentences):
    model = tiny_bi_encoder(layer_norm=True, dropout=True, dense=((12, torch.nn.Tanh()),))
    export(model, tmp_path / "out")
    assert_bi_encoder_parity(model, tmp_path / "out", sentences)


def test_prompts_and_default_prompt(tiny_bi_encoder, tmp_path, sentences):
    prompts = {"query": "query: ", "document": "document: ", "classification": "Classify the topic: "}
    model = tiny_bi_encoder(prompts=prompts, default_prompt_name="classification", similarity_fn_name="dot")
    manifest = export(model, tmp_path / "out")
    assert manifest.prompts == prompts
    assert manifest.default_prompt_name == "classification"
    assert manifest.similarity_fn_name == "dot"
    assert_bi_encoder_parity(model, tmp_path / "out", sentences)  # default prompt applied by both
    assert_bi_encoder_parity(model, tmp_path / "out", sentences, prompt_name="query")
    assert_bi_encoder_parity(model, tmp_path / "out", sentences, prompt="custom: ")


@pytest.mark.parametrize("max_seq_length", [8, 16, 64])
def test_truncation_at_max_seq_length(tiny_bi_encoder, tmp_path, sentences, max_seq_length):
    model = tiny_bi_encoder(max_seq_length=max_seq_length)
    manifest = export(model, tmp_path / "out")
    assert manifest.max_seq_length == max_seq_length
    long_texts = [t for t in sentences if len(t) > 300][:20]
    assert long_texts
    assert_bi_encoder_parity(model, tmp_path / "out", long_texts + sentences[:20])


def test_empty_unicode_and_batch_sizes(tiny_bi_encoder, tmp_path, sentences):
    model = tiny_bi_encoder(pooling_mode="max")
    export(model, tmp_path / "out")
    texts = ["", " ", "🙂", "東京", "Zürich", "\n\t", *sentences[:10]]
    for batch_size in (1, 3, 64):
        assert_bi_encoder_parity(model, tmp_path / "out", texts, batch_size=batch_size)
