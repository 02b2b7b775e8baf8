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
