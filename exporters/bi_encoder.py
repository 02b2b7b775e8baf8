"""Bi-encoders (SentenceTransformer): the whole module chain in one graph (`BiEncoderGraph`), its writer and its
parity check against `SentenceTransformer.encode`.

Input modules: Transformer (-> WeightedLayerPooling / CNN -> Pooling) or StaticEmbedding; then Dense, LayerNorm,
Dropout, Normalize heads. A Router/Asym model gets one graph per route (exporters/router.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from tokenizers import Tokenizer
from torch import Tensor, nn

import st_runtime
from exporters.artifacts import TOKENIZER_FILE, write_tokenizer
from exporters.errors import UnsupportedModelError
from exporters.graphs import (
    BATCH_AXES,
    EXAMPLE_TEXTS,
    ONNX_FILE,
    PROMPT_LENGTH,
    SEQUENCE_AXES,
    dynamic_axes,
    export_graph,
    padding_changes_output,
)
from exporters.kinds import ExportOptions, KindExporter, SourceModel, WrittenModel, register
from exporters.parity import PROBE_TEXTS, max_abs_and_min_cosine, parity_gate, parity_runs
from exporters.router import find_router, write_routed
from exporters.source import graph_input_names
from st_runtime.manifest import Route


class BiEncoderGraph(nn.Module):
    """Transformer -> Pooling -> Dense* -> Normalize, as one graph.

    Inputs (by name, in `input_names` order): input_ids, attention_mask, [token_type_ids], and
    prompt_length (shape [1]) when a Pooling module excludes the prompt (include_prompt=False).
    Outputs (`output_names`): token_embeddings (batch, seq, hidden), sentence_embedding (batch, dim), and
    last_hidden_state (= token_embeddings) so that sentence-transformers' own ONNX backend loads the file;
    a chain without token embeddings (StaticEmbedding) outputs only sentence_embedding.
    """

    output_names = ("token_embeddings", "sentence_embedding", "last_hidden_state")

    def __init__(self, modules: list[nn.Module], input_names: list[str], output_names: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.stages = nn.ModuleList(modules)
        self.input_names = list(input_names)
        if output_names is not None:
            self.output_names = tuple(output_names)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        features: dict[str, Tensor] = dict(zip(self.input_names, inputs, strict=False))
        prompt_length = features.pop(PROMPT_LENGTH, None)
        for stage in self.stages:
            if prompt_length is not None and not getattr(stage, "include_prompt", True):
                features = pool_without_prompt(stage, features, prompt_length)
            else:
                features = stage(features)
        features["last_hidden_state"] = features.get("token_embeddings")
        return tuple(features[name] for name in self.output_names)


class PaddedStaticEmbedding(nn.Module):
    """sentence-transformers' StaticEmbedding (an EmbeddingBag taking the mean of each text's token vectors) on
    padded input_ids + attention_mask, the form st_runtime's tokenizer produces, instead of one flat id list with
    offsets. An empty text gives the zero vector, as an empty bag does.
    """

    def __init__(self, static_embedding: nn.Module) -> None:
        super().__init__()
        bag = static_embedding.embedding
        if bag.mode != "mean" or bag.padding_idx is not None or bag.max_norm is not None:
            raise UnsupportedModelError(f"StaticEmbedding with {bag} cannot be exported: only mean-mode bags without "
                                        "padding_idx or max_norm (what sentence-transformers builds) are.")
        self.weight = bag.weight

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        mask = features["attention_mask"].unsqueeze(-1).to(self.weight.dtype)
        summed = (nn.functional.embedding(features["input_ids"], self.weight) * mask).sum(dim=1)
        features["sentence_embedding"] = summed / mask.sum(dim=1).clamp(min=1.0)
        return features


def exclude_prompt(attention_mask: Tensor, prompt_length: Tensor) -> Tensor:
    """Zero the pad and prompt positions before each text's first `prompt_length` tokens, as sentence-transformers'
    Pooling does for include_prompt=False (right or left padding); `prompt_length` stays a graph input instead of a
    traced constant."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device).unsqueeze(0)
    first = first_unmasked(attention_mask).unsqueeze(1)
    return attention_mask * (positions >= first + prompt_length.reshape(1, 1)).to(attention_mask.dtype)


def first_unmasked(attention_mask: Tensor) -> Tensor:
    """Index of each row's first unmasked position (0 for right padding); argmax on int32, which onnxruntime runs."""
    return attention_mask.to(torch.int32).argmax(dim=1).to(torch.int64)


def _weights_start_at_first_token() -> bool:
    """True when the installed Pooling numbers weightedmean positions from each text's first unmasked token of the
    mask it is given (sentence-transformers 6), False when from position 0 (5.x). Found by running it on a
    left-padded example, so the graph follows whichever version it is exported with."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    embeddings = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    features = {"token_embeddings": embeddings, "attention_mask": torch.tensor([[0, 1, 1]])}
    pooled = Pooling(2, pooling_mode="weightedmean")(features)["sentence_embedding"][0]
    return bool(torch.isclose(pooled[1], torch.tensor(2 / 3)))  # weights 1, 2 (6.x); 2, 3 would give 3/5 (5.x)


def pool_without_prompt(pooling: nn.Module, features: dict[str, Tensor], prompt_length: Tensor) -> dict[str, Tensor]:
    """Run a Pooling with include_prompt=False on a mask with the prompt zeroed, as sentence-transformers does.

    Every mode but weightedmean reads only the zeroed mask. sentence-transformers 6 numbers weightedmean positions
    from the first unmasked token of the *original* mask (the prompt keeps its positions' weights out, the text
    keeps its own), which the zeroed mask cannot give: that slice of the output is recomputed from the original mask.
    """
    original = features["attention_mask"]
    features["attention_mask"] = exclude_prompt(original, prompt_length)
    features = pooling(features)
    modes = (pooling.pooling_mode,) if isinstance(pooling.pooling_mode, str) else tuple(pooling.pooling_mode)
    if "weightedmean" in modes and "token_weights_sum" not in features and WEIGHTS_START_AT_FIRST_TOKEN:
        tokens = features["token_embeddings"]
        width = tokens.shape[-1]
        start = modes.index("weightedmean") * width
        positions = torch.arange(1, tokens.shape[1] + 1, device=tokens.device, dtype=tokens.dtype).unsqueeze(0)
        weights = (positions - first_unmasked(original).unsqueeze(1).to(tokens.dtype)).unsqueeze(-1)
        weights = weights * features["attention_mask"].unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * weights).sum(dim=1) / torch.clamp(weights.sum(dim=1), min=1e-9)
        embedding = features["sentence_embedding"]
        features["sentence_embedding"] = torch.cat([embedding[:, :start], pooled, embedding[:, start + width:]], dim=-1)
    return features


WEIGHTS_START_AT_FIRST_TOKEN = _weights_start_at_first_token()


def write_bi_encoder(source: SourceModel, staging: Path, options: ExportOptions) -> WrittenModel:
    """Write the graph(s) and tokenizer(s) of a sentence-embedding model and describe them."""
    model: SentenceTransformer = source.model
    routing = write_routed(source, staging, options, write_pipeline) if find_router(model) is not None else None
    graph = (routing.routes[routing.primary] if routing is not None else
             write_pipeline(list(model), staging, graph_file=ONNX_FILE, tokenizer_file=TOKENIZER_FILE, options=options))
    return WrittenModel(
        graph=dataclasses.replace(graph, embedding_dimension=model.get_embedding_dimension()),  # the model's answer
        routing=routing,
        similarity_fn_name=model.similarity_fn_name,
        prompts=dict(model.prompts),
        default_prompt_name=model.default_prompt_name,
    )


def write_pipeline(
    modules: list[nn.Module], staging: Path, *, graph_file: str, tokenizer_file: str, options: ExportOptions
) -> Route:
    """Export one module chain (input module first) as one graph with its tokenizer, and describe it."""
    first = modules[0]
    if type(first).__name__ == "StaticEmbedding":
        tokenizer = write_tokenizer(first.tokenizer, staging / tokenizer_file)
        stages = [PaddedStaticEmbedding(first), *modules[1:]]
        inputs = static_example_inputs(first.tokenizer, EXAMPLE_TEXTS)
        outputs = ("sentence_embedding",)  # an embedding bag has no token embeddings
    else:
        tokenizer = write_tokenizer(first.tokenizer, staging / tokenizer_file, max_seq_length=first.max_seq_length)
        example = first.preprocess(EXAMPLE_TEXTS)
        inputs = {name: example[name] for name in graph_input_names([first])}
        stages = modules
        outputs = BiEncoderGraph.output_names
    input_names = list(inputs)
    optional = {}
    if any(type(m).__name__ == "Pooling" and not m.include_prompt for m in modules):
        inputs[PROMPT_LENGTH] = torch.tensor([1], dtype=torch.int64)
        optional[PROMPT_LENGTH] = np.array([0], dtype=np.int64)
    axes = dynamic_axes(input_names, {"token_embeddings": SEQUENCE_AXES, "sentence_embedding": BATCH_AXES,
                                      "last_hidden_state": SEQUENCE_AXES})
    graph = BiEncoderGraph(stages, list(inputs), outputs).eval()
    with torch.no_grad():
        dimension = graph(*inputs.values())[outputs.index("sentence_embedding")].shape[-1]
    if padding_changes_output(graph, inputs, outputs.index("sentence_embedding")):
        tokenizer = dataclasses.replace(tokenizer, padding_sensitive=True)
    variants = export_graph(graph, inputs, staging, graph_file, options, axes=axes, optional_inputs=optional)
    return Route(inputs=tuple(inputs), outputs=tuple(name for name in outputs if name != "last_hidden_state"),
                 tokenizer=tokenizer, variants=variants, embedding_dimension=int(dimension))


def static_example_inputs(tokenizer: Tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    """Right-padded input_ids + attention_mask, as st_runtime feeds a StaticEmbedding graph, to trace it on."""
    ids = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    width = max(len(i) for i in ids)
    return {
        "input_ids": torch.tensor([i + [0] * (width - len(i)) for i in ids], dtype=torch.int64),
        "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], dtype=torch.int64),
    }


def check_bi_encoder_parity(
    reference: SentenceTransformer, folder: Path, *, atol: float, texts: tuple[str, ...] = PROBE_TEXTS
) -> dict[str, Any]:
    """Encode `texts` with both, without a prompt and with each stored non-empty prompt; for a Router model, through
    every route (each with a task that reaches it: `parity_runs`); raise above `atol`.

    Returns:
        {"max_abs_diff", "min_cosine", "texts", "atol"} for the manifest.

    Raises:
        ParityError: when the largest difference exceeds `atol`.
    """
    runtime = st_runtime.SentenceTransformer(folder)
    worst, min_cos, count = 0.0, 1.0, 0
    for task, prompt_name in parity_runs(runtime.manifest.routing, reference.prompts):
        task_kwargs = {"task": task} if task is not None else {}
        expected = reference.encode(list(texts), prompt_name=prompt_name, batch_size=4, show_progress_bar=False,
                                    **task_kwargs)
        actual = runtime.encode(list(texts), prompt_name=prompt_name, batch_size=4, show_progress_bar=False, task=task)
        diff, cosine = max_abs_and_min_cosine(expected, actual)
        worst, min_cos, count = max(worst, diff), min(min_cos, cosine), count + len(texts)
    return parity_gate({"max_abs_diff": worst, "min_cosine": min_cos, "texts": count, "atol": atol}, "The exported graph")


BI_ENCODER = register(KindExporter(
    task="sentence-embedding",
    model_type="SentenceTransformer",
    load=SentenceTransformer,
    supported_modules=frozenset({"Transformer", "StaticEmbedding", "Router", "Pooling", "WeightedLayerPooling", "CNN",
                                 "Dense", "Normalize", "Dropout", "LayerNorm"}),
    write=write_bi_encoder,
    check_parity=check_bi_encoder_parity,
))
