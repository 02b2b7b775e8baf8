"""`SparseEncoder`: SPLADE sparse embeddings from an exported sparse encoder, with sentence-transformers' API.

The graph returns one vocabulary-size weight vector per text for each batch; `encode` keeps only the non-zero
weights, so a whole corpus is never held as a dense (n, vocab) array unless asked for. Inference-free SPLADE (a Router
with a SparseStaticEmbedding query route) runs a graph per route: `encode_query` runs only the static token weights,
never the transformer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from st_runtime.base import TextEncoder, check_positive_int, check_texts, tokenized_batches
from st_runtime.manifest import folder_file
from st_runtime.sparse import SparseEmbeddings, as_format, intersection, keep_top_k, scipy_sparse, sparse_similarity, to_csr

SparseFormat = Literal["auto", "scipy", "numpy"]

# A SPLADE graph makes the MLM logits, a float32 (rows, tokens, vocab) tensor, before pooling them over the tokens, and
# onnxruntime's arena holds about four times that at its peak (32 texts of 512 tokens: 2 GB of logits, 8 GB of RSS).
# A batch therefore runs in slices of rows whose logits stay under this size; see docs/sparse-encoder.md for the
# measurements behind it.
LOGITS_BUDGET_BYTES = 64 * 2**20


class SparseEncoder(TextEncoder):
    """A sparse encoder exported by `st-export`: SPLADE (the MLM transformer and SpladePooling inside one ONNX graph),
    SparseStaticEmbedding, or a Router of them (inference-free SPLADE: `encode_query` runs the static query graph,
    `encode_document` the SPLADE one), so `encode` only tokenizes, runs and keeps the non-zero weights.

    Thread-safe: `encode` may be called from several threads on one instance.
    See `ExportedModel` for the constructor arguments; max_active_dims overrides the exported model's.
    """

    task = "sparse-embedding"

    def __init__(self, model_name_or_path: str | Path, *, max_active_dims: int | None = None, **kwargs: Any) -> None:
        super().__init__(model_name_or_path, **kwargs)
        if max_active_dims is None:
            max_active_dims = self.manifest.task_config.max_active_dims
        self.max_active_dims = _check_max_active_dims(max_active_dims)
        self._vocabulary: list[str | None] | None = None

    @property
    def similarity_fn_name(self) -> str:
        """"dot" (the default for sparse encoders), "cosine", "euclidean" or "manhattan", as the source model declared."""
        return self.manifest.similarity_fn_name or "dot"

    def get_embedding_dimension(self) -> int:
        """Size of the vectors `encode` returns: the vocabulary size."""
        return self.manifest.task_config.vocab_size

    get_sentence_embedding_dimension = get_embedding_dimension

    def similarity(self, embeddings1: Any, embeddings2: Any) -> np.ndarray:
        """(n1, n2) matrix of the model's similarity between the rows of two sparse (or dense) embeddings."""
        return sparse_similarity(self.similarity_fn_name, embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> np.ndarray:
        """(n,) the model's similarity between embeddings1[i] and embeddings2[i]."""
        return sparse_similarity(self.similarity_fn_name, embeddings1, embeddings2, pairwise=True)

    def encode(
        self,
        inputs: str | list[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        convert_to_tensor: bool = True,
        convert_to_sparse_tensor: bool = True,
        max_active_dims: int | None = None,
        sparse_format: SparseFormat = "auto",
        task: str | None = None,
    ) -> Any:
        """Sparse embeddings of one text or a list of texts.

        Args:
            inputs: a string or a list of strings.
            prompt_name: key of `prompts` whose text is prepended to every input.
            prompt: text prepended to every input (wins over prompt_name).
            batch_size: texts per graph run; texts are sorted by length first, results come back in input order.
            show_progress_bar: show a progress bar over batches.
            convert_to_tensor: one (n, vocab) matrix; False gives a list of 1-D rows.
            convert_to_sparse_tensor: sparse output (default); False gives a dense float32 numpy array (n, vocab).
            max_active_dims: keep only this many largest weights per text (default: the model's, usually all).
            sparse_format: "scipy" (scipy.sparse csr_array), "numpy" (st_runtime.SparseEmbeddings) or "auto" (scipy
                when scipy >= 1.14 is importable, else numpy).
            task: picks the route of a Router model ("query", "document"; see `routes`); models without a Router
                ignore it, as sentence-transformers does.

        Returns:
            (n, vocab) sparse matrix, or 1-D (vocab,) for a single string input; see the arguments for other forms.

        Raises:
            InvalidInputError: inputs is None or holds non-strings.
            ValueError: unknown prompt_name, sparse_format or task, non-positive batch_size or max_active_dims.
            ImportError: sparse_format="scipy" without scipy >= 1.14.
        """
        if sparse_format not in ("auto", "scipy", "numpy"):
            raise ValueError(f"sparse_format must be 'auto', 'scipy' or 'numpy', got {sparse_format!r}.")
        sparse = scipy_sparse(required=sparse_format == "scipy") if sparse_format != "numpy" else None
        texts, single = check_texts(inputs)
        top_k = _check_max_active_dims(max_active_dims) if max_active_dims is not None else self.max_active_dims
        texts_in, _ = self._prompted(texts, prompt, prompt_name)
        graph = self.routes.graph(task)
        dim = graph.route.task_config.vocab_size  # a route's may differ from the model's
        row_indices: list[np.ndarray] = [np.zeros(0, np.int64)] * len(texts)
        row_values: list[np.ndarray] = [np.zeros(0, np.float32)] * len(texts)
        for index, feeds in tokenized_batches(texts_in, graph.tokenizer, batch_size, show_progress_bar,
                                               graph.backend.batch_tokens):
            scores = run_in_slices(graph, feeds, dim if graph.route.task_config.splade is not None else 0)
            scores = keep_top_k(scores, top_k)
            for row, i in enumerate(index):
                (nonzero,) = np.nonzero(scores[row])
                row_indices[i], row_values[i] = nonzero.astype(np.int64), scores[row, nonzero]

        indptr = np.concatenate([[0], np.cumsum([len(v) for v in row_values])]).astype(np.int64)
        csr = SparseEmbeddings(indptr, np.concatenate([np.zeros(0, np.int64), *row_indices]),
                               np.concatenate([np.zeros(0, np.float32), *row_values]), (len(texts), dim))
        if not convert_to_sparse_tensor:
            dense = csr.toarray()
            return dense[0] if single else (dense if convert_to_tensor else list(dense))
        if single:
            return as_format(csr[0], sparse)
        if not convert_to_tensor:
            return [as_format(csr[i], sparse) for i in range(len(csr))]
        return as_format(csr, sparse)

    def decode(self, embeddings: Any, top_k: int | None = None) -> list[tuple[str, float]] | list[list[tuple[str, float]]]:
        """(token, weight) pairs of sparse embeddings, largest weight first, as sentence-transformers' decode.

        Args:
            embeddings: what `encode` returns (1-D or 2-D; scipy, SparseEmbeddings or dense), or a list of rows.
            top_k: at most this many tokens per embedding (default: every non-zero weight).

        Returns:
            A list of (token, weight) for a 1-D embedding; a list of such lists for a 2-D one.

        Raises:
            ValueError: top_k is not a positive int (InvalidInputError), or the embeddings are not 1-D/2-D or wider
                than the vocabulary.
        """
        top_k = check_positive_int(top_k, "top_k", allow_none=True)
        csr, was_1d = to_csr(embeddings)
        vocabulary = self._token_strings()
        if csr.shape[1] > len(vocabulary):
            raise ValueError(f"The embeddings have {csr.shape[1]} dimensions; this model's vocabulary has {len(vocabulary)}.")
        results = []
        for i in range(len(csr)):
            indices, values = csr.row(i)
            order = np.argsort(-values, kind="stable")[:top_k]
            results.append([(vocabulary[t], w) for t, w in zip(indices[order].tolist(), values[order].tolist(), strict=True)])
        return results[0] if was_1d else results

    @staticmethod
    def intersection(embeddings_1: Any, embeddings_2: Any) -> Any:
        """The dimensions active in both embeddings, weighted by the product of their weights, as
        sentence-transformers' SparseEncoder.intersection (useful with `decode` to see which tokens matched).

        Args:
            embeddings_1: one embedding (1-D): scipy sparse, SparseEmbeddings or dense.
            embeddings_2: one embedding (1-D) or a batch (2-D) of the same vocabulary size.

        Returns:
            Sparse, shaped like embeddings_2: a scipy csr_array when either input is scipy sparse, else
            st_runtime.SparseEmbeddings.

        Raises:
            ValueError: embeddings_1 is not 1-D, embeddings_2 not 1-D/2-D, or their vocabulary sizes differ.
        """
        return intersection(embeddings_1, embeddings_2)

    @staticmethod
    def sparsity(embeddings: Any) -> dict[str, float]:
        """Mean number of non-zero dimensions per embedding ("active_dims") and mean "sparsity_ratio" (1 - active/dim).

        Raises:
            ValueError: the embeddings are not 1-D or 2-D.
        """
        csr, _ = to_csr(embeddings)
        rows, cols = csr.shape
        if rows == 0 or cols == 0:
            return {"active_dims": 0.0, "sparsity_ratio": 1.0}
        active = float(np.diff(csr.indptr).mean())
        return {"active_dims": active, "sparsity_ratio": 1.0 - active / cols}

    def _token_strings(self) -> list[str | None]:
        """Token string of every vocabulary id (None where the tokenizer has none), built on first use."""
        if self._vocabulary is None:
            from tokenizers import Tokenizer

            path = folder_file(self.folder, self.manifest.tokenizer.file, entry="tokenizer.file")
            vocab = Tokenizer.from_file(str(path)).get_vocab(with_added_tokens=True)
            strings: list[str | None] = [None] * max(self.get_embedding_dimension(), max(vocab.values(), default=-1) + 1)
            for token, token_id in vocab.items():
                strings[token_id] = token
            self._vocabulary = strings
        return self._vocabulary



def run_in_slices(graph: Any, feeds: dict[str, np.ndarray], vocab_size: int,
                  budget: int | None = None) -> np.ndarray:
    """Run `graph` on a tokenized batch in slices of rows whose (rows, tokens, vocab_size) float32 logits stay under
    `budget` bytes (default LOGITS_BUDGET_BYTES; vocab_size 0: in one run). Each row keeps the batch's padded length,
    so every row gets exactly the inputs, and the output, of one run over the whole batch."""
    rows, tokens = feeds["input_ids"].shape
    budget = LOGITS_BUDGET_BYTES if budget is None else budget
    step = rows if vocab_size <= 0 else max(1, budget // (tokens * vocab_size * 4 or 1))
    if step >= rows:
        return graph.run(feeds, ["sentence_embedding"])[0]
    return np.concatenate([graph.run({name: value[start : start + step] for name, value in feeds.items()},
                                     ["sentence_embedding"])[0] for start in range(0, rows, step)])


def _check_max_active_dims(value: int | None) -> int | None:
    return check_positive_int(value, "max_active_dims", allow_none=True)
