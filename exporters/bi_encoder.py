"""Bi-encoders (SentenceTransformer): the whole module chain in one graph.

Input modules: Transformer (-> WeightedLayerPooling / CNN -> Pooling) or StaticEmbedding; then Dense, LayerNorm,
Dropout, Normalize heads. A Router/Asym model gets one graph per route (exporters/router.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from tokenizers import Tokenizer
from torch import nn

from exporters.artifacts import TOKENIZER_FILE, write_static_tokenizer, write_tokenizer
from exporters.graphs import PROMPT_LENGTH, BiEncoderGraph, PaddedStaticEmbedding
from exporters.kinds import ExportOptions, KindExporter, SourceModel, register
from exporters.onnx_export import export_onnx
from exporters.parity import check_bi_encoder_parity
from exporters.router import find_router, write_routed
from exporters.source import graph_input_names
from st_runtime.manifest import Variant

ONNX_FILE = "onnx/model.onnx"
SEQUENCE_AXES = {0: "batch_size", 1: "sequence_length"}
EXAMPLE_TEXTS = ["a short text", "a somewhat longer text for tracing the graph"]


def write_bi_encoder(source: SourceModel, staging: Path, options: ExportOptions) -> dict[str, Any]:
    """Write the graph(s) and tokenizer(s); return the manifest fields of a sentence-embedding model."""
    model: SentenceTransformer = source.model
    fields = {
        "embedding_dimension": model.get_embedding_dimension(),
        "similarity_fn_name": model.similarity_fn_name,
        "prompts": dict(model.prompts),
        "default_prompt_name": model.default_prompt_name,
    }
    if find_router(model) is not None:
        return fields | write_routed(source, staging, options, write_pipeline)
    route = write_pipeline(list(model), staging, graph_file=ONNX_FILE, tokenizer_file=TOKENIZER_FILE, options=options)
    route.pop("embedding_dimension")  # the model's own answer (above) wins for a model without routes
    return fields | route


def write_pipeline(
    modules: list[nn.Module], staging: Path, *, graph_file: str, tokenizer_file: str, options: ExportOptions
) -> dict[str, Any]:
    """Export one module chain (input module first) as one graph with its tokenizer.

    Returns:
        The Route fields: inputs, outputs, tokenizer, variants, embedding_dimension.
    """
    first = modules[0]
    if type(first).__name__ == "StaticEmbedding":
        tokenizer = write_static_tokenizer(first.tokenizer, staging / tokenizer_file)
        stages = [PaddedStaticEmbedding(first), *modules[1:]]
        inputs = static_example_inputs(first.tokenizer, EXAMPLE_TEXTS)
        outputs = ("sentence_embedding",)  # an embedding bag has no token embeddings
    else:
        tokenizer = write_tokenizer(first.tokenizer, first.max_seq_length, staging / tokenizer_file)
        example = first.preprocess(EXAMPLE_TEXTS)
        inputs = {name: example[name] for name in graph_input_names([first])}
        stages = modules
        outputs = BiEncoderGraph.output_names
    input_names = list(inputs)
    optional = {}
    if any(type(m).__name__ == "Pooling" and not m.include_prompt for m in modules):
        inputs[PROMPT_LENGTH] = torch.tensor([1], dtype=torch.int64)
        optional[PROMPT_LENGTH] = np.array([0], dtype=np.int64)
    axes = {name: SEQUENCE_AXES for name in input_names}
    axes |= {"token_embeddings": SEQUENCE_AXES, "sentence_embedding": {0: "batch_size"}, "last_hidden_state": SEQUENCE_AXES}
    graph = BiEncoderGraph(stages, list(inputs), outputs).eval()
    with torch.no_grad():
        dimension = graph(*inputs.values())[outputs.index("sentence_embedding")].shape[-1]
    export_onnx(graph, inputs, staging / graph_file, output_names=list(outputs), dynamic_axes=axes,
                optional_inputs=optional, opset=options.opset, external_data=options.external_data)
    return {
        "inputs": tuple(inputs),
        "outputs": tuple(name for name in outputs if name != "last_hidden_state"),
        "tokenizer": tokenizer,
        "variants": (Variant(name="fp32", file=graph_file, precision="fp32"),),
        "embedding_dimension": int(dimension),
    }


def static_example_inputs(tokenizer: Tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    """Right-padded input_ids + attention_mask, as st_runtime feeds a StaticEmbedding graph, to trace it on."""
    ids = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    width = max(len(i) for i in ids)
    return {
        "input_ids": torch.tensor([i + [0] * (width - len(i)) for i in ids], dtype=torch.int64),
        "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], dtype=torch.int64),
    }


BI_ENCODER = register(KindExporter(
    task="sentence-embedding",
    model_type="SentenceTransformer",
    load=SentenceTransformer,
    supported_modules=frozenset({"Transformer", "StaticEmbedding", "Router", "Pooling", "WeightedLayerPooling", "CNN",
                                 "Dense", "Normalize", "Dropout", "LayerNorm"}),
    write=write_bi_encoder,
    check_parity=check_bi_encoder_parity,
))
