"""Sparse encoders (SparseEncoder): a SPLADE chain (MLM Transformer -> SpladePooling) or a SparseStaticEmbedding (a
static weight per vocabulary token, e.g. IDF; no transformer) in one graph, whose output is one vocabulary-size weight
vector per text; st_runtime turns it into a sparse matrix. A Router model gets one graph per route
(exporters/router.py): inference-free SPLADE is a SparseStaticEmbedding query route and a SPLADE document route."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sentence_transformers import SparseEncoder
from torch import Tensor, nn
from transformers.tokenization_utils_base import LARGE_INTEGER

import st_runtime
from exporters.artifacts import TOKENIZER_FILE, write_tokenizer
from exporters.errors import UnsupportedModelError
from exporters.graphs import BATCH_AXES, EXAMPLE_TEXTS, ONNX_FILE, dynamic_axes, export_graph
from exporters.kinds import ExportOptions, KindExporter, SourceModel, WrittenModel, register
from exporters.parity import PROBE_TEXTS, max_abs_and_min_cosine, parity_gate, parity_runs
from exporters.router import find_router, write_routed
from exporters.source import graph_input_names
from st_runtime.manifest import Route, TokenizerSpec
from st_runtime.task_configs import SparseEncoderConfig, SparseGraphConfig, SpladePooling

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


class SparseStaticGraph(nn.Module):
    """sentence-transformers' SparseStaticEmbedding (the query encoder of inference-free SPLADE) as one graph: the
    static weight of every vocabulary token present in the text; no transformer.

    Inputs: input_ids, attention_mask (batch, seq), tokenized without special tokens and padded, as the module's
    preprocess does. Output: sentence_embedding (batch, V) = presence * weight, where presence[token] is what
    sentence-transformers' `presence.scatter_(1, input_ids, attention_mask)` leaves on CPU: the attention mask at the
    token's *last* position in the row. That is 1 for a text token (repeats count once) and 0 for padding; a token that
    is both (the pad token spelled out in a text of a padded batch) gets whichever comes last. ONNX leaves duplicate
    scatter indices undefined, so only each token's last position is scattered; the others go to a dropped column 0:

        input_ids (b, s) --any(id[i] == id[j], j > i)--> repeated (b, s) --where(repeated, 0, id + 1)--> index (b, s)
        zeros (b, 1 + V) --ScatterElements(index, attention_mask)--> [:, 1:] --> presence (b, V) --* weight--> (b, V)

    A token id >= V fails the run, as it fails sentence-transformers' scatter. Frozen or not, the weight is a
    constant of the graph.
    """

    input_names = ("input_ids", "attention_mask")
    output_names = ("sentence_embedding",)

    def __init__(self, static_embedding: nn.Module) -> None:
        super().__init__()
        self.weight = static_embedding.weight

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        later = positions.unsqueeze(0) > positions.unsqueeze(1)  # later[i, j]: position j comes after position i
        repeated = ((input_ids.unsqueeze(2) == input_ids.unsqueeze(1)) & later).any(dim=2)
        index = torch.where(repeated, torch.zeros_like(input_ids), input_ids + 1)
        zeros = torch.zeros(input_ids.shape[0], self.weight.shape[0] + 1, dtype=self.weight.dtype, device=input_ids.device)
        presence = zeros.scatter(1, index, attention_mask.to(self.weight.dtype))[:, 1:]
        return presence * self.weight


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


def write_sparse_encoder(source: SourceModel, staging: Path, options: ExportOptions) -> WrittenModel:
    """Write the graph(s) and tokenizer(s) of a sparse-embedding model and describe them."""
    model: SparseEncoder = source.model
    if find_router(model) is not None:
        routing = write_routed(source, staging, options, write_pipeline)
        primary = routing.routes[routing.primary]
        # sentence-transformers' answer (the first route that knows its size), else the primary route's
        dimension = model.get_embedding_dimension() or primary.embedding_dimension
        config = SparseEncoderConfig(vocab_size=dimension, splade=None, max_active_dims=model.max_active_dims)
        graph = dataclasses.replace(primary, embedding_dimension=dimension, task_config=config)
    else:
        routing = None
        graph = write_pipeline(list(model), staging, graph_file=ONNX_FILE, tokenizer_file=TOKENIZER_FILE, options=options)
        config = SparseEncoderConfig(vocab_size=graph.task_config.vocab_size, splade=graph.task_config.splade,
                                     max_active_dims=model.max_active_dims)
        graph = dataclasses.replace(graph, task_config=config)
    return WrittenModel(graph=graph, routing=routing, similarity_fn_name=model.similarity_fn_name,
                        prompts=dict(model.prompts), default_prompt_name=model.default_prompt_name)


def write_pipeline(
    modules: list[nn.Module], staging: Path, *, graph_file: str, tokenizer_file: str, options: ExportOptions
) -> Route:
    """Export one sparse module chain (a whole model, or one route of a Router) as one graph with its tokenizer, and
    describe it (its task_config: a SparseGraphConfig).

    Raises:
        UnsupportedModelError: the chain is neither an MLM Transformer followed by SpladePooling nor a lone
            SparseStaticEmbedding.
    """
    names = [type(m).__name__ for m in modules]
    if names == ["SparseStaticEmbedding"]:
        return _write_sparse_static(modules[0], staging, graph_file=graph_file, tokenizer_file=tokenizer_file,
                                    options=options)
    if len(modules) == 2 and names[0] in TRANSFORMER_MODULES and names[1] == "SpladePooling":
        return _write_splade(modules[0], modules[1], staging, graph_file=graph_file, tokenizer_file=tokenizer_file,
                             options=options)
    raise UnsupportedModelError(
        f"Only SPLADE chains (an MLM Transformer followed by SpladePooling) and a lone SparseStaticEmbedding are exported "
        f"as sparse encoders, whole or as the routes of a Router; this chain's modules are {names}. CSR models "
        "(Pooling + SparseAutoEncoder) are not supported."
    )


def _write_splade(transformer: nn.Module, pooling: nn.Module, staging: Path, *, graph_file: str, tokenizer_file: str,
                  options: ExportOptions) -> Route:
    tokenizer = write_tokenizer(transformer.tokenizer, staging / tokenizer_file, max_seq_length=transformer.max_seq_length)
    input_names = graph_input_names([transformer])
    example = transformer.preprocess(EXAMPLE_TEXTS)
    inputs = {name: example[name] for name in input_names}
    graph = SpladeGraph(transformer, pooling, input_names).eval()
    with torch.no_grad():
        vocab_size = int(graph(*inputs.values()).shape[-1])
    axes = dynamic_axes(input_names, {"sentence_embedding": BATCH_AXES})
    with untransposed_output_embeddings(transformer):
        variants = export_graph(graph, inputs, staging, graph_file, options, axes=axes)
    splade = SpladePooling(pooling_strategy=graph.pooling_strategy, activation_function=graph.activation_function,
                           chunk_size=graph.chunk_size)
    return Route(inputs=tuple(inputs), outputs=SpladeGraph.output_names, tokenizer=tokenizer, variants=variants,
                 embedding_dimension=vocab_size, task_config=SparseGraphConfig(vocab_size=vocab_size, splade=splade))


def _write_sparse_static(static_embedding: nn.Module, staging: Path, *, graph_file: str, tokenizer_file: str,
                         options: ExportOptions) -> Route:
    # Padding-sensitive by construction: a text that spells out the pad token scores it only where its batch does not
    # pad it (SparseStaticGraph), so the runtime must form sentence-transformers' very batches.
    tokenizer = dataclasses.replace(write_sparse_static_tokenizer(static_embedding.tokenizer, staging / tokenizer_file),
                                    padding_sensitive=True)
    example = static_embedding.preprocess(EXAMPLE_TEXTS)  # padded, without special tokens
    inputs = {name: example[name] for name in SparseStaticGraph.input_names}
    graph = SparseStaticGraph(static_embedding).eval()
    vocab_size = int(graph.weight.shape[0])
    variants = export_graph(graph, inputs, staging, graph_file, options,
                            axes=dynamic_axes(inputs, {"sentence_embedding": BATCH_AXES}))
    return Route(inputs=tuple(inputs), outputs=SparseStaticGraph.output_names, tokenizer=tokenizer, variants=variants,
                 embedding_dimension=vocab_size, task_config=SparseGraphConfig(vocab_size=vocab_size, splade=None))


def write_sparse_static_tokenizer(hf_tokenizer: Any, path: Path) -> TokenizerSpec:
    """Write a SparseStaticEmbedding's transformers fast tokenizer as the module applies it (`tokenizer(texts,
    padding=True, truncation=True, add_special_tokens=False)`): no special tokens; truncated at the tokenizer's
    model_max_length (never, where that is unset); padded as the tokenizer pads.

    Raises:
        UnsupportedModelError: a slow tokenizer (no tokenizer.json), or one without a pad token (sentence-transformers
            itself cannot pad a batch with it).
    """
    if not getattr(hf_tokenizer, "is_fast", False) or hf_tokenizer.pad_token_id is None:
        raise UnsupportedModelError(
            f"The SparseStaticEmbedding's tokenizer ({type(hf_tokenizer).__name__}) is not a fast tokenizer with a pad "
            "token, so no tokenizer.json can reproduce it. Give the module a fast tokenizer with a pad token first."
        )
    limit = hf_tokenizer.model_max_length  # "no limit" above LARGE_INTEGER, as transformers decides
    return write_tokenizer(hf_tokenizer, path, max_seq_length=int(limit) if limit <= LARGE_INTEGER else None,
                           special_tokens=False)


def check_sparse_encoder_parity(
    reference: SparseEncoder, folder: Path, *, atol: float, texts: tuple[str, ...] = PROBE_TEXTS
) -> dict[str, Any]:
    """Encode `texts` (and, for each stored non-empty prompt, `texts` with that prompt) with both, densified and with
    every dimension kept (max_active_dims = vocabulary size), so the graph itself is compared; for a Router model,
    through every route (each with a task that reaches it: `parity_runs`); raise above `atol`.

    Returns:
        {"max_abs_diff", "min_cosine", "texts", "atol"} for the manifest.

    Raises:
        ParityError: when the largest difference exceeds `atol`.
    """
    runtime = st_runtime.SparseEncoder(folder)
    routing = runtime.manifest.routing
    worst, min_cos, count = 0.0, 1.0, 0
    for task, prompt_name in parity_runs(routing, reference.prompts):
        task_kwargs = {"task": task} if task is not None else {}
        keep_all = runtime.routes.graph(task).route.embedding_dimension or runtime.get_embedding_dimension()
        expected = reference.encode(list(texts), prompt_name=prompt_name, batch_size=4, show_progress_bar=False,
                                    convert_to_sparse_tensor=False, max_active_dims=keep_all, **task_kwargs)
        actual = runtime.encode(list(texts), prompt_name=prompt_name, batch_size=4, show_progress_bar=False,
                                convert_to_sparse_tensor=False, max_active_dims=keep_all, task=task)
        diff, cosine = max_abs_and_min_cosine(expected.cpu().numpy(), np.asarray(actual))
        worst, min_cos, count = max(worst, diff), min(min_cos, cosine), count + len(texts)
    return parity_gate({"max_abs_diff": worst, "min_cosine": min_cos, "texts": count, "atol": atol},
                       "The exported sparse encoder")


SPARSE_ENCODER = register(KindExporter(
    task="sparse-embedding",
    model_type="SparseEncoder",
    load=SparseEncoder,
    supported_modules=frozenset({*TRANSFORMER_MODULES, "SpladePooling", "SparseStaticEmbedding", "Router"}),
    write=write_sparse_encoder,
    check_parity=check_sparse_encoder_parity,
))
