"""A served model: one runtime model (SentenceTransformer, CrossEncoder or SparseEncoder) behind its batcher, and the
graph runs and token counts the batcher calls, built only on the runtime's public API."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from st_runtime.errors import ManifestError, UncutTextError
from st_runtime.kinds import model_class
from st_runtime.manifest import folder_file, load_manifest
from st_runtime.serve.batcher import Batcher, BatchLimits, RequestTooLargeError
from st_runtime.tokenizer import TextTokenizer

SERVED_TASKS = ("sentence-embedding", "text-ranking", "sparse-embedding")  # classes: st_runtime.kinds

# Batch keys: ("embed" | "sparse", prompt text, route task), ("pairs", prompt text, raw scores) and
# ("tokenize", "", add_special_tokens).
Key = tuple[str, str, Any]
TOKENIZE_CHUNK = 4096  # tokens turned into JSON objects at a time by /tokenize


class ServedModel:
    """One exported folder loaded for serving.

    Args:
        name: the name clients address it by (the `model` field).
        folder: the folder written by st-export.
        variant: the manifest variant to run (default fp32).
        threads: onnxruntime intra-op threads (default: onnxruntime's, one per core).
        limits: batching and queue limits.
        on_batch: metrics hook, (inputs, padded tokens, seconds) after each graph run.

    Raises:
        ManifestError: the folder holds a kind of model st-serve does not serve.
    """

    def __init__(self, name: str, folder: str | Path, *, variant: str | None = None, threads: int | None = None,
                 limits: BatchLimits | None = None, on_batch: Any = None) -> None:
        manifest = load_manifest(folder)
        if manifest.task not in SERVED_TASKS:
            raise ManifestError(f"{str(folder)!r} holds a {manifest.task!r} model; st-serve serves "
                                f"{sorted(SERVED_TASKS)}.")
        self.name, self.folder, self.task = name, Path(folder), manifest.task
        self.model: Any = model_class(manifest.task)(folder, variant=variant, intra_op_num_threads=threads)
        self.manifest = self.model.manifest
        self._raw_tokenizer: Any = None
        self._limit_counter: TextTokenizer | None = None
        self._raw_lock = threading.Lock()
        self.batcher = Batcher(name, self._run, self._count, limits or BatchLimits(), on_batch)

    @property
    def max_seq_length(self) -> int | None:
        return self.model.max_seq_length

    @property
    def dimension(self) -> int | None:
        if self.task == "text-ranking":
            return None
        return int(self.model.get_embedding_dimension())

    def prompt_text(self, prompt_name: str | None) -> str:
        """The prompt text encode would prepend for `prompt_name` (default: the model's default prompt, if any).

        Raises:
            KeyError: an unknown prompt name (the message lists the known ones).
        """
        if prompt_name is None:
            default = self.model.default_prompt_name
            return self.manifest.prompts.get(default, "") if default else ""
        if prompt_name not in self.manifest.prompts:
            raise KeyError(f"unknown prompt_name {prompt_name!r}; this model has {sorted(self.manifest.prompts)}")
        return self.manifest.prompts[prompt_name]

    def info(self) -> dict[str, Any]:
        """What /info and /v1/models tell about the model: kind, variant, precision, lengths, accuracy."""
        variant = self.model.variant
        return {
            "model_id": self.name,
            "folder": self.folder.name,
            "task": self.task,
            "variant": variant.name,
            "precision": variant.precision,
            "backend": variant.backend,
            "max_seq_length": self.max_seq_length,
            "dimension": self.dimension,
            "similarity_fn_name": getattr(self.model, "similarity_fn_name", None),
            "prompts": dict(self.manifest.prompts),
            "default_prompt_name": self.manifest.default_prompt_name,
            "accuracy": variant.accuracy,
            "parity": {k: v for k, v in self.manifest.parity.items() if isinstance(v, (int, float, str, bool))},
            "source": public_source(self.manifest.source.get("name_or_path")),  # the model st-export read
        }

    # -- called by the batcher's worker thread -------------------------------------------------------------------------

    def _run(self, key: Hashable, inputs: list[Any]) -> Sequence[Any]:
        kind, prompt, extra = key  # type: ignore[misc]
        if kind == "tokenize":
            return self._tokenize(inputs, add_special_tokens=extra)
        if kind == "embed":
            return self.model.encode(inputs, prompt=prompt, batch_size=len(inputs), task=extra, show_progress_bar=False)
        if kind == "sparse":
            csr = self.model.encode(inputs, prompt=prompt, batch_size=len(inputs), task=extra, sparse_format="numpy",
                                   show_progress_bar=False)
            return [csr.row(i) for i in range(len(inputs))]
        return self.model.predict(inputs, prompt=prompt, batch_size=len(inputs), show_progress_bar=False,
                                  activation_fn="identity" if extra else None)

    def _count(self, key: Hashable, inputs: Sequence[Any], options: dict[str, Any]) -> np.ndarray:
        """Tokens per input (special tokens and prompt included, after truncation); with options["truncate"] False,
        refuse inputs longer than max_seq_length as TEI does."""
        kind, prompt, _ = key  # type: ignore[misc]
        if kind == "tokenize":  # no graph run: each text is one unit of a batch (its cost is bounded by its characters)
            return np.ones(len(inputs), dtype=np.int64)
        # pairs: as predict tokenizes them (an LLM reranker's chat template around them), so its ids are reused
        texts = self.model.tokenizer_inputs(inputs, prompt) if kind == "pairs" else [prompt + t for t in inputs]
        try:
            lengths = self.model.tokenizer.token_counts(texts, max_uncut_chars=self.batcher.limits.max_uncut_chars,
                                                        keep=True)  # the graph run takes these ids: tokenized once
            limit = self.max_seq_length
            if options.get("truncate") is False and limit is not None:
                longer = np.flatnonzero(lengths >= limit)
                if len(longer):  # counted again truncated one token later (a cut long text costs as a short one)
                    beyond = self._counter(limit + 1).token_counts([texts[i] for i in longer])
                    for index in longer[beyond > limit][:1]:
                        raise RequestTooLargeError(f"input {index} has more than {limit} tokens, this model's "
                                                   f"max_seq_length; shorten it or send truncate=true")
        except UncutTextError as exc:
            raise RequestTooLargeError(f"{exc} (--max-uncut-chars)") from exc
        return lengths

    def _counter(self, max_seq_length: int) -> TextTokenizer:
        """The model's tokenizer truncating at `max_seq_length` instead (to tell an input of exactly max_seq_length
        tokens from a longer one without tokenizing all of it)."""
        with self._raw_lock:
            if self._limit_counter is None or self._limit_counter.max_seq_length != max_seq_length:
                spec = dataclasses.replace(self.model.tokenizer.spec, max_seq_length=max_seq_length)
                self._limit_counter = TextTokenizer(self.folder, spec)
            return self._limit_counter

    def _untruncated(self) -> Any:
        with self._raw_lock:
            if self._raw_tokenizer is None:
                self._raw_tokenizer = raw_tokenizer(self.folder, self.manifest.tokenizer.file)
            return self._raw_tokenizer

    def _tokenize(self, texts: list[str], *, add_special_tokens: bool) -> list[tuple[list[orjson.Fragment], int]]:
        """TEI's /tokenize for a batch of texts: per text, its tokens (untruncated) as {"id", "text", "special",
        "start", "stop"} objects, already serialized a chunk at a time (orjson writes a list of such fragments as one
        JSON array), and their count. The objects of at most TOKENIZE_CHUNK tokens exist at a time, so a text costs
        about its JSON, not a dict per token."""
        tokenizer = self._untruncated()
        out = []
        for text, encoding in zip(texts, tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens),
                                  strict=True):
            ids, offsets, special = encoding.ids, encoding.offsets, encoding.special_tokens_mask
            parts = []
            for first in range(0, len(ids), TOKENIZE_CHUNK):
                chunk = [{"id": i, "text": tokenizer.id_to_token(i) if flag else text[s:e], "special": bool(flag),
                          "start": s, "stop": e}
                         for i, (s, e), flag in zip(ids[first:first + TOKENIZE_CHUNK],
                                                     offsets[first:first + TOKENIZE_CHUNK],
                                                     special[first:first + TOKENIZE_CHUNK], strict=True)]
                parts.append(orjson.Fragment(orjson.dumps(chunk)[1:-1]))
            out.append((parts, len(ids)))
        return out


def raw_tokenizer(folder: Path, file: str) -> Any:
    """The folder's tokenizer without truncation or padding (to count full lengths and for /tokenize)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder_file(folder, file, entry="tokenizer.file")))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def public_source(name_or_path: str | None) -> str | None:
    """The source model's name as /info may show it: a Hub id as is, a local path by its last part only (the export
    machine's folders are nobody's business)."""
    if not name_or_path:
        return name_or_path
    posix = name_or_path.replace("\\", "/")
    if posix.startswith(("/", "~", ".")) or posix.count("/") > 1 or ":" in posix:
        return posix.rstrip("/").rsplit("/", 1)[-1]
    return name_or_path
