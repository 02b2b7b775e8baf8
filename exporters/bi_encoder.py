"""Bi-encoders (SentenceTransformer): Transformer -> Pooling -> Dense* -> Normalize in one graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from exporters.artifacts import TOKENIZER_FILE, write_tokenizer
from exporters.graphs import PROMPT_LENGTH, BiEncoderGraph
from exporters.kinds import ExportOptions, KindExporter, SourceModel, register
from exporters.onnx_export import export_onnx
from exporters.parity import check_bi_encoder_parity
from exporters.source import graph_input_names
from st_runtime.manifest import Variant

ONNX_FILE = "onnx/model.onnx"
SEQUENCE_AXES = {0: "batch_size", 1: "sequence_length"}


def write_bi_encoder(source: SourceModel, staging: Path, options: ExportOptions) -> dict[str, Any]:
    """Write tokenizer.json and onnx/model.onnx; return the manifest fields of a sentence-embedding model."""
    model: SentenceTransformer = source.model
    tokenizer = write_tokenizer(model[0].tokenizer, model.max_seq_length, staging / TOKENIZER_FILE)
    input_names = graph_input_names(model)
    excludes_prompt = any(m["type"] == "Pooling" and not m["config"].get("include_prompt", True) for m in source.modules)

    example = model.preprocess(["a short text", "a somewhat longer text for tracing the graph"])
    inputs = {name: example[name] for name in input_names}
    optional = {}
    if excludes_prompt:
        inputs[PROMPT_LENGTH] = torch.tensor([1], dtype=torch.int64)
        optional[PROMPT_LENGTH] = np.array([0], dtype=np.int64)
    axes = {name: SEQUENCE_AXES for name in input_names}
    axes |= {"token_embeddings": SEQUENCE_AXES, "sentence_embedding": {0: "batch_size"}, "last_hidden_state": SEQUENCE_AXES}
    graph = BiEncoderGraph(list(model), list(inputs)).eval()
    export_onnx(graph, inputs, staging / ONNX_FILE, output_names=list(BiEncoderGraph.output_names), dynamic_axes=axes,
                optional_inputs=optional, opset=options.opset, external_data=options.external_data)
    return {
        "inputs": tuple(inputs),
        "outputs": ("token_embeddings", "sentence_embedding"),
        "tokenizer": tokenizer,
        "variants": (Variant(name="fp32", file=ONNX_FILE, precision="fp32"),),
        "embedding_dimension": model.get_embedding_dimension(),
        "similarity_fn_name": model.similarity_fn_name,
        "prompts": dict(model.prompts),
        "default_prompt_name": model.default_prompt_name,
    }


BI_ENCODER = register(KindExporter(
    task="sentence-embedding",
    model_type="SentenceTransformer",
    load=SentenceTransformer,
    supported_modules=frozenset({"Transformer", "Pooling", "Dense", "Normalize", "Dropout", "LayerNorm"}),
    write=write_bi_encoder,
    check_parity=check_bi_encoder_parity,
))
