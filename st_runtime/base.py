"""What every exported model shares: reading the folder, verifying it, the tokenizer, the graphs, prompts, and the
one batching loop (`tokenized_batches`: length-sorted batches, tokenized, with a progress bar) that every class's
encode / predict runs its graph in (`Graph.run`, the one run path)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from st_runtime.errors import InvalidInputError, ManifestError
from st_runtime.kinds import TASK_CLASSES
from st_runtime.manifest import Manifest, load_manifest
from st_runtime.providers import ProviderSpec
from st_runtime.routes import Graph, Routes, open_graph
from st_runtime.tokenizer import Feeds, TextTokenizer

logger = logging.getLogger("st_runtime")

DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")


class ExportedModel:
    """Base of the runtime model classes: one exported folder, run by onnxruntime or OpenVINO.

    Args:
        model_name_or_path: folder written by `st-export`.
        providers: onnxruntime providers (default CPU only); names, aliases ("cuda") or (name, options).
        variant: variant name from the manifest ("fp32", "qint8_avx512_vnni", "openvino_bf16", ...); default
            the fp32 graph (with backend="openvino": the fp32 OpenVINO IR).
        file_name: or the variant's file, e.g. "onnx/model_qint8_avx512_vnni.onnx".
        backend: "onnx" or "openvino"; picks the default variant of that engine (a named variant carries its own).
        device: OpenVINO device for IR variants: "CPU", "GPU", "NPU" or "AUTO".
        intra_op_num_threads: threads one run uses (onnxruntime intra-op / OpenVINO inference threads).
        fallback_to_cpu: log and use CPU when a requested provider is missing, instead of raising.
        verify: check the sha256 of the graph and tokenizer files against the manifest before loading.
        manifest: use this manifest instead of the folder's st_runtime.json (for tools that try a variant
            before recording it).
    """

    task: ClassVar[str]

    def __init__(
        self,
        model_name_or_path: str | Path,
        *,
        providers: Sequence[ProviderSpec] | str | None = None,
        variant: str | None = None,
        file_name: str | None = None,
        backend: str | None = None,
        device: str = "CPU",
        intra_op_num_threads: int | None = None,
        fallback_to_cpu: bool = False,
        verify: bool = True,
        manifest: Manifest | None = None,
    ) -> None:
        self.folder = Path(model_name_or_path)
        self.manifest: Manifest = manifest if manifest is not None else load_manifest(self.folder)
        if self.manifest.task != self.task:
            owner = TASK_CLASSES.get(self.manifest.task, "the class for that task")
            raise ManifestError(
                f"{str(self.folder)!r} holds a {self.manifest.task!r} model, not {self.task!r}; "
                f"load it with st_runtime.{owner}."
            )
        if variant is None and file_name is None and backend is not None:
            variant = _default_variant(self.manifest, backend)
        open_route = functools.partial(open_graph, self.folder, self.manifest, providers=providers, verify=verify,
                                       intra_op_num_threads=intra_op_num_threads, fallback_to_cpu=fallback_to_cpu,
                                       device=device)
        primary = open_route(None, variant=variant, file_name=file_name)  # the top-level (or primary route's) graph
        self.variant, self.tokenizer, self.backend = primary.variant, primary.tokenizer, primary.backend
        # Router/Asym models: the other routes open on first use, with the same variant and session settings (and
        # the max_seq_length set on the model, if any).
        open_other = functools.partial(open_route, variant=primary.variant.name)
        self._max_seq_length: int | None = None  # set by the max_seq_length setter; None: as exported
        self.routes = Routes(self.manifest, primary, lambda name: self._apply_max_seq_length(open_other(name)))

    @property
    def prompts(self) -> dict[str, str]:
        """Prompts stored with the model, by name (e.g. {"query": "query: "})."""
        return dict(self.manifest.prompts)

    @property
    def default_prompt_name(self) -> str | None:
        """Name of the prompt applied when neither prompt nor prompt_name is given."""
        return self.manifest.default_prompt_name

    def _resolve_prompt(self, prompt: str | None, prompt_name: str | None) -> str | None:
        """The prompt text to prepend, as sentence-transformers resolves it: `prompt` wins, then `prompt_name`,
        then the default prompt.

        Raises:
            ValueError: `prompt_name` is not one of the model's prompts.
            InvalidInputError: `prompt` is not a str of valid Unicode, or `prompt_name` is not a str.
        """
        if prompt is not None:
            if prompt_name is not None:
                logger.warning("Both prompt and prompt_name were given; prompt_name %r is ignored.", prompt_name)
            return check_text(prompt, "prompt")
        if prompt_name is not None:
            if not isinstance(prompt_name, str):
                raise InvalidInputError(f"prompt_name must be a str, got {type(prompt_name).__name__}.")
            if prompt_name not in self.manifest.prompts:
                raise ValueError(f"Prompt name {prompt_name!r} not found in the model's prompts; available: "
                                 f"{sorted(self.manifest.prompts)}.")
            return self.manifest.prompts[prompt_name]
        if self.default_prompt_name is not None:
            return self.manifest.prompts.get(self.default_prompt_name)
        return None

    def _prompted(self, texts: list[str], prompt: str | None, prompt_name: str | None) -> tuple[list[str], str | None]:
        """(`texts` with the resolved prompt prepended, the prompt) as every encode applies them (see `_resolve_prompt`;
        an empty or absent prompt leaves the texts as they are)."""
        prompt = self._resolve_prompt(prompt, prompt_name)
        return ([prompt + t for t in texts] if prompt else texts), prompt

    @property
    def max_seq_length(self) -> int | None:
        """Texts are truncated to this many tokens, special tokens included (None: never truncated).

        Settable, as in sentence-transformers: `model.max_seq_length = 128` truncates later calls at 128 tokens (on
        every route of a Router model). The graph takes at most the length it was exported with (the manifest's
        max_seq_length), so only values from 1 to that are accepted.

        Raises:
            ValueError (on set): not a positive int (InvalidInputError), above the exported length, or a model that
                never truncates.
        """
        return self._max_seq_length if self._max_seq_length is not None else self.manifest.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        value = check_positive_int(value, "max_seq_length")
        routes = self.manifest.routing.routes.values() if self.manifest.routing else [self.manifest.route(None)]
        limits = [r.tokenizer.max_seq_length for r in routes if r.tokenizer.max_seq_length is not None]
        if not limits:
            raise ValueError("This model never truncates its inputs (e.g. StaticEmbedding, which has no position "
                             "limit), so max_seq_length cannot be set.")
        if value > min(limits):
            raise ValueError(f"max_seq_length={value} is above {min(limits)}, the length this model was exported with "
                             f"(the longest input its graph is known to take); use a value from 1 to {min(limits)}, or "
                             "re-export the model with a larger max_seq_length.")
        self._max_seq_length = value
        for graph in self.routes.opened_graphs():
            self._apply_max_seq_length(graph)

    def _apply_max_seq_length(self, graph: Graph) -> Graph:
        """Truncate `graph`'s inputs at the max_seq_length set on the model (routes that never truncate stay so)."""
        if self._max_seq_length is not None and graph.route.tokenizer.max_seq_length is not None:
            graph.tokenizer.set_max_seq_length(self._max_seq_length)
        return graph

    @property
    def session(self) -> Any:
        """The onnxruntime InferenceSession (None when an OpenVINO variant runs)."""
        return getattr(self.backend, "session", None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.folder)!r}, variant={self.variant.name!r})"


class TextEncoder(ExportedModel):
    """Models that embed single texts (bi-encoders, sparse encoders): encode_query / encode_document pick the
    query or document route of a Router model and the matching stored prompt, as sentence-transformers does."""

    def encode(self, inputs: Any, prompt_name: str | None = None, prompt: str | None = None, **kwargs: Any) -> Any:
        raise NotImplementedError

    def encode_query(self, inputs: Any, prompt_name: str | None = None, prompt: str | None = None, **kwargs: Any) -> Any:
        """encode() with task "query" and the model's "query" prompt, when it has one and none is given."""
        if prompt_name is None and prompt is None and "query" in self.manifest.prompts:
            prompt_name = "query"
        return self.encode(inputs, prompt_name, prompt, task="query", **kwargs)

    def encode_document(self, inputs: Any, prompt_name: str | None = None, prompt: str | None = None,
                        **kwargs: Any) -> Any:
        """encode() with task "document" and the model's "document" (else "passage", "corpus") prompt, when it has
        one and none is given."""
        if prompt_name is None and prompt is None:
            prompt_name = next((n for n in DOCUMENT_PROMPT_NAMES if n in self.manifest.prompts), None)
        return self.encode(inputs, prompt_name, prompt, task="document", **kwargs)


def _default_variant(manifest: Manifest, backend: str) -> str:
    """The first variant (fp32 first) that runs on `backend` ("onnx" or "openvino").

    Raises:
        ValueError: unknown backend; ManifestError: the folder has no variant for it.
    """
    engines = {"onnx": "onnxruntime", "onnxruntime": "onnxruntime", "openvino": "openvino"}
    if backend not in engines:
        raise ValueError(f"backend must be 'onnx' or 'openvino', got {backend!r}.")
    for v in manifest.variants:
        if v.backend == engines[backend]:
            return v.name
    raise ManifestError(f"This folder has no {backend} variant; export one with st-export --backend {backend}.")


def check_texts(inputs: Any, argument: str = "inputs") -> tuple[list[str], bool]:
    """Validate text input: a str, or a list/tuple/array of str.

    Returns:
        (texts, was_single_string)

    Raises:
        InvalidInputError: None, bytes, a non-iterable, or any item that is not a string of valid Unicode.
    """
    if isinstance(inputs, str):
        return [check_text(inputs, argument)], True
    if inputs is None:
        raise InvalidInputError(f"{argument} is None; pass a string or a list of strings.")
    if isinstance(inputs, (bytes, bytearray, memoryview)):
        raise InvalidInputError(f"{argument} is bytes, not a string: decode it to str first "
                                "(data.decode('utf-8')).")
    if isinstance(inputs, np.ndarray):
        inputs = inputs.tolist()
    if not isinstance(inputs, Sequence):
        raise InvalidInputError(f"{argument} must be a string or a list of strings, got {type(inputs).__name__}.")
    texts = list(inputs)
    for index, item in enumerate(texts):
        check_text(item, f"{argument}[{index}]")
    return texts, False


def check_text(text: Any, where: str) -> str:
    """`text` if it is a str the tokenizer takes: valid Unicode (no lone surrogate such as "\\ud800", which a
    wrong decode leaves behind and the tokenizer refuses with a bare TypeError).

    Args:
        where: how the message names it ("inputs[3]", "query", "inputs[0][1]").

    Raises:
        InvalidInputError: not a str (bytes get their own hint), or not valid Unicode.
    """
    if not isinstance(text, str):
        if isinstance(text, (bytes, bytearray)):
            raise InvalidInputError(f"{where} is bytes, not a string: decode it to str first ({text!r:.40}"
                                    ".decode('utf-8')).")
        raise InvalidInputError(f"{where} is {type(text).__name__} ({text!r:.40}), not a string; every item must be "
                                "a str (convert numbers, drop None).")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInputError(
                f"{where} is not valid Unicode: it holds a lone surrogate ({text[exc.start]!r}) at position "
                f"{exc.start}. Encode it with errors='replace' (text.encode('utf-8', errors='replace')"
                ".decode('utf-8')) or fix the code that decoded it.") from None
    return text


def check_positive_int(value: Any, argument: str, *, allow_none: bool = False, allow_zero: bool = False) -> int | None:
    """`value` as an int, if it is a positive int (numpy ints included, bool not); the one check of every count
    argument (batch_size, top_k, max_active_dims, ...).

    Args:
        allow_none: None is accepted (and returned).
        allow_zero: 0 is accepted too.

    Raises:
        InvalidInputError: anything else (2.5, "3", True, 0, -1); it is a ValueError and a TypeError.
    """
    if value is None and allow_none:
        return None
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        what = "a non-negative int" if allow_zero else "a positive int"
        raise InvalidInputError(f"{argument} must be {what}{' or None' if allow_none else ''}, got "
                                f"{type(value).__name__} {value!r:.40}.")
    return int(value)


def length_sorted_batches(lengths: Sequence[int] | np.ndarray, batch_size: int, *, stable: bool = False,
                          max_tokens: int | None = None) -> Iterator[np.ndarray]:
    """Yield index arrays of batches over items sorted longest first, so each batch pads little.

    Args:
        stable: keep equal lengths in input order (else numpy's default sort, as sentence-transformers' encode sorts).
        max_tokens: also at most this many padded tokens per batch (items x the batch's first, longest, item); an
            item longer than that gets a batch of its own. None: batch_size alone.

    Raises:
        InvalidInputError (a ValueError): batch_size or max_tokens is not a positive int.
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    max_tokens = check_positive_int(max_tokens, "max_tokens", allow_none=True)
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable" if stable else None)
    start = 0
    while start < len(order):
        size = batch_size
        if max_tokens is not None:  # sorted longest first: the first item pads the batch
            size = min(batch_size, max(1, max_tokens // max(1, int(lengths[order[start]]))))
        yield order[start : start + size]
        start += size


def tokenized_batches(items: Sequence[Any], tokenizer: TextTokenizer, batch_size: int,
                      show_progress_bar: bool | None, max_tokens: int | None = None) -> Iterator[tuple[np.ndarray, Feeds]]:
    """The batching loop of every encode / predict: yield (indices into `items`, the tokenized batch) over
    length-sorted batches (`length_sorted_batches`) of at most `batch_size` items and `max_tokens` padded tokens (the
    graph's backend's `batch_tokens`), advancing a progress bar (`progress`) after each batch is processed. Results
    go back to the input order by the indices.

    The items are tokenized once and sorted by token count, so a batch pads almost nothing (sentence-transformers
    sorts by characters: 28% padding on st-bench's 2000 Lee sentences at batch 32, against 2% by tokens). A graph whose
    output depends on the padding (`TokenizerSpec.padding_sensitive`: a CNN that reads padding positions) gets
    sentence-transformers' very batches instead: sorted by characters (a pair: its two texts' lengths), ties included.

    Raises:
        InvalidInputError (a ValueError): batch_size is not a positive int (on the first iteration, even for no items).
    """
    feeds_of: Callable[[np.ndarray], Feeds]
    if tokenizer.spec.padding_sensitive:
        lengths = [len(item) if isinstance(item, str) else sum(len(text) for text in item) for item in items]
        batches = list(length_sorted_batches(lengths, batch_size))
        feeds_of = lambda index: tokenizer.encode([items[i] for i in index])  # noqa: E731
    else:
        check_positive_int(batch_size, "batch_size")  # before tokenizing the whole input
        tokenized = tokenizer.tokenize(items)
        batches = list(length_sorted_batches(tokenized.lengths, batch_size, stable=True, max_tokens=max_tokens))
        feeds_of = tokenized.batch
    with progress(len(batches), show_progress_bar) as bar:
        for index in batches:
            yield index, feeds_of(index)
            bar.update(1)


def progress(total: int, show: bool | None, desc: str = "Batches") -> Any:
    """A tqdm bar over batches, shown when asked or, by default, when the st_runtime logger is at INFO."""
    from tqdm.auto import tqdm

    if show is None:
        show = logger.getEffectiveLevel() <= logging.INFO
    return tqdm(total=total, desc=desc, disable=not show)


def check_truncate_dim(value: int | None, dimension: int | None) -> int | None:
    """`value` as an int, if it is None or an int from 1 to `dimension` (any positive int when that is unknown).

    sentence-transformers slices `[..., :truncate_dim]`, so -1 silently drops one dimension and values above the
    dimension are ignored; here those are errors.

    Raises:
        ValueError: anything else (InvalidInputError, also a ValueError, for a non-int or non-positive value).
    """
    value = check_positive_int(value, "truncate_dim", allow_none=True)
    if value is not None and dimension and value > dimension:
        raise ValueError(f"truncate_dim must be None or an int from 1 to {dimension} (the embedding dimension), got "
                         f"{value}.")
    return value


class TruncateDim:
    """The settable `truncate_dim` default of the kinds whose vectors sentence-transformers truncates
    (SentenceTransformer, MultiVectorEncoder): None or an int from 1 to the manifest's embedding dimension."""

    manifest: Manifest
    _truncate_dim: int | None = None

    @property
    def truncate_dim(self) -> int | None:
        """Default number of leading dimensions `encode` keeps (None: all)."""
        return self._truncate_dim

    @truncate_dim.setter
    def truncate_dim(self, value: int | None) -> None:
        self._truncate_dim = check_truncate_dim(value, self.manifest.embedding_dimension)
