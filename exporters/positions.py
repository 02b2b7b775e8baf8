"""The longest input each exported graph takes: the rows of its transformer's position embedding, less the offset
some architectures start positions at (RoBERTa, MPNet, XLM-R: padding_idx + 1). Recorded in the manifest's
`max_positions` so the runtime refuses a max_seq_length its graph cannot take at load, instead of failing with an
onnxruntime index error on the first long text; refused here first, before anything is traced."""

from __future__ import annotations

from typing import Any

from torch import nn

from exporters.errors import UnsupportedModelError
from exporters.router import find_router, route_pipelines


def graph_chains(model: nn.Sequential) -> dict[str, list[nn.Module]]:
    """Each graph's module chain, keyed as `Manifest.max_positions` is: by route name, "" for a model without a
    Router."""
    return route_pipelines(model) if find_router(model) is not None else {"": list(model)}


def position_limit(module: nn.Module) -> int | None:
    """The longest input (tokens) a chain's input module takes, or None when it has no position embedding
    (rotary or relative positions, a StaticEmbedding)."""
    auto_model = getattr(module, "auto_model", None)
    base = getattr(auto_model, "base_model", auto_model)
    positions = getattr(getattr(base, "embeddings", None), "position_embeddings", None)
    if not isinstance(positions, nn.Embedding):
        return None
    offset = positions.padding_idx + 1 if positions.padding_idx is not None else 0
    return positions.num_embeddings - offset


def position_limits(model: nn.Sequential) -> dict[str, int]:
    """`Manifest.max_positions` of a model: each graph's position limit, for the graphs that have one.

    Raises:
        UnsupportedModelError: a graph's input module truncates at a max_seq_length above its positions (or never
            truncates), so sentence-transformers itself fails on long texts.
    """
    limits = {}
    for name, chain in graph_chains(model).items():
        limit = position_limit(chain[0])
        if limit is None:
            continue
        length: Any = getattr(chain[0], "max_seq_length", None)
        if not isinstance(length, int) or length > limit:
            where = f"route {name!r}'s " if name else ""
            raise UnsupportedModelError(
                f"The model's {where}{type(chain[0]).__name__} module truncates at max_seq_length {length}, but its "
                f"position embedding takes at most {limit} tokens, so longer texts fail in sentence-transformers "
                f"too. Set max_seq_length to at most {limit} (sentence_bert_config.json, or model.max_seq_length).")
        limits[name] = limit
    return limits
