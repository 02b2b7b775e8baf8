"""`CrossEncoder`: scores of text pairs from an exported reranker, with sentence-transformers' predict/rank API."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from st_runtime.base import ExportedModel, check_positive_int, check_text, tokenized_batches
from st_runtime.errors import InvalidInputError

Pair = tuple[str, str]
NumpyActivation = Callable[[np.ndarray], np.ndarray]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))  # never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


ACTIVATIONS: dict[str, NumpyActivation] = {
    "identity": lambda x: x,
    "sigmoid": _sigmoid,
    "softmax": _softmax,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0).astype(x.dtype, copy=False),
}


def resolve_activation(activation_fn: str | NumpyActivation) -> NumpyActivation:
    """A numpy activation from a name ("sigmoid", "Sigmoid", "torch.nn.Sigmoid", ...) or a numpy callable.

    Raises:
        ValueError: an unknown name.
        InvalidInputError: neither a string nor a callable (e.g. a torch module, which st_runtime cannot run).
    """
    if isinstance(activation_fn, str):
        name = activation_fn.rsplit(".", 1)[-1].lower()
        if name not in ACTIVATIONS:
            raise ValueError(f"Unknown activation_fn {activation_fn!r}; use one of {sorted(ACTIVATIONS)} "
                             "or a function that takes and returns a numpy array.")
        return ACTIVATIONS[name]
    if type(activation_fn).__module__.split(".")[0] == "torch":
        raise InvalidInputError(f"activation_fn is a torch object ({type(activation_fn).__name__}); st_runtime runs "
                                f"without torch. Pass its name instead (one of {sorted(ACTIVATIONS)}) or a numpy function.")
    if not callable(activation_fn):
        raise InvalidInputError(f"activation_fn must be a name or a callable, got {type(activation_fn).__name__}.")
    return activation_fn


def check_pairs(inputs: Any, argument: str = "inputs") -> tuple[list[Pair], bool]:
    """Validate cross-encoder input: one (text, text) pair, or a list/tuple/array of such pairs.

    Returns:
        (pairs, was_single_pair)

    Raises:
        InvalidInputError: None, a bare string, or any item that is not a pair of two strings.
    """
    if inputs is None:
        raise InvalidInputError(f"{argument} is None; pass a (text, text) pair or a list of pairs.")
    if isinstance(inputs, str):
        raise InvalidInputError(f"{argument} is a single string ({inputs!r:.40}); a cross-encoder scores pairs: "
                                "pass (query, document) or a list of such pairs.")
    if isinstance(inputs, (bytes, bytearray, memoryview)):
        raise InvalidInputError(f"{argument} is bytes, not a pair of strings: decode the texts to str first.")
    if isinstance(inputs, np.ndarray):
        inputs = inputs.tolist()
    if not isinstance(inputs, Sequence):
        raise InvalidInputError(f"{argument} must be a (text, text) pair or a list of pairs, got {type(inputs).__name__}.")
    single = len(inputs) > 0 and isinstance(inputs[0], str)  # as sentence-transformers: ["q", "d"] is one pair
    items = [inputs] if single else list(inputs)
    pairs = []
    for index, item in enumerate(items):
        where = argument if single else f"{argument}[{index}]"
        if isinstance(item, np.ndarray):
            item = item.tolist()
        if isinstance(item, str) or not isinstance(item, Sequence) or len(item) != 2:
            raise InvalidInputError(f"{where} is {type(item).__name__} ({item!r:.60}), not a pair; every item must be "
                                    "a (text, text) tuple or list of two strings.")
        for side, text in enumerate(item):
            check_text(text, f"{where}[{side}]")  # a str of valid Unicode; bytes are told to decode
        pairs.append((item[0], item[1]))
    return pairs, single


def restore_suffix(feeds: dict[str, np.ndarray], suffix: tuple[int, ...], max_length: int | None) -> None:
    """Write `suffix` over the last real tokens of every row that reached `max_length` (in place), as
    sentence-transformers restores a chat template's tail that truncation cut off (rows padded on either side)."""
    mask = feeds["attention_mask"]
    lengths = mask.sum(axis=1)
    if max_length is None or not len(suffix) or not len(lengths) or lengths.max() < max_length:
        return
    ids = feeds["input_ids"]
    ends = mask.shape[1] - np.argmax(mask[:, ::-1], axis=1)  # one past the last real token
    for row in np.flatnonzero(lengths >= max_length):
        keep = min(len(suffix), int(lengths[row]))
        ids[row, ends[row] - keep : ends[row]] = suffix[len(suffix) - keep :]


class CrossEncoder(ExportedModel):
    """A cross-encoder (reranker) exported by `st-export`; the transformer, classifier head and the model's
    activation function run inside one ONNX graph, so `predict` only tokenizes pairs, runs and reorders.

    Thread-safe: `predict` and `rank` may be called from several threads on one instance.
    See `ExportedModel` for the constructor arguments.
    """

    task = "text-ranking"

    @property
    def num_labels(self) -> int:
        """Scores per pair: 1 for rerankers (a relevance score), more for pair classifiers (e.g. NLI)."""
        return self.manifest.task_config.num_labels

    @property
    def sentence_transformers_major(self) -> int:
        """The sentence-transformers major version the folder was exported with (its manifest records it); predict
        and rank follow that line where the two differ. Folders that do not record it follow the newest line (6)."""
        version = self.manifest.versions.get("sentence-transformers", "")
        major = version.split(".", 1)[0]
        return int(major) if major.isdigit() else 6

    @property
    def activation_fn(self) -> str | None:
        """Name of the activation the graph applies to the logits by default ("sigmoid", "identity", ...), as
        sentence-transformers' CrossEncoder.predict does; None when it is one st_runtime has no numpy name for."""
        return self.manifest.task_config.activation

    def tokenizer_inputs(self, pairs: list[Pair], prompt: str | None) -> list[Pair] | list[str]:
        """What the tokenizer takes for `pairs` with a resolved `prompt`, as sentence-transformers builds it: each
        pair laid out by the model's chat template (LLM rerankers that have one; the prompt goes where the template
        puts it), else the pair with the prompt prepended to its first text.

        Raises:
            ValueError: a prompt for a chat template that has no place for one.
        """
        template = self.manifest.task_config.pair_template
        if template is not None:
            return [template.render(first, second, prompt) for first, second in pairs]
        return [(prompt + first, second) for first, second in pairs] if prompt else pairs

    def predict(
        self,
        inputs: Pair | list[Pair],
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        activation_fn: str | NumpyActivation | None = None,
        apply_softmax: bool = False,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
    ) -> np.ndarray | np.floating | list:
        """Score one (text, text) pair or a list of pairs.

        Each pair is tokenized together and truncated, longest text first, to `max_seq_length` tokens, exactly
        as sentence-transformers does.

        Args:
            inputs: a pair (query, document) or a list of pairs (tuples, lists, or an (n, 2) string array).
            prompt_name: key of `prompts` whose text is prepended to the first text of every pair.
            prompt: text prepended to the first text of every pair (wins over prompt_name).
            batch_size: pairs per graph run; pairs are sorted by length first, results come back in input order.
            show_progress_bar: show a progress bar over batches.
            activation_fn: None for the model's own activation (sigmoid for one label, else identity, unless the
                model saved another); or a name ("identity", "sigmoid", "softmax", "tanh", "relu") or a numpy
                function, applied to the raw logits instead.
            apply_softmax: softmax over the labels after the activation. For one-label models it follows the
                sentence-transformers line the folder was exported with: 6.x squeezes the label axis first, so it
                changes nothing; 5.x applied it to the single label, so every score became 1.0.
            convert_to_numpy: one array; False gives a list with one score (or label vector) per pair.
            convert_to_tensor: not available without torch; raises.

        Returns:
            (n,) float32 scores for one-label models, (n, num_labels) otherwise; for a single pair, its score
            (a numpy scalar) or its (num_labels,) vector. An empty list gives an empty (0,) / (0, num_labels) array.

        Raises:
            InvalidInputError: inputs is None, a bare string, or holds something other than pairs of strings.
            ValueError: unknown prompt_name or activation name, a non-positive batch_size, or convert_to_tensor.
        """
        if convert_to_tensor:
            raise ValueError("convert_to_tensor needs torch, which st_runtime does not use; the numpy result is "
                             "returned by default (torch.from_numpy converts it without a copy).")
        pairs, single = check_pairs(inputs)
        activation = resolve_activation(activation_fn) if activation_fn is not None else None
        items = self.tokenizer_inputs(pairs, self._resolve_prompt(prompt, prompt_name))
        output = "scores" if activation is None else "logits"
        graph = self.routes.graph(None)
        template = self.manifest.task_config.pair_template
        scores: np.ndarray | None = None
        for index, feeds in tokenized_batches(items, graph.tokenizer, batch_size, show_progress_bar,
                                               graph.backend.batch_tokens):
            if template is not None and template.suffix_ids:
                restore_suffix(feeds, template.suffix_ids, graph.tokenizer.max_seq_length)
            batch_scores = graph.run(feeds, [output])[0]
            if activation is not None:
                batch_scores = np.asarray(activation(batch_scores))
            if apply_softmax and batch_scores.ndim > 1 and (self.num_labels > 1 or self.sentence_transformers_major < 6):
                batch_scores = ACTIVATIONS["softmax"](batch_scores)
            if scores is None:
                scores = np.empty((len(pairs), *batch_scores.shape[1:]), dtype=batch_scores.dtype)
            scores[index] = batch_scores
        if scores is None:
            scores = np.empty((0, self.num_labels), dtype=np.float32)
        if self.num_labels == 1 and scores.ndim > 1:
            scores = scores.squeeze(-1)
        if single:
            return scores[0]
        return scores if convert_to_numpy else list(scores)

    def rank(
        self,
        query: str,
        documents: list[str],
        top_k: int | None = None,
        return_documents: bool = False,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        activation_fn: str | NumpyActivation | None = None,
        apply_softmax: bool = False,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
    ) -> list[dict[str, Any]]:
        """Score `query` against every document and return them best first.

        Args:
            query: the query text.
            documents: the texts to rank.
            top_k: return only the best top_k (all when None).
            return_documents: add each document's text under "text".
            prompt_name, prompt, batch_size, show_progress_bar, activation_fn, apply_softmax, convert_to_numpy,
                convert_to_tensor: as in `predict`.

        Returns:
            [{"corpus_id": index in documents, "score": score, ["text": document]}, ...] sorted by score, highest
            first (ties keep document order), as sentence-transformers returns it: the score is a Python float for
            folders exported with sentence-transformers 6, a numpy float32 for those exported with 5.x.

        Raises:
            InvalidInputError: query is not a string, documents is not a list of strings (of valid Unicode), or top_k
                is not None or a non-negative int (it is a ValueError too).
            ValueError: the model has more than one label (rank needs one score per document).
        """
        if self.num_labels != 1:
            raise ValueError("CrossEncoder.rank() only works for models with num_labels=1. "
                             "Consider using CrossEncoder.predict() with input pairs instead.")
        check_text(query, "query")
        if isinstance(documents, (bytes, bytearray)):
            raise InvalidInputError("documents is bytes, not a list of strings: decode it to str first and wrap it "
                                    "in a list.")
        if isinstance(documents, str) or documents is None:
            raise InvalidInputError(f"documents must be a list of strings, got {type(documents).__name__}; "
                                    "wrap a single document in a list.")
        top_k = check_positive_int(top_k, "top_k", allow_none=True, allow_zero=True)  # 0: [], as sentence-transformers
        if isinstance(documents, np.ndarray):
            documents = documents.tolist()
        if not isinstance(documents, Sequence):
            raise InvalidInputError(f"documents must be a list of strings, got {type(documents).__name__}.")
        for index, document in enumerate(documents):
            check_text(document, f"documents[{index}]")
        scores = self.predict([(query, document) for document in documents], prompt_name=prompt_name, prompt=prompt,
                              batch_size=batch_size, show_progress_bar=show_progress_bar, activation_fn=activation_fn,
                              apply_softmax=apply_softmax, convert_to_numpy=convert_to_numpy,
                              convert_to_tensor=convert_to_tensor)
        results: list[dict[str, Any]] = []
        if self.sentence_transformers_major >= 6:
            scores = np.asarray(scores).tolist()
        for corpus_id, score in enumerate(scores):
            results.append({"corpus_id": corpus_id, "score": score})
            if return_documents:
                results[-1]["text"] = documents[corpus_id]
        results.sort(key=lambda result: result["score"], reverse=True)
        return results[:top_k]
