"""SPLADE sparse encoders (SparseEncoder): MLM Transformer -> SpladePooling in one graph, whose output is one
vocabulary-size weight vector per text; st_runtime turns it into a sparse matrix."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sentence_transformers import SparseEncoder
from torch import Tensor, nn

import st_runtime
from exporters.artifacts import TOKENIZER_FILE, write_tokenizer
from exporters.errors import ParityError, UnsupportedModelError
from exporters.kinds import ExportOptions, KindExporter, SourceModel, register
from exporters.onnx_export import export_onnx
from exporters.parity import PROBE_TEXTS, max_abs_and_min_cosine
from exporters.source import graph_input_names
from st_runtime.manifest import Variant

ONNX_FILE = "onnx/model.onnx"
SEQUENCE_AXES = {0: "batch_size", 1: "sequence_length"}
TRANSFORMER_MODULES = ("Transformer", "MLMTransformer")


class SpladeGraph(nn.Module):
    """MLM transformer -> SpladePooling, as one graph.

    Inputs (by name, in `input_names` order): input_ids, attention_mask, [token_type_ids].
    Output: sentence_embedding (batch, vocab_size), what sentence-transformers' SparseEncoder.encode returns
    (densified) before max_active_dims. The MLM logits are deliberately not an output: as one, they could not be
    overwritten in place by the masking, which costs onnxruntime about 10% (so sentence-transformers' own
    backend="onnx", which wants "logits", does not load this graph).

    SpladePooling computes pool_t(act(relu(logits * mask))) with act = log1p (relu) or log1p∘log1p (log1p_relu):

        logits (b, s, V) --*mask--+-- max pooling: ReduceMax(s) -> Relu -> log1p [-> log1p] --> (b, V)
                                  +-- sum pooling: Relu -> log1p [-> log1p] -> ReduceSum(s) --> (b, V)

    For max pooling the activation is applied after the reduction: relu and log1p are non-decreasing, so
    max_t f(x_t) == f(max_t x_t) exactly, and no second (b, s, V) tensor is made. sentence-transformers' chunk_size
    only bounds torch's memory for that tensor; the max is the same for any chunking, and for sum pooling the graph
    sums per chunk, then across chunks, as sentence-transformers does.
    """

    output_names = ("sentence_embedding",)

    def __init__(self, transformer: nn.Module, pooling: nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.transformer = transformer
        self.pooling_strategy: str = pooling.pooling_strategy
        self.activation_function: str = pooling.activation_function
        self.chunk_size: int | None = pooling.chunk_size if pooling.chunk_size and pooling.chunk_size > 0 else None
        self.input_names = list(input_names)

    def forward(self, *inputs: Tensor) -> Tensor:
        features: dict[str, Tensor] = dict(zip(self.input_names, inputs, strict=True))
        logits = self.transformer(features)["token_embeddings"]
        masked = logits * features["attention_mask"].unsqueeze(-1).to(logits.dtype)
        if self.pooling_strategy == "max":
            return self._activate(masked.max(dim=1).values)
        activated = self._activate(masked)
        if self.chunk_size is None:
            return activated.sum(dim=1)
        return chunked_sum(activated, self.chunk_size)

    def _activate(self, x: Tensor) -> Tensor:
        x = torch.log1p(torch.relu(x))
        return torch.log1p(x) if self.activation_function == "log1p_relu" else x


def chunked_sum(x: Tensor, chunk_size: int) -> Tensor:
    """Sum (b, s, V) over s in chunks of `chunk_size` tokens, then over the chunks, with s dynamic: the sequence is
    zero-padded to a multiple of chunk_size (zeros add nothing)."""
    seq_len = x.shape[1]
    padded_len = (seq_len + chunk_size - 1) // chunk_size * chunk_size
    padding = torch.zeros_like(x[:, :1, :]).expand(-1, padded_len - seq_len, -1)
    padded = torch.cat([x, padding], dim=1)
    chunks = padded.reshape(x.shape[0], -1, chunk_size, x.shape[2])
    return chunks.sum(dim=2).sum(dim=1)


@contextmanager
def untransposed_output_embeddings(transformer: nn.Module) -> Iterator[None]:
    """While tracing, run the MLM decoder (hidden -> vocabulary) as a 2-D linear, which ONNX keeps as
    Gemm(transB=1) on the weight itself. The default 3-D path becomes MatMul with a constant-folded transposed copy,
    which duplicates the word embeddings that most MLMs tie to the decoder (twice the file size, same outputs)."""
    auto_model = getattr(transformer, "auto_model", None)
    get_output_embeddings = getattr(auto_model, "get_output_embeddings", None)
    linear = get_output_embeddings() if callable(get_output_embeddings) else None
    if type(linear) is not nn.Linear:
        yield
        return

    def forward(x: Tensor) -> Tensor:
        flat = F.linear(x.reshape(-1, x.shape[-1]), linear.weight, linear.bias)
        return flat.reshape(*x.shape[:-1], linear.out_features)

    previous = vars(linear).get("forward")
    linear.forward = forward
    try:
        yield
    finally:
        if previous is None:
            del linear.forward
        else:
            linear.forward = previous


def splade_modules(model: SparseEncoder) -> tuple[nn.Module, nn.Module]:
    """The (transformer, SpladePooling) pair of a SPLADE model.

    Raises:
        UnsupportedModelError: the model is not exactly an MLM Transformer followed by SpladePooling.
    """
    modules = list(model)
    names = [type(m).__name__ for m in modules]
    if len(modules) != 2 or names[0] not in TRANSFORMER_MODULES or names[1] != "SpladePooling":
        raise UnsupportedModelError(
            f"Only SPLADE sparse encoders (an MLM Transformer followed by SpladePooling) are exported; this model's "
            f"modules are {names}. CSR models (Pooling + SparseAutoEncoder) and Router models are not supported here."
        )
    return modules[0], modules[1]


def write_sparse_encoder(source: SourceModel, staging: Path, options: ExportOptions) -> dict[str, Any]:
    """Write tokenizer.json and onnx/model.onnx; return the manifest fields of a sparse-embedding model."""
    model: SparseEncoder = source.model
    transformer, pooling = splade_modules(model)
    tokenizer = write_tokenizer(transformer.tokenizer, model.max_seq_length, staging / TOKENIZER_FILE)
    input_names = graph_input_names(model)
    example = model.preprocess(["a short text", "a somewhat longer text for tracing the graph"])
    inputs = {name: example[name] for name in input_names}
    graph = SpladeGraph(transformer, pooling, input_names).eval()
    with torch.no_grad():
        vocab_size = int(graph(*inputs.values()).shape[-1])
    axes = {name: SEQUENCE_AXES for name in input_names} | {"sentence_embedding": {0: "batch_size"}}
    with untransposed_output_embeddings(transformer):
        export_onnx(graph, inputs, staging / ONNX_FILE, output_names=list(SpladeGraph.output_names), dynamic_axes=axes,
                    opset=options.opset, external_data=options.external_data)
    return {
        "inputs": tuple(inputs),
        "outputs": SpladeGraph.output_names,
        "tokenizer": tokenizer,
        "variants": (Variant(name="fp32", file=ONNX_FILE, precision="fp32"),),
        "embedding_dimension": vocab_size,
        "similarity_fn_name": model.similarity_fn_name,
        "prompts": dict(model.prompts),
        "default_prompt_name": model.default_prompt_name,
        "task_config": {
            "vocab_size": vocab_size,
            "pooling_strategy": graph.pooling_strategy,
            "activation_function": graph.activation_function,
            "chunk_size": graph.chunk_size,
            "max_active_dims": model.max_active_dims,
        },
    }


def check_sparse_encoder_parity(
    reference: SparseEncoder, folder: Path, *, atol: float, texts: tuple[str, ...] = PROBE_TEXTS
) -> dict[str, Any]:
    """Encode `texts` (and, for each stored non-empty prompt, `texts` with that prompt) with both, densified and with
    every dimension kept (max_active_dims = vocabulary size), so the graph itself is compared; raise above `atol`.

    Returns:
        {"max_abs_diff", "min_cosine", "texts", "atol"} for the manifest.

    Raises:
        ParityError: when the largest difference exceeds `atol`.
    """
    runtime = st_runtime.SparseEncoder(folder)
    keep_all = runtime.get_embedding_dimension()
    worst, min_cos, count = 0.0, 1.0, 0
    prompt_names = [None, *sorted(name for name, text in reference.prompts.items() if text)]
    for prompt_name in prompt_names:
        expected = reference.encode(list(texts), prompt_name=prompt_name, batch_size=4, show_progress_bar=False,
                                    convert_to_sparse_tensor=False, max_active_dims=keep_all)
        actual = runtime.encode(list(texts), prompt_name=prompt_name, batch_size=4, show_progress_bar=False,
                                convert_to_sparse_tensor=False, max_active_dims=keep_all)
        diff, cosine = max_abs_and_min_cosine(expected.cpu().numpy(), np.asarray(actual))
        worst, min_cos, count = max(worst, diff), min(min_cos, cosine), count + len(texts)
    report = {"max_abs_diff": worst, "min_cosine": min_cos, "texts": count, "atol": atol}
    if not worst <= atol:
        raise ParityError(
            f"The exported sparse encoder differs from sentence-transformers by {worst:.3g} (tolerance {atol:g}, min "
            f"cosine {min_cos:.6f}); nothing was written. This is an exporter bug for this architecture: please report it."
        )
    return report


SPARSE_ENCODER = register(KindExporter(
    task="sparse-embedding",
    model_type="SparseEncoder",
    load=SparseEncoder,
    supported_modules=frozenset({*TRANSFORMER_MODULES, "SpladePooling"}),
    write=write_sparse_encoder,
    check_parity=check_sparse_encoder_parity,
))
