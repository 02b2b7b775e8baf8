"""EmbeddingGemma (Gemma3 text model with bidirectional attention and a sliding window, mean pooling, two Dense layers,
Normalize, the real model's prompts) exports whole and matches sentence-transformers on onnxruntime and OpenVINO; any
failure while tracing is one `st-export: error:` line naming the module and the architecture."""

from __future__ import annotations

import contextlib
import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.models import Dense, Normalize, Pooling, Transformer
from test_long_inputs import random_text, sentencepiece_bpe
from transformers import Gemma3TextConfig, Gemma3TextModel, PreTrainedTokenizerFast

import exporters.api
from exporters.cli import main as cli_main
from exporters.errors import UnsupportedModelError

# EmbeddingGemma's own prompts (config_sentence_transformers.json of google/embeddinggemma-300m), a selection.
PROMPTS = {
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "Clustering": "task: clustering | query: ",
    "Classification": "task: classification | query: ",
    "InstructionRetrieval": "task: code retrieval | query: ",
    "STS": "task: sentence similarity | query: ",
    "Summarization": "task: summarization | query: ",
}
SLIDING_WINDOW = 8
MAX_SEQ_LENGTH = 40
GEMMA_VOCAB = 902  # sentencepiece_bpe(): 900 BPE tokens (256 byte-fallback ones included), "▁▁▁▁", <pad>
# Shorter than the window, between the window and max_seq_length, and longer than max_seq_length, in several scripts.
TEXTS = ["", "ok", "How do I reset my password?",
         *(random_text(random.Random(seed), n) for seed, n in ((1, 30), (2, 120), (3, 400), (4, 900), (5, 60)))]


def build_embedding_gemma(folder: Path) -> Path:
    """A tiny EmbeddingGemma: Gemma3TextModel (bidirectional, a sliding and a full attention layer) -> mean Pooling ->
    Dense(32 -> 96) -> Dense(96 -> 32) -> Normalize, with its prompts; returns the sentence-transformers folder."""
    tokenizer_object = sentencepiece_bpe()
    tokenizer_object.add_special_tokens(["<pad>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", pad_token="<pad>", model_max_length=2048)
    assert len(tokenizer) == GEMMA_VOCAB
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, max_position_embeddings=256,
        sliding_window=SLIDING_WINDOW, layer_types=["sliding_attention", "full_attention"],
        use_bidirectional_attention=True, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id)
    Gemma3TextModel(config).save_pretrained(folder / "hf")
    tokenizer.save_pretrained(folder / "hf")
    transformer = Transformer(str(folder / "hf"), max_seq_length=MAX_SEQ_LENGTH)
    assert transformer.auto_model.config.use_bidirectional_attention
    torch.manual_seed(1)
    modules = [transformer, Pooling(32, "mean"), Dense(32, 96, bias=False, activation_function=torch.nn.Identity()),
               Dense(96, 32, bias=False, activation_function=torch.nn.Identity()), Normalize()]
    model = SentenceTransformer(modules=modules, device="cpu", prompts=PROMPTS, similarity_fn_name="cosine")
    model.save(str(folder / "st"))
    return folder / "st"


@pytest.fixture(scope="module")
def gemma_source(tmp_path_factory) -> Path:
    return build_embedding_gemma(tmp_path_factory.mktemp("embeddinggemma"))


@pytest.fixture(scope="module")
def gemma_export(gemma_source, tmp_path_factory) -> Path:
    """The tiny EmbeddingGemma exported by st-export, with the fp32 OpenVINO IR."""
    out = tmp_path_factory.mktemp("embeddinggemma-export") / "out"
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli_main([str(gemma_source), "-o", str(out), "--backend", "openvino"]) == 0
    return out


def test_embedding_gemma_matches_sentence_transformers_with_every_prompt(gemma_source, gemma_export):
    """It was a 253-line traceback ending in `RuntimeError: unordered_map::at` (transformers builds the bidirectional
    mask with torch.vmap): now every prompt matches on onnxruntime and OpenVINO, texts past the sliding window and
    past max_seq_length included."""
    import st_runtime

    reference = SentenceTransformer(str(gemma_source), device="cpu")
    runtimes = [st_runtime.SentenceTransformer(gemma_export, backend=backend) for backend in ("onnx", "openvino")]
    assert runtimes[0].manifest.prompts == PROMPTS and runtimes[1].variant.name == "openvino"
    assert max(len(reference.tokenize([t])["input_ids"][0]) for t in TEXTS) == MAX_SEQ_LENGTH > 2 * SLIDING_WINDOW
    for prompt_name in [None, *PROMPTS]:
        expected = reference.encode(TEXTS, batch_size=4, prompt_name=prompt_name, show_progress_bar=False)
        for runtime in runtimes:
            actual = runtime.encode(TEXTS, batch_size=4, prompt_name=prompt_name)
            assert actual.shape == expected.shape == (len(TEXTS), 32)
            assert np.abs(actual.astype(np.float64) - expected).max() <= 1e-4, (runtime.variant.name, prompt_name)


def cli_error(argv: list[str], capsys) -> str:
    """Run st-export in-process; assert exit 1 and one `st-export: error:` line on stderr; return it."""
    assert cli_main([*argv, "-q"]) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("st-export: error: ") and "Traceback" not in err, err
    return lines[0]


def raise_in_export(exc: BaseException):
    def export(*args, **kwargs):
        raise exc
    return export


def test_a_failure_inside_the_model_while_tracing_names_the_module(gemma_source, tmp_path, capsys, monkeypatch):
    """Without the broadcast masks, tracing fails inside transformers' vmap (the original report): one line that names
    the module and the architecture, exit 1, nothing written."""
    monkeypatch.setattr(exporters.api, "broadcast_masks", contextlib.nullcontext)
    line = cli_error([str(gemma_source), "-o", str(tmp_path / "out")], capsys)
    assert "in Module 0 (Transformer, Gemma3TextModel)" in line and "gemma3_text" in line, line
    assert "ST_RUNTIME_DEBUG=1" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("raised", "expected"), [
    (RuntimeError("unordered_map::at"), "Tracing the graph failed for the chain Module 0 (Transformer, Gemma3TextModel)"
                                        " -> Pooling -> Dense -> Dense -> Normalize, architecture Gemma3TextModel "
                                        "(model_type gemma3_text): RuntimeError: unordered_map::at."),
    (MemoryError(), "Out of memory while tracing the graph for the chain Module 0 (Transformer, Gemma3TextModel)"),
    (UnsupportedModelError("our own message"), "st-export: error: our own message"),
], ids=["RuntimeError", "MemoryError", "own-error"])
def test_any_failure_of_torch_onnx_export_is_one_line(gemma_source, tmp_path, capsys, monkeypatch, raised, expected):
    """Whatever torch.onnx.export raises: one line, exit 1, nothing written; the project's own errors unchanged."""
    monkeypatch.setattr(torch.onnx, "export", raise_in_export(raised))
    line = cli_error([str(gemma_source), "-o", str(tmp_path / "out")], capsys)
    assert expected in line, line
    assert list(tmp_path.iterdir()) == []


def test_a_failure_while_building_variants_is_one_line(gemma_source, tmp_path, capsys, monkeypatch):
    """An unforeseen error of a quantizer (onnxruntime, OpenVINO, NNCF) after the fp32 graph passed parity: one line
    that says how to get the fp32 folder, exit 1, nothing written."""
    import quantizers

    monkeypatch.setattr(quantizers, "quantize", lambda *args, **kwargs: raise_in_export(RuntimeError("bad node"))())
    line = cli_error([str(gemma_source), "-o", str(tmp_path / "out"), "--quantize", "int8"], capsys)
    assert "Building the variants failed" in line and "RuntimeError: bad node" in line, line
    assert "without the variant flags" in line and "gemma3_text" in line, line
    assert list(tmp_path.iterdir()) == []
