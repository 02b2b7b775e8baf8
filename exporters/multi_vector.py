"""Multi-vector encoders (MultiVectorEncoder, ColBERT / late interaction; sentence-transformers >= 6): one graph for
queries and documents, whose output is one vector per token; st_runtime keeps the rows sentence-transformers scores.

Module chain: Transformer (query_length / document_length / query_expansion) -> Dense* (token-level) ->
MultiVectorMask -> Normalize (token-level). Queries and documents run the very same weights; they differ only before
and after the network: how texts are tokenized (the truncation length of the task; query expansion pads queries to a
fixed width with the mask token) and which rows are kept (the expansion positions count for queries, skiplist tokens
are dropped from documents). Both are functions of the token ids and the task alone, so they run in st_runtime with
numpy from the facts recorded in the manifest's task_config, and one graph serves both tasks: one session, one file
to quantize (quantizers refuse multi-graph Router folders).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import st_runtime
from exporters.artifacts import TOKENIZER_FILE, write_tokenizer
from exporters.errors import ParityError, UnsupportedModelError
from exporters.graphs import EXAMPLE_TEXTS, ONNX_FILE, SEQUENCE_AXES, dynamic_axes, export_graph
from exporters.kinds import ExportOptions, KindExporter, SourceModel, WrittenModel, register, register_unavailable
from exporters.parity import PROBE_TEXTS, max_abs_and_min_cosine, parity_gate
from exporters.source import graph_input_names
from st_runtime.manifest import Route
from st_runtime.task_configs import MultiVectorConfig, QueryExpansion

try:
    from sentence_transformers import MultiVectorEncoder
except ImportError:  # sentence-transformers 5.x has no multi-vector models
    MultiVectorEncoder = None

TOKEN_MODULES = ("Dense", "Normalize")
# What a query or document probe is compared on besides PROBE_TEXTS: short queries, so expansion is exercised.
QUERY_PROBES = ("capital of France?", "", "Zürich 🙂", "what is late interaction retrieval and how does it work")


class MultiVectorGraph(nn.Module):
    """Transformer -> token-level Dense* -> Normalize, as one graph (MultiVectorMask is left to the runtime).

    Inputs (by name, in `input_names` order): input_ids, attention_mask, [token_type_ids], as the runtime tokenizes
    them for the task (query expansion positions already hold the expansion token, with attention 0 or 1).
    Output: token_embeddings (batch, seq, dim), every position, padding included; the runtime keeps each text's
    scoring rows:

        input_ids, attention_mask --Transformer--> (b, s, hidden) --Dense*--> --Normalize--> token_embeddings (b, s, dim)
    """

    output_names = ("token_embeddings",)

    def __init__(self, modules: list[nn.Module], input_names: list[str]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(modules)
        self.input_names = list(input_names)

    def forward(self, *inputs: Tensor) -> Tensor:
        features: dict[str, Tensor] = dict(zip(self.input_names, inputs, strict=True))
        for stage in self.stages:
            features = stage(features)
        return features["token_embeddings"]


def write_multi_vector(source: SourceModel, staging: Path, options: ExportOptions) -> WrittenModel:
    """Write the graph and tokenizer of a multi-vector-embedding model and describe them.

    Raises:
        UnsupportedModelError: the chain is not Transformer -> Dense/Normalize/MultiVectorMask, or a module reads or
            writes something other than token_embeddings.
    """
    model = source.model
    modules = list(model)
    transformer, rest = modules[0], modules[1:]
    names = [type(m).__name__ for m in modules]
    masks = [m for m in rest if type(m).__name__ == "MultiVectorMask"]
    if names[0] != "Transformer" or len(masks) > 1 or any(n not in (*TOKEN_MODULES, "MultiVectorMask") for n in names[1:]):
        raise UnsupportedModelError(
            f"Only Transformer -> token-level Dense/Normalize -> MultiVectorMask chains are exported as multi-vector "
            f"encoders; this chain's modules are {names}. Token pooling modules are not supported."
        )
    for index, module in enumerate(rest, start=1):
        io = (getattr(module, "module_input_name", "token_embeddings"), getattr(module, "module_output_name", "token_embeddings"))
        if type(module).__name__ in TOKEN_MODULES and io != ("token_embeddings", "token_embeddings"):
            raise UnsupportedModelError(f"Module {index} ({type(module).__name__}) maps {io[0]} -> {io[1]}; only "
                                        "token-level modules (token_embeddings -> token_embeddings) are exported.")
    if getattr(transformer, "module_output_name", "token_embeddings") != "token_embeddings":
        raise UnsupportedModelError("The Transformer module does not output token_embeddings.")

    tokenizer = write_tokenizer(transformer.tokenizer, staging / TOKENIZER_FILE, max_seq_length=transformer.max_seq_length)
    example = transformer.preprocess(EXAMPLE_TEXTS)
    inputs = {name: example[name] for name in graph_input_names([transformer])}
    graph = MultiVectorGraph([transformer, *(m for m in rest if m not in masks)], list(inputs)).eval()
    with torch.no_grad():
        dimension = int(graph(*inputs.values()).shape[-1])
    variants = export_graph(graph, inputs, staging, ONNX_FILE, options,
                            axes=dynamic_axes(inputs, {"token_embeddings": SEQUENCE_AXES}))
    config = multi_vector_task_config(transformer, masks[0] if masks else None, saved_truncate_dim(model, dimension))
    written = Route(inputs=tuple(inputs), outputs=MultiVectorGraph.output_names, tokenizer=tokenizer, variants=variants,
                    embedding_dimension=dimension, task_config=config)
    return WrittenModel(graph=written, similarity_fn_name=model.similarity_fn_name,
                        prompts={name: text for name, text in model.prompts.items() if text is not None},
                        default_prompt_name=model.default_prompt_name)


def saved_truncate_dim(model: Any, dimension: int) -> int | None:
    """The model's truncate_dim, when it was saved with (or given) one (sentence-transformers >= 6.3), else None. A
    value above the dimension is recorded as the dimension: sentence-transformers then keeps every dimension (and
    still L2-normalizes), which is what truncate_dim=dimension does in the runtime.

    Raises:
        UnsupportedModelError: truncate_dim is not a positive int.
    """
    value = getattr(model, "truncate_dim", None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UnsupportedModelError(f"The model's truncate_dim is {value!r}; it must be a positive int or None.")
    return min(int(value), dimension)


def multi_vector_task_config(transformer: nn.Module, mask: nn.Module | None,
                             truncate_dim: int | None = None) -> MultiVectorConfig:
    """The facts st_runtime needs to tokenize per task and keep the scored rows, as sentence-transformers does.

    query_length / document_length: truncation length of that task (None: max_seq_length). query_expansion:
    None, or its strategy ("fixed" | "min"), attend, length and token_id, with the expansion token resolved as
    sentence-transformers resolves it (the token, else the mask token, else EOS; None: positions keep their pad id).
    has_mask_module: a MultiVectorMask follows the Transformer (without one, the scored rows are the attention mask's,
    and expansion positions count only when attended). skiplist_ids / skiplist_tasks / keep_only_token_ids: the
    MultiVectorMask's resolved settings ("document" stands for no task). truncate_dim: the model's default token
    dimension (`saved_truncate_dim`), an optional key written only when set.
    """
    expansion = transformer.query_expansion
    if expansion is not None:
        hf_tokenizer = transformer.tokenizer
        if expansion["token"] is not None:
            token_id = hf_tokenizer.convert_tokens_to_ids(expansion["token"])
        else:
            token_id = hf_tokenizer.mask_token_id if hf_tokenizer.mask_token_id is not None else hf_tokenizer.eos_token_id
        expansion = QueryExpansion(strategy=expansion["strategy"], attend=bool(expansion["attend"]),
                                   length=int(expansion["length"]), token_id=None if token_id is None else int(token_id))
    skiplist = getattr(mask, "_skiplist_ids", None)
    keep_only = getattr(mask, "keep_only_token_ids", None)
    return MultiVectorConfig(
        query_length=transformer.query_length,
        document_length=transformer.document_length,
        query_expansion=expansion,
        has_mask_module=mask is not None,
        skiplist_ids=tuple(sorted({int(i) for i in skiplist.tolist()})) if skiplist is not None else (),
        skiplist_tasks=tuple(mask.skiplist_tasks) if mask is not None else (),
        keep_only_token_ids=tuple(int(i) for i in keep_only) if keep_only else None,
        truncate_dim=truncate_dim,
    )


def check_multi_vector_parity(
    reference: Any, folder: Path, *, atol: float, texts: tuple[str, ...] = PROBE_TEXTS
) -> dict[str, Any]:
    """Encode `texts` (plus short queries) as queries, as documents and without a task, and with each stored
    non-empty prompt, with both; the kept rows must match in number and value, and the MaxSim scores of the queries
    against the documents too (their tolerance scales with the number of query tokens).

    Returns:
        {"max_abs_diff", "max_score_diff", "texts", "atol"} for the manifest.

    Raises:
        ParityError: a text keeps a different number of rows, or a difference exceeds `atol`.
    """
    runtime = st_runtime.MultiVectorEncoder(folder)
    worst, worst_score, count = 0.0, 0.0, 0
    probes = list(texts) + list(QUERY_PROBES)
    runs = [(task, None) for task in ("query", "document", None)]
    runs += [("query", name) for name, text in sorted(reference.prompts.items()) if text]
    encoded: dict[str | None, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for task, prompt_name in runs:
        kwargs = {"task": task, "prompt_name": prompt_name, "batch_size": 4, "show_progress_bar": False}
        expected = reference.encode(probes, convert_to_numpy=True, **kwargs)
        actual = runtime.encode(probes, **kwargs)
        for text, e, a in zip(probes, expected, actual, strict=True):
            if e.shape != a.shape:
                raise ParityError(f"The exported multi-vector encoder keeps {a.shape[0]} token vectors of {text[:40]!r} "
                                  f"(task {task!r}), sentence-transformers {e.shape[0]}; nothing was written. This is "
                                  "an exporter bug: please report it.")
            if e.size:
                worst = max(worst, max_abs_and_min_cosine(e, a)[0])  # a NaN on one side counts as infinite
        count += len(probes)
        if prompt_name is None:
            encoded[task] = (expected, actual)
    if "query" in encoded and "document" in encoded:
        expected_scores = reference.similarity(encoded["query"][0], encoded["document"][0]).cpu().numpy()
        actual_scores = runtime.similarity(encoded["query"][1], encoded["document"][1])
        query_tokens = max((len(q) for q in encoded["query"][0]), default=1)
        worst_score = max_abs_and_min_cosine(expected_scores, actual_scores)[0] / max(query_tokens, 1)
    report = {"max_abs_diff": max(worst, worst_score), "max_score_diff_per_query_token": worst_score, "texts": count,
              "atol": atol}
    return parity_gate(report, "The exported multi-vector encoder")


SUPPORTED_MODULES = frozenset({"Transformer", "MultiVectorMask", *TOKEN_MODULES})

if MultiVectorEncoder is not None:
    MULTI_VECTOR = register(KindExporter(
        task="multi-vector-embedding",
        model_type="MultiVectorEncoder",
        load=MultiVectorEncoder,
        supported_modules=SUPPORTED_MODULES,
        write=write_multi_vector,
        check_parity=check_multi_vector_parity,
    ))
else:
    register_unavailable("MultiVectorEncoder", "A MultiVectorEncoder (ColBERT / late-interaction) model needs "
                         f"sentence-transformers >= 6 to export; this environment has sentence-transformers "
                         f'{metadata.version("sentence-transformers")}. Install the newer line: '
                         'pip install "sentence-transformers>=6".')
