"""The real all-MiniLM-L6-v2 and all-mpnet-base-v2 (shipped by pip packages), exported and compared with
sentence-transformers on 240 varied sentences; sentence-transformers' own ONNX backend loads the folder."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_bi_encoder_parity, requires_st_backend
from sentence_transformers import SentenceTransformer

import st_runtime
from exporters import export

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm(minilm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("minilm") / "exported"
    export(minilm_dir, out)
    return SentenceTransformer(str(minilm_dir), device="cpu"), out


def test_minilm_parity(minilm, sentences):
    reference, folder = minilm
    assert len(sentences) >= 200
    manifest = st_runtime.load_manifest(folder)
    assert manifest.max_seq_length == 256 and manifest.embedding_dimension == 384
    assert manifest.similarity_fn_name == "cosine"
    assert_bi_encoder_parity(reference, folder, sentences)
    assert_bi_encoder_parity(reference, folder, sentences[:40], batch_size=1)


def test_minilm_long_texts_truncate_at_256_not_128(minilm, sentences):
    """The tokenizer.json shipped in the package truncates at 128; sentence-transformers uses 256."""
    reference, folder = minilm
    long_texts = [t for t in sentences if len(reference.tokenizer(t)["input_ids"]) > 256]
    assert len(long_texts) >= 5
    runtime = st_runtime.SentenceTransformer(folder)
    assert runtime.tokenizer.encode(long_texts[:1])["input_ids"].shape[1] == 256
    assert_bi_encoder_parity(reference, folder, long_texts)


@requires_st_backend
def test_sentence_transformers_onnx_backend_loads_the_folder(minilm, sentences):
    reference, folder = minilm
    backend = SentenceTransformer(str(folder), backend="onnx", device="cpu",
                                  model_kwargs={"provider": "CPUExecutionProvider"})
    np.testing.assert_allclose(backend.encode(sentences), reference.encode(sentences), atol=1e-5)


def test_mpnet_parity(mpnet_dir, tmp_path, sentences):
    reference = SentenceTransformer(str(mpnet_dir), device="cpu")
    manifest = export(reference, tmp_path / "mpnet")
    assert manifest.inputs == ("input_ids", "attention_mask")
    assert manifest.max_seq_length == 384 and manifest.embedding_dimension == 768
    assert_bi_encoder_parity(reference, tmp_path / "mpnet", sentences)
