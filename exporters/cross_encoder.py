"""Cross-encoders (CrossEncoder, rerankers): a sequence-classification Transformer and the model's activation
function in one graph, or an LLM reranker (causal LM -> LogitScore, `exporters.llm_reranker`), with a parity gate
against `CrossEncoder.predict`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sentence_transformers import CrossEncoder
from sentence_transformers.util import fullname
from torch import Tensor, nn

import st_runtime
from exporters.artifacts import TOKENIZER_FILE, write_tokenizer
from exporters.errors import ParityError
from exporters.graphs import BATCH_AXES, ONNX_FILE, dynamic_axes, export_graph
from exporters.kinds import ExportOptions, KindExporter, SourceModel, WrittenModel, register
from exporters.llm_reranker import LOGIT_SCORE, is_llm_reranker, llm_config, write_llm_reranker
from exporters.parity import parity_gate, stored_prompt_names
from exporters.source import graph_input_names
from st_runtime.manifest import Route
from st_runtime.task_configs import CrossEncoderConfig

# Short names of the activations st_runtime also knows in numpy; others are recorded by their dotted path only.
KNOWN_ACTIVATIONS = {"Identity": "identity", "Sigmoid": "sigmoid", "Softmax": "softmax", "Tanh": "tanh", "ReLU": "relu"}

_LONG = " ".join(["Long inputs must be truncated exactly where sentence-transformers truncates them."] * 60)  # > 512 tokens
# Query/document pairs: short, empty, unicode, and long on either side or both, so that longest_first truncation
# over the pair and padding inside a batch are both exercised.
PROBE_PAIRS: tuple[tuple[str, str], ...] = (
    ("How many people live in Berlin?", "Berlin had a population of 3,520,031 registered inhabitants in 2019."),
    ("How many people live in Berlin?", "Berlin is well known for its museums."),
    ("What is the capital of France?", "Paris is the capital and most populous city of France."),
    ("", "An empty query still gets a score."),
    ("an empty document", ""),
    ("Zürich, Москва, 東京 and القاهرة are cities; emoji 🙂 and accents éàü too.", "Zürich liegt in der Schweiz."),
    ("Which cities are mentioned?", _LONG),
    (_LONG, "a short document after a long query"),
    (_LONG, " ".join(reversed(_LONG.split()))),
    ("Numbers 3.14159, 2026-11-23 and e-mail someone@example.com", "  leading and trailing spaces  "),
    ("ok", "ok"),
    ("Who wrote 'To Kill a Mockingbird'?", "Harper Lee published 'To Kill a Mockingbird' in 1960."),
)


class CrossEncoderGraph(nn.Module):
    """Transformer (sequence classification) -> activation, as one graph.

    Inputs (by name, in `input_names` order): input_ids, attention_mask and, when the model uses them,
    token_type_ids; all (batch, sequence).
    Outputs: scores (batch, num_labels) after the model's activation function (what `CrossEncoder.predict`
    returns before squeezing one label away), and logits (batch, num_labels), the raw classifier output that
    sentence-transformers' own ONNX backend reads.
    """

    output_names = ("scores", "logits")

    def __init__(self, modules: list[nn.Module], input_names: list[str], activation: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(modules)
        self.input_names = list(input_names)
        self.activation = activation

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        features: dict[str, Tensor] = dict(zip(self.input_names, inputs, strict=True))
        for stage in self.stages:
            features = stage(features)
        logits = features["scores"]
        return self.activation(logits), logits


def activation_names(activation: Callable[..., Any]) -> tuple[str, str | None]:
    """(dotted path as sentence-transformers saves it, short numpy-runtime name or None) of an activation."""
    short = KNOWN_ACTIVATIONS.get(type(activation).__name__) if isinstance(activation, nn.Module) else None
    if short == "softmax" and getattr(activation, "dim", None) not in (None, 1, -1):
        short = None  # a softmax over another axis has no runtime name; the graph still applies it
    return fullname(activation), short


def write_cross_encoder(source: SourceModel, staging: Path, options: ExportOptions) -> WrittenModel:
    """Write tokenizer.json and onnx/model.onnx of a text-ranking model and describe them."""
    model: CrossEncoder = source.model
    activation_path, activation = activation_names(model.activation_fn)
    if is_llm_reranker(model):
        route, facts = write_llm_reranker(model, staging, options)
        written = dataclasses.replace(route, task_config=llm_config(activation, activation_path, facts))
        return WrittenModel(graph=written, prompts=dict(model.prompts), default_prompt_name=model.default_prompt_name)
    tokenizer = write_tokenizer(model[0].tokenizer, staging / TOKENIZER_FILE, max_seq_length=model.max_seq_length)
    input_names = graph_input_names(model)
    # Two pairs of different lengths, so the traced graph has padding and a real attention mask.
    example = model.preprocess([("a short query", "a somewhat longer document for tracing the graph"), ("q", "d")])
    inputs = {name: example[name] for name in input_names}
    axes = dynamic_axes(input_names, {name: BATCH_AXES for name in CrossEncoderGraph.output_names})
    graph = CrossEncoderGraph(list(model), input_names, model.activation_fn).eval()
    variants = export_graph(graph, inputs, staging, ONNX_FILE, options, axes=axes)
    config = CrossEncoderConfig(num_labels=int(model.num_labels), activation=activation, activation_fn=activation_path)
    written = Route(inputs=tuple(inputs), outputs=CrossEncoderGraph.output_names, tokenizer=tokenizer, variants=variants,
                    task_config=config)
    return WrittenModel(graph=written, prompts=dict(model.prompts), default_prompt_name=model.default_prompt_name)


def check_cross_encoder_parity(
    reference: CrossEncoder, folder: Path, *, atol: float, pairs: tuple[tuple[str, str], ...] = PROBE_PAIRS
) -> dict[str, Any]:
    """Score `pairs` with sentence-transformers' `predict` and with st_runtime, with the model's activation
    (the `scores` output) and without one (the `logits` output), and for each stored prompt; raise above `atol`.

    Returns:
        {"max_abs_diff", "texts" (pairs compared), "atol"} for the manifest.

    Raises:
        ParityError: when the largest difference exceeds `atol`.
    """
    runtime = st_runtime.CrossEncoder(folder)
    diffs, count = [0.0], 0
    for prompt_name in stored_prompt_names(reference.prompts):
        for torch_activation, runtime_activation in ((None, None), (nn.Identity(), "identity")):
            expected = reference.predict(list(pairs), prompt_name=prompt_name, batch_size=4, show_progress_bar=False,
                                         activation_fn=torch_activation)
            actual = runtime.predict(list(pairs), prompt_name=prompt_name, batch_size=4, show_progress_bar=False,
                                     activation_fn=runtime_activation)
            if expected.shape != actual.shape:
                raise ParityError(f"Output shapes differ: sentence-transformers {expected.shape}, exported {actual.shape}.")
            diffs.append(float(np.abs(expected.astype(np.float64) - actual).max()) if expected.size else 0.0)
            count += len(pairs)
    worst = float(np.max(diffs))  # NaN propagates, and fails the gate below
    return parity_gate({"max_abs_diff": worst, "texts": count, "atol": atol},
                       "The exported graph's scores (against CrossEncoder.predict)")


CROSS_ENCODER = register(KindExporter(
    task="text-ranking",
    model_type="CrossEncoder",
    load=CrossEncoder,
    supported_modules=frozenset({"Transformer", LOGIT_SCORE}),
    write=write_cross_encoder,
    check_parity=check_cross_encoder_parity,
))
