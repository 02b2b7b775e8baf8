"""One traceable torch module per model kind, running the source model's own modules in order, so the
exported graph computes exactly what sentence-transformers computes."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from exporters.errors import UnsupportedModelError

PROMPT_LENGTH = "prompt_length"


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
                features["attention_mask"] = exclude_prompt(features["attention_mask"], prompt_length)
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
    """Zero the first `prompt_length` positions of a right-padded mask, as sentence-transformers' Pooling
    does for include_prompt=False; `prompt_length` stays a graph input instead of a traced constant."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device).unsqueeze(0)
    return attention_mask * (positions >= prompt_length.reshape(1, 1)).to(attention_mask.dtype)
