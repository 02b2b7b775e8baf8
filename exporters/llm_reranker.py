"""LLM rerankers (Qwen3-Reranker style): a causal LM scored by the logits of label tokens ("yes" / "no") at the last
real token, which sentence-transformers 6 runs as a CrossEncoder of Transformer(text-generation) -> LogitScore.

The graph runs the decoder body and multiplies the last real token's hidden state by the LM head's rows of the label
tokens only (copied out of the head, tied or not, so the file holds no vocabulary projection), then true - false and
the model's activation. The pair layout of a chat template is resolved here into fixed text around the query and the
document (`PairTemplate`), which st_runtime fills in, tokenizes whole and, for pairs cut at max_seq_length, ends with
the template's tail as sentence-transformers does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from exporters.artifacts import TOKENIZER_FILE, write_tokenizer
from exporters.errors import UnsupportedModelError
from exporters.graphs import BATCH_AXES, ONNX_FILE, dynamic_axes, export_graph, padding_changes_output
from exporters.kinds import ExportOptions
from exporters.source import graph_input_names
from st_runtime.manifest import Route
from st_runtime.task_configs import PROMPT_FIELD, CrossEncoderConfig, PairTemplate, template_check

LOGIT_SCORE = "LogitScore"
CAUSAL_TASK = "text-generation"
# Stand-ins rendered through the chat template to find where the query, document and prompt go (private-use
# characters, which no template writes itself); two sets, so a template that is not fixed text around them shows.
MARKERS = ({"query": "\ue000Q\ue000", "document": "\ue000D\ue000", PROMPT_FIELD: "\ue000P\ue000"},
           {"query": "\ue001q \ue001", "document": "\ue001 d\ue001", PROMPT_FIELD: "\ue001 p\ue001"})
# Texts of the pair used for tracing: two lengths, so the traced graph has padding and a real attention mask.
TRACE_PAIRS = [("a short query", "a somewhat longer document for tracing the graph"), ("q", "d")]


def is_llm_reranker(model: nn.Sequential) -> bool:
    """Whether a CrossEncoder is a causal LM followed by LogitScore (checked further by `check_structure`)."""
    return any(type(m).__name__ == LOGIT_SCORE for m in model) or getattr(model[0], "transformer_task", "") == CAUSAL_TASK


def check_structure(model: nn.Sequential) -> None:
    """Refuse a CrossEncoder that is not exactly Transformer(text-generation) -> LogitScore.

    Raises:
        UnsupportedModelError: naming what is there.
    """
    found = [f"{type(m).__name__}({getattr(m, 'transformer_task', '')})" if type(m).__name__ == "Transformer"
             else type(m).__name__ for m in model]
    if (len(model) != 2 or getattr(model[0], "transformer_task", "") != CAUSAL_TASK
            or type(model[1]).__name__ != LOGIT_SCORE or model[1].module_input_name != "causal_logits"):
        raise UnsupportedModelError(
            f"The CrossEncoder's modules are {' -> '.join(found)}; an LLM reranker is exported only as "
            f"Transformer({CAUSAL_TASK}) -> LogitScore (reading causal_logits), and a LogitScore needs a causal LM.")


class LogitScoreGraph(nn.Module):
    """Decoder -> last real token -> label rows of the LM head -> true - false (or true) -> activation, as one graph.

    Inputs: input_ids, attention_mask (batch, sequence), padded on either side: the last position whose mask is 1 is
    read. Outputs: scores (batch, 1) after the activation and logits (batch, 1) before it, as `CrossEncoderGraph`.
    """

    output_names = ("scores", "logits")

    def __init__(self, transformer: nn.Module, logit_score: nn.Module, input_names: list[str],
                 activation: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        causal = transformer.auto_model
        self.decoder = causal.get_decoder()
        head = causal.get_output_embeddings()
        if not isinstance(head, nn.Linear):
            raise UnsupportedModelError(f"The LM head of {type(causal).__name__} is {type(head).__name__}, not a "
                                        "Linear layer; only a linear head can be cut to the label tokens' rows.")
        ids = label_token_ids(logit_score)
        rows = torch.tensor(ids, dtype=torch.long, device=head.weight.device)
        # Copies of the label rows only (a tied head shares the input embedding: copying leaves that untouched).
        self.label_weight = nn.Parameter(head.weight.detach()[rows].clone(), requires_grad=False)
        self.label_bias = (nn.Parameter(head.bias.detach()[rows].clone(), requires_grad=False)
                           if head.bias is not None else None)
        self.softcap = getattr(causal.config, "final_logit_softcapping", None)  # Gemma: tanh(x / cap) * cap
        self.own_mask = full_attention_only(causal.config)
        self.paired = len(ids) == 2
        self.input_names = list(input_names)
        self.activation = activation

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        features = dict(zip(self.input_names, inputs, strict=True))
        mask = features["attention_mask"]
        # No cast of the mask itself: OpenVINO drops a no-op Cast of an input and may then name the input after it.
        positions = torch.arange(mask.shape[1], device=mask.device, dtype=mask.dtype)
        if self.own_mask:
            features["attention_mask"] = causal_padding_mask(mask, positions, self.label_weight.dtype)
        hidden = self.decoder(**features).last_hidden_state
        last = (mask * positions).argmax(dim=1)  # the last real token, padded on either side
        state = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        logits = nn.functional.linear(state, self.label_weight, self.label_bias)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        score = logits[:, :1] - logits[:, 1:2] if self.paired else logits[:, :1]
        return self.activation(score), score


def full_attention_only(config: Any) -> bool:
    """Whether every layer attends causally to all earlier tokens (no sliding window), so the graph may build the
    decoder's 4D mask itself: transformers 4.57 builds it with torch.vmap, which the tracer cannot follow."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return all(kind == "full_attention" for kind in layer_types)
    return getattr(config, "sliding_window", None) is None


def causal_padding_mask(mask: Tensor, positions: Tensor, dtype: torch.dtype) -> Tensor:
    """The additive (batch, 1, query, key) mask of a causal decoder: a query sees the real tokens up to itself (a
    padding query sees none: its row is all the lowest value, softmax stays finite, and no real token reads it)."""
    allowed = (positions[None, :] <= positions[:, None])[None, None] & (mask[:, None, None, :] > 0)
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def label_token_ids(logit_score: nn.Module) -> list[int]:
    """[true_token_id] or [true_token_id, false_token_id] of a LogitScore."""
    return [int(logit_score.true_token_id)] + ([] if logit_score.false_token_id is None
                                               else [int(logit_score.false_token_id)])


def _chat_kwargs(transformer: nn.Module) -> tuple[dict[str, Any], bool]:
    """The kwargs sentence-transformers renders the chat template with (its size kwargs dropped) and whether it
    writes the template's tail back over truncated pairs (its `restore_suffix`, default on)."""
    kwargs = dict(transformer._merge_processing_kwargs(None).get("chat_template", {}))
    restore = bool(kwargs.pop("restore_suffix", True))
    return {k: v for k, v in kwargs.items() if k not in ("padding", "truncation", "max_length", "return_tensors")}, restore


def _render(transformer: nn.Module, values: dict[str, str], prompted: bool, kwargs: dict[str, Any]) -> str:
    """The chat template's text for one pair, built as sentence-transformers builds the conversation."""
    formatter = transformer.input_formatter
    conversation = [formatter.pair_to_messages((values["query"], values["document"]))]
    if prompted:
        conversation = formatter.prepend_prompt_to_messages(conversation, values[PROMPT_FIELD])
    return transformer.tokenizer.apply_chat_template(conversation[0], tokenize=False, **kwargs)


def _as_template(transformer: nn.Module, prompted: bool, kwargs: dict[str, Any]) -> str | None:
    """The chat template as fixed text with {query}, {document} (and {prompt}) placeholders, or None when it is not
    fixed text around them (it changes with what they hold, or drops or repeats one)."""
    first, second = (_render(transformer, markers, prompted, kwargs) for markers in MARKERS)
    template = first.replace("{", "{{").replace("}", "}}")
    for name, marker in MARKERS[0].items():
        template = template.replace(marker, "{" + name + "}")
    names = ("query", "document", PROMPT_FIELD) if prompted else ("query", "document")
    if template_check(names)(template) is not None:
        return None
    expected = PairTemplate(text=template, prompted=template if prompted else None, suffix_ids=())
    if expected.render(*(MARKERS[1][n] for n in ("query", "document")), MARKERS[1][PROMPT_FIELD] if prompted
                       else None) != second:
        return None
    return template


def pair_template(transformer: nn.Module) -> PairTemplate | None:
    """The pair layout of a Transformer that renders pairs through its chat template (None: the tokenizer pairs the
    texts itself, and tokenizer.json reproduces that).

    Raises:
        UnsupportedModelError: the template is not fixed text around the query and the document.
    """
    if "message" not in transformer.modality_config:
        return None
    kwargs, restore = _chat_kwargs(transformer)
    text = _as_template(transformer, False, kwargs)
    if text is None:
        raise UnsupportedModelError(
            "The chat template does not lay out a (query, document) pair as fixed text around them (it changes with "
            "their content, or drops one), so st_runtime cannot reproduce it; set a template that places each once.")
    prompted = _as_template(transformer, True, kwargs)
    suffix: tuple[int, ...] = ()
    if restore:
        conversation = transformer.input_formatter.pair_to_messages(("q", "d"))
        text_kwargs = {"padding": True, "truncation": "longest_first"}
        suffix = tuple(int(i) for i in transformer._chat_template_suffix_ids(conversation, kwargs, text_kwargs, {}))
        if prompted is not None:
            with_prompt = transformer.input_formatter.prepend_prompt_to_messages([conversation], "p")[0]
            if tuple(transformer._chat_template_suffix_ids(with_prompt, kwargs, text_kwargs, {})) != suffix:
                prompted = None  # the prompt renders in the tail: its restored tokens would depend on it
    return PairTemplate(text=text, prompted=prompted, suffix_ids=suffix)


def write_llm_reranker(model: nn.Sequential, staging: Path, options: ExportOptions) -> tuple[Route, dict[str, Any]]:
    """Write tokenizer.json and the sliced-head graph of an LLM reranker; return its route and the facts recorded."""
    check_structure(model)
    transformer, logit_score = model[0], model[1]
    template = pair_template(transformer)
    if template is not None and template.prompted is None and model.prompts:
        raise UnsupportedModelError(
            f"The model stores prompts ({', '.join(sorted(model.prompts))}), but its chat template renders a prompt in "
            "its tail (after the document), which st_runtime cannot reproduce; export it without prompts.")
    # A chat-template pair is tokenized whole without special tokens (apply_chat_template adds none).
    tokenizer = write_tokenizer(transformer.tokenizer, staging / TOKENIZER_FILE, max_seq_length=model.max_seq_length,
                                special_tokens=template is None)
    input_names = graph_input_names(model)
    example = model.preprocess(TRACE_PAIRS)
    inputs = {name: example[name] for name in input_names}
    graph = LogitScoreGraph(transformer, logit_score, input_names, model.activation_fn).eval()
    if padding_changes_output(graph, inputs, 1):  # absolute positions: the batch mates' padding shifts them
        tokenizer = dataclasses.replace(tokenizer, padding_sensitive=True)
    axes = dynamic_axes(input_names, {name: BATCH_AXES for name in LogitScoreGraph.output_names})
    variants = export_graph(graph, inputs, staging, ONNX_FILE, options, axes=axes)
    route = Route(inputs=tuple(inputs), outputs=LogitScoreGraph.output_names, tokenizer=tokenizer, variants=variants)
    return route, {"label_token_ids": tuple(label_token_ids(logit_score)), "pair_template": template}


def llm_config(activation: str | None, activation_fn: str, facts: dict[str, Any]) -> CrossEncoderConfig:
    """The task_config of an LLM reranker (one score per pair)."""
    return CrossEncoderConfig(num_labels=1, activation=activation, activation_fn=activation_fn, **facts)
