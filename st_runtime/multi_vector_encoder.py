"""`MultiVectorEncoder`: ColBERT-style (late interaction) token embeddings from an exported multi-vector encoder, with
sentence-transformers' API.

One graph runs the Transformer and its token-level heads (Dense, Normalize) for queries and documents alike. What
differs per task happens here, from the manifest's task_config, exactly as sentence-transformers' Transformer and
MultiVectorMask do it: the truncation length of the task, query expansion (queries padded to a fixed width with the
mask token, whose positions are scored), and the skiplist (tokens such as punctuation dropped from documents).
`encode` returns each text's scored rows (truncated to `truncate_dim` dimensions and re-normalized when one is set),
`similarity` scores them with MaxSim.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import numpy as np

from st_runtime.base import (
    TextEncoder,
    TruncateDim,
    check_positive_int,
    check_text,
    check_texts,
    check_truncate_dim,
    tokenized_batches,
)
from st_runtime.errors import InvalidInputError, ManifestError
from st_runtime.similarity import l2_normalize
from st_runtime.tokenizer import Feeds, TextTokenizer

EMPTY_DOCUMENT_SCORE = -1e9  # what sentence-transformers' maxsim gives a document without any scored token
SCORE_BUDGET = 1 << 25  # float32 elements of one (query tokens x document tokens) similarity block (128 MiB)


class MultiVectorEncoder(TruncateDim, TextEncoder):
    """A multi-vector (ColBERT / late-interaction) encoder exported by `st-export`.

    Thread-safe: `encode` may be called from several threads on one instance.
    See `ExportedModel` for the other constructor arguments.

    Args:
        truncate_dim: keep only the first truncate_dim dimensions of every token vector and L2-normalize it, as
            sentence-transformers' MultiVectorEncoder(truncate_dim=...) does; None: the value the model was saved
            with (the manifest's task_config "truncate_dim"), else the full dimension. `encode(truncate_dim=...)`
            overrides it per call.

    Raises:
        InvalidInputError / ValueError: truncate_dim is not a positive int, or is above the model's dimension.
        ManifestError: the folder's saved truncate_dim is malformed.
    """

    task = "multi-vector-embedding"

    def __init__(self, model_name_or_path: str | Path, truncate_dim: int | None = None, **kwargs: Any) -> None:
        super().__init__(model_name_or_path, **kwargs)
        self._task_tokenizers: dict[int, TextTokenizer] = {}
        self._lock = threading.Lock()
        if truncate_dim is None:
            try:
                truncate_dim = check_truncate_dim(self.manifest.task_config.truncate_dim,
                                                  self.manifest.embedding_dimension)
            except ValueError as exc:
                raise ManifestError(f"st_runtime.json task_config.truncate_dim is not usable: {exc} Re-export the "
                                    "model.") from None
        self.truncate_dim = truncate_dim

    @property
    def similarity_fn_name(self) -> str:
        """"maxsim" (default) or "meanmaxsim" (MaxSim divided by the query's token count), as the source model set."""
        return self.manifest.similarity_fn_name or "maxsim"

    def get_embedding_dimension(self) -> int:
        """Size of each token vector `encode` returns: truncate_dim when set, else the model's dimension."""
        return self.truncate_dim or int(self.manifest.embedding_dimension)

    @property
    def query_length(self) -> int | None:
        """Queries are truncated at this many tokens (None: max_seq_length); query expansion may override it."""
        return self.manifest.task_config.query_length

    @property
    def document_length(self) -> int | None:
        """Documents are truncated at this many tokens (None: max_seq_length)."""
        return self.manifest.task_config.document_length

    @property
    def query_expansion(self) -> dict[str, Any] | None:
        """{"strategy", "attend", "length", "token_id"} when queries are expanded (ColBERT), else None."""
        expansion = self.manifest.task_config.query_expansion
        return expansion.to_dict() if expansion is not None else None

    def encode(
        self,
        inputs: str | list[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        normalize_embeddings: bool = False,
        task: str | None = None,
        truncate_dim: int | None = None,
    ) -> list[np.ndarray] | np.ndarray:
        """Token embeddings of one text or a list of texts: the rows sentence-transformers keeps, in order.

        Prefer `encode_query` / `encode_document`, which set the task (and the model's query / document prompt).

        Args:
            inputs: a string or a list of strings.
            prompt_name: key of `prompts` whose text is prepended to every input.
            prompt: text prepended to every input (wins over prompt_name).
            batch_size: texts per graph run; texts are sorted by length first, results come back in input order.
            show_progress_bar: show a progress bar over batches.
            normalize_embeddings: L2-normalize each kept token vector (for models without a Normalize module).
            task: "query" (query length, expansion, query scoring), "document" or None (treated as a document, with
                the model's max_seq_length unless document_length is set: as sentence-transformers, only
                task="document" applies document_length).
            truncate_dim: keep the first truncate_dim dimensions of each vector and L2-normalize it (None: the
                model's `truncate_dim`, else the full vectors).

        Returns:
            A list of float32 arrays of shape (n_tokens_i, dim), or one such array for a single string input.

        Raises:
            InvalidInputError: inputs is None or holds non-strings.
            ValueError: unknown prompt_name, non-positive batch_size, truncate_dim not from 1 to the dimension.
        """
        dim = (check_truncate_dim(truncate_dim, self.manifest.embedding_dimension) if truncate_dim is not None
               else self.truncate_dim)
        texts, single = check_texts(inputs)
        texts_in, _ = self._prompted(texts, prompt, prompt_name)
        if task is not None and not isinstance(task, str):
            raise InvalidInputError(f"task must be a str or None, got {type(task).__name__}.")
        tokenizer = self._tokenizer_for(task)
        graph = self.routes.graph(None)
        results: list[np.ndarray] = [np.zeros((0, dim or self.get_embedding_dimension()), np.float32)] * len(texts)
        for index, feeds in tokenized_batches(texts_in, tokenizer, batch_size, show_progress_bar,
                                               graph.backend.batch_tokens):
            feeds, scored = self.scoring_inputs(feeds, task)
            tokens = graph.run(feeds, ["token_embeddings"])[0]
            for row, i in enumerate(index):
                kept = np.ascontiguousarray(tokens[row][scored[row]], dtype=np.float32)
                if normalize_embeddings:
                    kept = l2_normalize(kept)
                if dim is not None:  # as sentence-transformers: cut, then L2-normalize
                    kept = l2_normalize(kept[:, :dim])
                results[i] = kept
        return results[0] if single else results

    def scoring_inputs(self, feeds: Feeds, task: str | None) -> tuple[Feeds, np.ndarray]:
        """Apply query expansion to tokenized inputs and compute which rows are scored, as sentence-transformers'
        Transformer.preprocess and MultiVectorMask do.

        Returns:
            (the graph's feeds, a (batch, seq) bool array of the rows `encode` keeps).
        """
        config = self.manifest.task_config
        ids, attention = feeds["input_ids"], feeds["attention_mask"]
        type_ids = feeds.get("token_type_ids")
        expansion = config.query_expansion if task == "query" else None
        expansion_positions = None
        if expansion is not None:
            floor, fixed = expansion.length, expansion.strategy == "fixed"
            missing = floor - ids.shape[1]
            if missing > 0:
                # "fixed" pads to the length as the tokenizer pads (its side, its pad id); "min" widens on the right
                # with zeros. Either way the new positions become expansion positions below.
                left = fixed and self.manifest.tokenizer.padding_side == "left"
                width = ((0, 0), (missing, 0)) if left else ((0, 0), (0, missing))
                ids = np.pad(ids, width, constant_values=self.manifest.tokenizer.pad_token_id if fixed else 0)
                attention = np.pad(attention, width)
                type_ids = np.pad(type_ids, width) if type_ids is not None else None
            expansion_positions = (attention == 0) & (np.arange(ids.shape[1]) < floor)
            if expansion.token_id is not None:
                ids = np.where(expansion_positions, np.int64(expansion.token_id), ids)
            if expansion.attend:
                attention = np.where(expansion_positions, 1, attention).astype(np.int64)
        scored = attention.astype(bool)
        if config.has_mask_module:
            if expansion_positions is not None:
                scored |= expansion_positions
            if config.skiplist_ids and (task or "document") in config.skiplist_tasks:
                scored &= ~np.isin(ids, config.skiplist_ids)
            if config.keep_only_token_ids and task != "query":
                scored &= np.isin(ids, config.keep_only_token_ids)
        new_feeds = {"input_ids": ids, "attention_mask": attention}
        if type_ids is not None:
            new_feeds["token_type_ids"] = type_ids
        return new_feeds, scored

    def _tokenizer_for(self, task: str | None) -> TextTokenizer:
        """The tokenizer truncating at the task's length: query/document_length, the query expansion length
        ("fixed": the length; "min": at least it), else the model's (settable) max_seq_length."""
        config = self.manifest.task_config
        length = config.query_length if task == "query" else config.document_length if task == "document" else None
        expansion = config.query_expansion if task == "query" else None
        if expansion is not None:
            floor = expansion.length
            length = floor if expansion.strategy == "fixed" else (max(length, floor) if length is not None else None)
        if length is None:
            return self.routes.graph(None).tokenizer
        with self._lock:
            if length not in self._task_tokenizers:
                spec = dataclasses.replace(self.manifest.tokenizer, max_seq_length=int(length))
                self._task_tokenizers[length] = TextTokenizer(self.folder, spec)
            return self._task_tokenizers[length]

    def similarity(self, embeddings1: Any, embeddings2: Any) -> np.ndarray:
        """(n1, n2) float32 matrix of the model's similarity (MaxSim or MeanMaxSim) of queries against documents.

        Args:
            embeddings1: query embeddings: a list of (n_tokens_i, dim) arrays (what `encode` returns), one 2-D array
                (one query), or a padded 3-D array whose all-zero rows are padding.
            embeddings2: document embeddings, in the same forms.
        """
        return maxsim(embeddings1, embeddings2, length_normalize=self.similarity_fn_name == "meanmaxsim")

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> np.ndarray:
        """(n,) float32: the model's similarity of embeddings1[i] against embeddings2[i].

        Raises:
            ValueError: the two sides hold different numbers of items.
        """
        queries, documents = as_multi_vectors(embeddings1), as_multi_vectors(embeddings2)
        if len(queries) != len(documents):
            raise ValueError(f"embeddings1 and embeddings2 must hold the same number of items to score as pairs, got "
                             f"{len(queries)} and {len(documents)}.")
        normalize = self.similarity_fn_name == "meanmaxsim"
        return np.array([maxsim([q], [d], length_normalize=normalize)[0, 0] for q, d in zip(queries, documents, strict=True)],
                        dtype=np.float32)

    def rank(
        self,
        query: str,
        documents: list[str],
        top_k: int | None = None,
        return_documents: bool = False,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> list[dict[str, Any]]:
        """Encode `query` (encode_query) and `documents` (encode_document) and return the documents best first.

        Returns:
            [{"corpus_id": index in documents, "score": float, ["text": document]}, ...] sorted by score, highest
            first (ties keep document order); at most top_k entries (all when None).

        Raises:
            InvalidInputError: query is not a string, documents is not a list of strings, top_k is not None or a
                non-negative int.
        """
        check_text(query, "query")
        if isinstance(documents, str) or documents is None:
            raise InvalidInputError(f"documents must be a list of strings, got {type(documents).__name__}; wrap a "
                                    "single document in a list.")
        top_k = check_positive_int(top_k, "top_k", allow_none=True, allow_zero=True)
        query_embedding = self.encode_query([query], batch_size=batch_size, show_progress_bar=show_progress_bar)
        document_embeddings = self.encode_document(list(documents), batch_size=batch_size,
                                                   show_progress_bar=show_progress_bar)
        scores = self.similarity(query_embedding, document_embeddings)[0]
        order = np.argsort(-scores, kind="stable")[:top_k]
        results = []
        for j in order.tolist():
            entry: dict[str, Any] = {"corpus_id": j, "score": float(scores[j])}
            if return_documents:
                entry["text"] = documents[j]
            results.append(entry)
        return results


def as_multi_vectors(embeddings: Any) -> list[np.ndarray]:
    """A list of (n_tokens_i, dim) float32 arrays from a list of 2-D arrays, one 2-D array (one item) or a padded
    3-D array (all-zero rows are padding, as sentence-transformers reads them).

    Raises:
        ValueError: anything else.
    """
    if not isinstance(embeddings, (list, tuple)) and hasattr(embeddings, "__array__"):  # numpy, torch, ...
        array = np.asarray(embeddings)
        if array.ndim == 2:
            return [array.astype(np.float32, copy=False)]
        if array.ndim == 3:
            return [item[np.any(item != 0, axis=1)].astype(np.float32, copy=False) for item in array]
        raise ValueError(f"Multi-vector embeddings must be 2-D (one item) or 3-D (padded), got shape {array.shape}.")
    if isinstance(embeddings, (list, tuple)):
        items = [np.asarray(item, dtype=np.float32) for item in embeddings]
        for index, item in enumerate(items):
            if item.ndim != 2:
                raise ValueError(f"Item {index} of the multi-vector embeddings has shape {item.shape}; each item must "
                                 "be a (n_tokens, dim) array.")
        return items
    raise ValueError(f"Multi-vector embeddings must be a list of (n_tokens, dim) arrays, got {type(embeddings).__name__}.")


def maxsim(queries: Any, documents: Any, *, length_normalize: bool = False) -> np.ndarray:
    """MaxSim of every query against every document: sum over the query's tokens of the best dot product with any of
    the document's tokens, as sentence-transformers' `maxsim` computes it (float32; a document without tokens scores
    -1e9; `length_normalize` divides by the query's token count: MeanMaxSim).

    Returns:
        (n_queries, n_documents) float32 array.
    """
    queries, documents = as_multi_vectors(queries), as_multi_vectors(documents)
    scores = np.zeros((len(queries), len(documents)), dtype=np.float32)
    query_rows = [q for q in queries if len(q)]
    if not query_rows or not documents:
        scores[:, [j for j, d in enumerate(documents) if not len(d)]] = EMPTY_DOCUMENT_SCORE
        return _normalized(scores, queries, length_normalize)
    stacked = np.concatenate(query_rows)
    query_starts = np.cumsum([0] + [len(q) for q in query_rows])[:-1]
    with_tokens = [j for j, q in enumerate(queries) if len(q)]
    nonempty = [j for j, d in enumerate(documents) if len(d)]
    per_chunk = max(1, SCORE_BUDGET // max(len(stacked), 1))  # document tokens per block
    start = 0
    while start < len(nonempty):
        chunk, tokens = [], 0
        while start < len(nonempty) and (not chunk or tokens + len(documents[nonempty[start]]) <= per_chunk):
            chunk.append(nonempty[start])
            tokens += len(documents[nonempty[start]])
            start += 1
        block = np.concatenate([documents[j] for j in chunk])
        document_starts = np.cumsum([0] + [len(documents[j]) for j in chunk])[:-1]
        best = np.maximum.reduceat(stacked @ block.T, document_starts, axis=1)  # (query tokens, documents)
        scores[np.ix_(with_tokens, chunk)] = np.add.reduceat(best, query_starts, axis=0)
    scores[:, [j for j, d in enumerate(documents) if not len(d)]] = EMPTY_DOCUMENT_SCORE
    return _normalized(scores, queries, length_normalize)


def _normalized(scores: np.ndarray, queries: list[np.ndarray], length_normalize: bool) -> np.ndarray:
    if length_normalize:
        scores = scores / np.array([max(len(q), 1) for q in queries], dtype=np.float32)[:, None]
    return scores
