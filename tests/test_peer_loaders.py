"""Exported folders load in the other loaders users reach for: sentence-transformers' backend="openvino" (bi-encoders
and cross-encoders, on our IR, without re-exporting), and loaders that read only tokenizer_config.json for the
truncation length (fastembed). A SPLADE folder deliberately does not run in SparseEncoder(folder, backend="onnx"):
docs/sparse-encoder.md says why, and the last test keeps that page true."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import requires_st_backend
from sentence_transformers import CrossEncoder, SentenceTransformer, SparseEncoder

import st_runtime
from exporters import export
from quantizers import OpenVino, OpenVinoInt8Weights, quantize
from st_runtime.manifest import hash_folder

requires_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                       reason="the OpenVINO IR needs the openvino extra: pip install 'st-runtime[openvino]'")
OV_ATOL = 1e-4
IR = "openvino/openvino_model.xml"
# No file_name: sentence-transformers finds openvino/openvino_model.xml by itself. OpenVINO picks bf16 by itself on
# CPUs with AVX-512 BF16 / AMX; the comparison is at fp32.
OV_KWARGS = {"ov_config": {"INFERENCE_PRECISION_HINT": "f32"}}


def ir_output_names(path: Path) -> list[set[str]]:
    import openvino as ov

    return [set(output.get_names()) for output in ov.Core().read_model(str(path)).outputs]


@pytest.fixture
def ov_bi_encoder(tiny_bi_encoder, tmp_path, sentences):
    """(sentence-transformers model, exported folder with the fp32 IR and an int8-weights IR)."""
    model = tiny_bi_encoder(normalize=True)
    export(model, tmp_path / "out")
    quantize(tmp_path / "out", [OpenVino("fp32"), OpenVinoInt8Weights()], heldout=sentences[:20])
    return model, tmp_path / "out"


@requires_openvino
def test_ir_names_token_embeddings_last_hidden_state(ov_bi_encoder, sentences):
    """optimum-intel refuses an IR with outputs token_embeddings and sentence_embedding; st_runtime still reads the
    token embeddings (as last_hidden_state) from it."""
    model, folder = ov_bi_encoder
    for file in (IR, "openvino/openvino_model_qint8_weights.xml"):
        assert ir_output_names(folder / file) == [{"sentence_embedding"}, {"last_hidden_state"}]
    runtime = st_runtime.SentenceTransformer(folder, variant="openvino")
    texts = sentences[:12]
    for actual, expected in zip(runtime.encode(texts, output_value="token_embeddings"),
                                model.encode(texts, output_value="token_embeddings"), strict=True):
        np.testing.assert_allclose(actual, expected.numpy(), atol=OV_ATOL)


@requires_st_backend
def test_sentence_transformers_openvino_backend_loads_the_ir(ov_bi_encoder, sentences):
    from optimum.intel import OVModelForFeatureExtraction

    model, folder = ov_bi_encoder
    before = hash_folder(folder)
    backend = SentenceTransformer(str(folder), backend="openvino", device="cpu", model_kwargs=OV_KWARGS)
    auto_model = backend[0].auto_model
    assert isinstance(auto_model, OVModelForFeatureExtraction)
    assert Path(auto_model.model_save_dir) == folder / "openvino"  # our IR, not a re-export in a temporary folder
    assert hash_folder(folder) == before
    np.testing.assert_allclose(backend.encode(sentences[:60]), model.encode(sentences[:60]), atol=OV_ATOL)
    onnx_backend = SentenceTransformer(str(folder), backend="onnx", device="cpu",
                                       model_kwargs={"provider": "CPUExecutionProvider"})
    np.testing.assert_allclose(onnx_backend.encode(sentences[:60]), model.encode(sentences[:60]), atol=OV_ATOL)


@requires_st_backend
def test_cross_encoder_openvino_backend_loads_the_ir(tiny_transformers_dir, bert_vocab, sentences, tmp_path):
    from optimum.intel import OVModelForSequenceClassification
    from test_cross_encoder import build_tiny_cross_encoder

    source = tiny_transformers_dir / "peer-ce-bert-1"
    if not source.exists():
        build_tiny_cross_encoder(source, bert_vocab, arch="bert", num_labels=1)
    reference = CrossEncoder(str(source), device="cpu")
    export(reference, tmp_path / "out")
    quantize(tmp_path / "out", [OpenVino("fp32")], heldout=sentences[:20])
    before = hash_folder(tmp_path / "out")
    backend = CrossEncoder(str(tmp_path / "out"), backend="openvino", device="cpu", model_kwargs=OV_KWARGS)
    assert isinstance(backend.model, OVModelForSequenceClassification)
    assert Path(backend.model.model_save_dir) == tmp_path / "out/openvino"
    assert hash_folder(tmp_path / "out") == before
    pairs = list(zip(sentences[:80:2], sentences[1:80:2], strict=True))
    np.testing.assert_allclose(backend.predict(pairs), reference.predict(pairs), atol=OV_ATOL)


def test_tokenizer_config_truncates_at_max_seq_length(tiny_bi_encoder, tmp_path):
    """A source whose tokenizer_config.json says max_length 16 (as all-MiniLM-L6-v2's, saved by transformers 5, says
    128) and model_max_length 64, run at max_seq_length 48: the folder says 48 in both keys, so loaders that read only
    tokenizer_config.json (fastembed takes the smaller key) truncate where sentence-transformers does."""
    model = tiny_bi_encoder(max_seq_length=48)
    model.save(str(tmp_path / "source"))
    config_path = tmp_path / "source/tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config_path.write_text(json.dumps(config | {"max_length": 16, "model_max_length": 64}), encoding="utf-8")
    source = SentenceTransformer(str(tmp_path / "source"), device="cpu")
    source.max_seq_length = 48
    manifest = export(source, tmp_path / "out")
    assert manifest.max_seq_length == 48
    exported = json.loads((tmp_path / "out/tokenizer_config.json").read_text(encoding="utf-8"))
    assert exported["model_max_length"] == 48
    assert exported.get("max_length", 48) == 48


@requires_st_backend
def test_sparse_encoder_onnx_backend_needs_the_logits_we_leave_out(mlm_dir, tmp_path):
    """docs/sparse-encoder.md: the SPLADE graph outputs only the pooled weights (no (batch, tokens, vocab) logits,
    which would cost st_runtime time and memory), so sentence-transformers' backend loads the folder, then fails."""
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    transformer = Transformer(str(mlm_dir), transformer_task="fill-mask", max_seq_length=48)
    manifest = export(SparseEncoder(modules=[transformer, SpladePooling("max")], device="cpu"), tmp_path / "out")
    assert manifest.outputs == ("sentence_embedding",)
    backend = SparseEncoder(str(tmp_path / "out"), backend="onnx", device="cpu",
                            model_kwargs={"provider": "CPUExecutionProvider"})
    with pytest.raises(KeyError, match="logits"):
        backend.encode(["a text"])
