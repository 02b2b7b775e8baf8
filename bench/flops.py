"""Arithmetic per token of an exported model, counted on its fp32 ONNX graph, for the achieved-GFLOP/s column.

FLOPs per token = 2 x (weight parameters of every MatMul/Gemm whose weight is a constant: the dense layers;
embedding tables are Gathers and do not count) + the attention term.

Attention term: each MatMul whose two inputs are both computed (Q.K^T and probabilities.V) costs, per token,
`hidden x L` multiply-adds, L being the length of the sequence the token attends over; so per token it adds
2 x hidden x L FLOPs per such MatMul, with L the token-weighted mean sequence length of the corpus
(sum(l^2) / sum(l)), padding not counted. `hidden` is the most common input width of the weight MatMuls.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

PASS_THROUGH = ("Transpose", "Cast", "Identity", "Reshape")  # ops between an initializer and its MatMul (tied weights)


@dataclass(frozen=True)
class GraphFlops:
    """What the fp32 graph computes per token, apart from the length-dependent attention part."""

    weight_flops_per_token: int  # 2 x MatMul/Gemm weight parameters
    attention_matmuls: int  # MatMuls with two computed inputs (2 per attention layer)
    hidden: int  # width the attention term uses

    def per_token(self, token_weighted_length: float) -> float:
        """FLOPs per token for sequences of this token-weighted mean length."""
        return self.weight_flops_per_token + 2.0 * self.attention_matmuls * self.hidden * token_weighted_length

    def describe(self, token_weighted_length: float) -> dict[str, Any]:
        return {**asdict(self), "token_weighted_length": round(float(token_weighted_length), 2),
                "attention_flops_per_token": round(self.per_token(token_weighted_length) - self.weight_flops_per_token),
                "flops_per_token": round(self.per_token(token_weighted_length)),
                "formula": "2 x MatMul/Gemm weight parameters + 2 x attention MatMuls x hidden x sum(l^2)/sum(l)"}


def count_graph_flops(path: Path) -> GraphFlops:
    """Count the weight and attention MatMuls of an ONNX file (external data is not loaded: only shapes are read).

    Raises:
        ImportError: the onnx package is missing.
        ValueError: the graph has no MatMul/Gemm with a constant weight.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    shapes: dict[str, tuple[int, ...]] = {i.name: tuple(i.dims) for i in model.graph.initializer}
    producers = {}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = tuple(attr.t.dims)
        for out in node.output:
            producers[out] = node

    def constant_shape(name: str) -> tuple[int, ...] | None:
        seen = 0
        while name not in shapes and name in producers and producers[name].op_type in PASS_THROUGH and seen < 4:
            name, seen = producers[name].input[0], seen + 1
        return shapes.get(name)

    params, attention, widths = 0, 0, Counter()
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        weights = [s for s in (constant_shape(n) for n in node.input[:2]) if s is not None and len(s) >= 2]
        if weights:
            params += int(np.prod(weights[0]))
            widths[min(weights[0][-2:])] += 1
        elif node.op_type == "MatMul":
            attention += 1
    if not params:
        raise ValueError(f"{path} has no MatMul/Gemm with a constant weight; cannot count FLOPs.")
    return GraphFlops(weight_flops_per_token=2 * params, attention_matmuls=attention, hidden=widths.most_common(1)[0][0])


def token_weighted_length(lengths: np.ndarray) -> float:
    """sum(l^2) / sum(l): the mean, over tokens, of the length of the sequence each token is in."""
    lengths = np.asarray(lengths, np.float64)
    return float((lengths**2).sum() / lengths.sum()) if lengths.sum() else 0.0
