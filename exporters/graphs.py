"""One traceable torch module per model kind, running the source model's own modules in order, so the
exported graph computes exactly what sentence-transformers computes."""

from __future__ import annotations

import torch
from torch import Tensor, nn

PROMPT_LENGTH = "prompt_length"


class BiEncoderGraph(nn.Module):
    """Transformer -> Pooling -> Dense* -> Normalize, as one graph.

    Inputs (by name, in `input_names` order): input_ids, attention_mask, [token_type_ids], and
    prompt_length (shape [1]) when a Pooling module excludes the prompt (include_prompt=False).
    Outputs: token_embeddings (batch, seq, hidden), sentence_embedding (batch, dim), and
    last_hidden_state (= token_embeddings) so that sentence-transformers' own ONNX backend loads the file.
    """

    output_names = ("token_embeddings", "sentence_embedding", "last_hidden_state")

    def __init__(self, modules: list[nn.Module], input_names: list[str]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(modules)
        self.input_names = list(input_names)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features: dict[str, Tensor] = dict(zip(self.input_names, inputs, strict=False))
        prompt_length = features.pop(PROMPT_LENGTH, None)
        for stage in self.stages:
            if prompt_length is not None and not getattr(stage, "include_prompt", True):
                features["attention_mask"] = exclude_prompt(features["attention_mask"], prompt_length)
            features = stage(features)
        token_embeddings = features["token_embeddings"]
        return token_embeddings, features["sentence_embedding"], token_embeddings


def exclude_prompt(attention_mask: Tensor, prompt_length: Tensor) -> Tensor:
    """Zero the first `prompt_length` positions of a right-padded mask, as sentence-transformers' Pooling
    does for include_prompt=False; `prompt_length` stays a graph input instead of a traced constant."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device).unsqueeze(0)
    return attention_mask * (positions >= prompt_length.reshape(1, 1)).to(attention_mask.dtype)
