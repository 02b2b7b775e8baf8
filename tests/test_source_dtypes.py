"""bf16/fp16 sources (Qwen3-Embedding ships bf16, e5-mistral fp16) export in fp32: the graph is traced from the weights
cast to fp32 and checked against sentence-transformers in fp32; the manifest records the source dtype and the graph's
difference to sentence-transformers in that dtype (exporters/source_dtype.py)."""

from __future__ import annotations

import contextlib
import copy
import io
import random
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import assert_bi_encoder_parity
from sentence_transformers import SentenceTransformer
from sentence_transformers.models import Normalize, Pooling, Transformer
from test_long_inputs import qwen_style, random_text
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

import st_runtime
from exporters import export
from exporters.cli import main as cli_main
from exporters.parity import PROBE_TEXTS, max_abs_and_min_cosine

REDUCED = {"bfloat16": torch.bfloat16, "float16": torch.float16}
REDUCED_ONNX_TYPES = {onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT16}
QWEN_VOCAB = 603  # qwen_style(): 600 byte-level BPE tokens + <s>, </s>, <mask>
# Short and long (past max_seq_length) texts in several scripts, so that left padding and truncation both show.
TEXTS = ["", "ok", "What is the capital of France?",
         *(random_text(random.Random(seed), n) for seed, n in ((1, 60), (2, 300), (3, 900), (4, 40)))]


def build_tiny_qwen3(folder: Path, dtype: torch.dtype) -> Path:
    """A Qwen3-Embedding-style bi-encoder (last-token pooling, left padding, Normalize) whose config and weights are
    saved in `dtype`, as the real checkpoint is; returns the sentence-transformers folder."""
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=qwen_style(), eos_token="</s>", pad_token="</s>",
                                        padding_side="left", model_max_length=64)
    assert len(tokenizer) == QWEN_VOCAB
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id)
    model = Qwen3Model(config).to(dtype)
    model.config.dtype = model.config.torch_dtype = dtype  # "dtype" (transformers 5) / "torch_dtype" (4.57)
    model.save_pretrained(folder / "hf")
    tokenizer.save_pretrained(folder / "hf")
    transformer = Transformer(str(folder / "hf"), max_seq_length=48)
    st = SentenceTransformer(modules=[transformer, Pooling(32, "lasttoken"), Normalize()], device="cpu").to(dtype)
    st.save(str(folder / "st"))
    return folder / "st"


def reduced_tensors(path: Path) -> list[str]:
    """Names of the graph's initializers, inputs, outputs and Cast targets that are bf16/fp16."""
    graph = onnx.load(str(path)).graph
    found = [t.name for t in graph.initializer if t.data_type in REDUCED_ONNX_TYPES]
    found += [v.name for v in [*graph.input, *graph.output, *graph.value_info]
              if v.type.tensor_type.elem_type in REDUCED_ONNX_TYPES]
    found += [n.name for n in graph.node if n.op_type == "Cast"
              and any(a.name == "to" and a.i in REDUCED_ONNX_TYPES for a in n.attribute)]
    return found


def loaded_dtype(model: torch.nn.Module) -> str:
    return str(next(model.parameters()).dtype).removeprefix("torch.")


@pytest.fixture(scope="module", params=sorted(REDUCED))
def cli_export(request, tmp_path_factory):
    """(source folder, exported folder, summary line) of a tiny Qwen3 saved in bf16 / fp16, exported by st-export."""
    folder = tmp_path_factory.mktemp(f"qwen3-{request.param}")
    source = build_tiny_qwen3(folder, REDUCED[request.param])
    out = io.StringIO()  # capsys is per test; the export is once per module
    with contextlib.redirect_stdout(out):
        assert cli_main([str(source), "-o", str(folder / "out")]) == 0
    return request.param, source, folder / "out", out.getvalue()


def test_a_reduced_precision_source_exports_an_fp32_graph_that_matches_fp32(cli_export):
    """bf16 crashed onnxruntime (`NOT_IMPLEMENTED ... Where(16)`, the graph was traced in bf16) and fp16 drifted 3.7e-4
    from fp32: the graph holds no bf16/fp16 tensor and matches sentence-transformers run in fp32 within 1e-4."""
    _, source, out, _ = cli_export
    assert reduced_tensors(out / "onnx" / "model.onnx") == []
    reference = SentenceTransformer(str(source), device="cpu")
    assert_bi_encoder_parity(reference.float(), out, TEXTS, atol=1e-4, batch_size=4)


def test_the_manifest_records_the_source_dtype_and_the_difference_to_it(cli_export):
    """sentence-transformers 6 (transformers 5) runs the checkpoint in its config's dtype: the manifest and the summary
    name it with the graph's measured difference to it; the 5 line loads it in fp32, and then there is none."""
    dtype, source, out, summary = cli_export
    manifest = st_runtime.SentenceTransformer(out).manifest
    reference = SentenceTransformer(str(source), device="cpu")
    if loaded_dtype(reference) == "float32":  # sentence-transformers 5 / transformers 4.57: fp32 by default
        assert "dtype" not in manifest.source and "source_dtype" not in manifest.parity
        return
    assert loaded_dtype(reference) == dtype
    assert manifest.source["dtype"] == dtype and manifest.parity["source_dtype"] == dtype
    expected = reference.encode(list(PROBE_TEXTS), batch_size=4, show_progress_bar=False)
    actual = st_runtime.SentenceTransformer(out).encode(list(PROBE_TEXTS), batch_size=4)
    measured, cosine = max_abs_and_min_cosine(expected, actual)
    assert np.isfinite(actual).all()
    if np.isfinite(measured):
        assert manifest.parity["source_dtype_max_abs_diff"] == pytest.approx(measured, rel=1e-3)
        assert manifest.parity["source_dtype_min_cosine"] == pytest.approx(cosine, abs=1e-9)
        assert measured > 10 * manifest.parity["max_abs_diff"]  # the fp32 gate is tighter than the reduced precision
        assert f"source in {dtype}, exported in fp32 (max |diff| to it in {dtype} {measured:.2e})" in summary
    else:  # this tiny fp16 model gives NaN on the empty text, left-padded in its batch: recorded, not a number
        assert manifest.parity["source_dtype_max_abs_diff"] is None
        assert "non-finite" in manifest.parity["source_dtype_note"]
        assert f"source in {dtype}, exported in fp32 (sentence-transformers gives non-finite" in summary


def test_a_bf16_model_in_memory_exports_in_fp32_and_is_handed_back_unchanged(tmp_path):
    """A model the caller already loaded in bf16 (both sentence-transformers lines): an fp32 graph, the source dtype
    in the manifest, and the caller's model back in bf16 with the very same weights."""
    source = build_tiny_qwen3(tmp_path / "model", torch.float32)
    model = SentenceTransformer(str(source), device="cpu").to(torch.bfloat16)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    fp32 = copy.deepcopy(model).float()
    manifest = export(model, tmp_path / "out")
    assert reduced_tensors(tmp_path / "out" / "onnx" / "model.onnx") == []
    assert manifest.source["dtype"] == "bfloat16" and manifest.parity["source_dtype_max_abs_diff"] > 0
    after = model.state_dict()
    assert all(after[name].dtype == tensor.dtype and torch.equal(after[name], tensor) for name, tensor in before.items())
    assert_bi_encoder_parity(fp32, tmp_path / "out", TEXTS, atol=1e-4, batch_size=4)
