"""What every kind's graph export shares: the graph file of a model without routes, the dynamic axes, the texts a
graph is traced on, and `export_graph`, which writes one traced module as the fp32 graph of a route.

Each kind's traceable module (the source model's own modules run in order, so the graph computes exactly what
sentence-transformers computes) lives with the rest of that kind's code: bi_encoder.BiEncoderGraph,
cross_encoder.CrossEncoderGraph, sparse_encoder.SpladeGraph / SparseStaticGraph, multi_vector.MultiVectorGraph.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from exporters.kinds import ExportOptions
from exporters.onnx_export import export_onnx
from st_runtime.manifest import Variant

ONNX_FILE = "onnx/model.onnx"  # the graph of a model without routes (a Router model's: onnx/model_<route>.onnx)
SEQUENCE_AXES = {0: "batch_size", 1: "sequence_length"}  # tokenized inputs, per-token outputs
BATCH_AXES = {0: "batch_size"}  # one row per text (or pair)
# Two texts of different lengths, so the traced graph has padding and a real attention mask.
EXAMPLE_TEXTS = ["a short text", "a somewhat longer text for tracing the graph"]
PROMPT_LENGTH = "prompt_length"  # optional input of a bi-encoder whose Pooling excludes the prompt


def padding_changes_output(graph: nn.Module, inputs: dict[str, Tensor], output: int) -> bool:
    """Whether the first example text's `output` differs when it is padded to its batch mate's length (as in a batch)
    from when it runs alone: true for a CNN that reads the padding positions, false wherever the mask hides them."""
    mask = inputs["attention_mask"]
    kept = mask[0].nonzero().flatten()
    alone = {name: t[:1, kept] if t.shape == mask.shape else t for name, t in inputs.items()}
    with torch.no_grad():
        padded, single = graph(*inputs.values())[output][0], graph(*alone.values())[output][0]
    return padded.shape != single.shape or not torch.allclose(padded, single, rtol=1e-4, atol=1e-5)


def dynamic_axes(inputs: Iterable[str], outputs: dict[str, dict[int, str]]) -> dict[str, dict[int, str]]:
    """The dynamic axes of a graph: (batch, sequence) for each tokenized input, then the outputs' own."""
    return {name: SEQUENCE_AXES for name in inputs} | outputs


def export_graph(graph: nn.Module, inputs: dict[str, Tensor], staging: Path, graph_file: str, options: ExportOptions, *,
                 axes: dict[str, dict[int, str]], optional_inputs: dict[str, np.ndarray] | None = None
                 ) -> tuple[Variant, ...]:
    """Trace `graph` on `inputs` into `staging / graph_file` with its `output_names`; return the route's variants
    (the fp32 graph just written)."""
    export_onnx(graph, inputs, staging / graph_file, output_names=list(graph.output_names), dynamic_axes=axes,
                optional_inputs=optional_inputs, opset=options.opset, external_data=options.external_data)
    return (Variant(name="fp32", file=graph_file, precision="fp32"),)
