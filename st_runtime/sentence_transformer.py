"""`SentenceTransformer`: embeddings from an exported bi-encoder, with sentence-transformers' encode API."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from st_runtime.base import TextEncoder, TruncateDim, check_texts, check_truncate_dim, tokenized_batches
from st_runtime.quantization import PRECISIONS, Precision, quantize_embeddings
from st_runtime.similarity import l2_normalize, similarity_functions

OutputValue = Literal["sentence_embedding", "token_embeddings"]


class SentenceTransformer(TruncateDim, TextEncoder):
    """A bi-encoder exported by `st-export`; the whole module chain (transformer, pooling, dense,
    normalize) runs inside one ONNX graph, so `encode` only tokenizes, runs and reorders.

    Thread-safe: `encode` may be called from several threads on one instance.
    See `ExportedModel` for the other constructor arguments.

    Args:
        truncate_dim: keep only the first `truncate_dim` dimensions of every sentence embedding (Matryoshka models);
            the default of `encode(truncate_dim=...)`, as in sentence-transformers. Settable later as
            `model.truncate_dim`.

    Raises:
        ValueError: truncate_dim is not an int from 1 to the embedding dimension.
    """

    task = "sentence-embedding"

    def __init__(self, model_name_or_path: str | Path, *, truncate_dim: int | None = None, **kwargs: Any) -> None:
        super().__init__(model_name_or_path, **kwargs)
        self.truncate_dim = truncate_dim

    @property
    def similarity_fn_name(self) -> str:
        """"cosine", "dot", "euclidean" or "manhattan", as the source model declared (default cosine)."""
        return self.manifest.similarity_fn_name or "cosine"

    def get_sentence_embedding_dimension(self) -> int | None:
        """Size of the vectors `encode` returns: the model's dimension, or truncate_dim when that is set."""
        dimension = self.manifest.embedding_dimension
        if self.truncate_dim is None:
            return dimension
        return self.truncate_dim if dimension is None else min(dimension, self.truncate_dim)

    get_embedding_dimension = get_sentence_embedding_dimension

    def similarity(self, embeddings1: np.ndarray, embeddings2: np.ndarray) -> np.ndarray:
        """Matrix of the model's similarity between every row of embeddings1 and every row of embeddings2."""
        return similarity_functions(self.similarity_fn_name)[0](embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: np.ndarray, embeddings2: np.ndarray) -> np.ndarray:
        """The model's similarity between embeddings1[i] and embeddings2[i]."""
        return similarity_functions(self.similarity_fn_name)[1](embeddings1, embeddings2)

    def encode(
        self,
        inputs: str | list[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        output_value: OutputValue | None = "sentence_embedding",
        precision: Precision = "float32",
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        normalize_embeddings: bool = False,
        truncate_dim: int | None = None,
        task: str | None = None,
        pool: Any = None,
        chunk_size: int | None = None,
        processes: int | None = None,
    ) -> np.ndarray | list[np.ndarray] | list[dict[str, np.ndarray]]:
        """Embed one text or a list of texts.

        Args:
            inputs: a string or a list of strings.
            prompt_name: key of `prompts` whose text is prepended to every input.
            prompt: text prepended to every input (wins over prompt_name).
            batch_size: texts per graph run; texts are sorted by length first, results come back in input order.
            show_progress_bar: show a progress bar over batches.
            output_value: "sentence_embedding", "token_embeddings" (one (tokens, dim) array per text, padding
                removed) or None (a dict of all outputs per text).
            precision: "float32", "int8", "uint8", "binary" or "ubinary" (as sentence-transformers' quantize).
            convert_to_numpy: one (n, dim) array; False gives a list of 1-D arrays.
            convert_to_tensor: not available without torch; raises.
            normalize_embeddings: scale each sentence embedding to unit length.
            truncate_dim: keep only the first dimensions (Matryoshka models); default the model's `truncate_dim`.
            task: picks the route of a Router/Asym model ("query", "document", ...; see `routes`); only that
                route's graph runs. Models without a Router ignore it, as sentence-transformers does.
            pool: an EncodePool from `start_multi_process_pool()` (`start_pool()`): the texts are encoded by its
                worker processes in token-budget batches (sentence embeddings only).
            chunk_size: with a pool, texts per job in input order instead of token-budget batches.
            processes: encode on this many worker processes, started and stopped for this call.

        Returns:
            (n, dim) array, or (dim,) for a single string input; see output_value for the other forms.

        Raises:
            InvalidInputError: inputs is None or holds non-strings.
            ValueError: unknown prompt_name, output_value, precision or task, a non-positive batch_size, a
                truncate_dim that is not an int from 1 to the embedding dimension, an output_value the model (route)
                does not produce, or int8/uint8 precision for a single text (no ranges to calibrate on).
        """
        if pool is not None or processes is not None:
            from st_runtime.pool import pool_encode

            return pool_encode(self, inputs, pool=pool, processes=processes, chunk_size=chunk_size,
                               prompt_name=prompt_name, prompt=prompt, batch_size=batch_size, output_value=output_value,
                               precision=precision, convert_to_numpy=convert_to_numpy,
                               convert_to_tensor=convert_to_tensor, normalize_embeddings=normalize_embeddings,
                               truncate_dim=truncate_dim, task=task)
        if convert_to_tensor:
            raise ValueError("convert_to_tensor needs torch, which st_runtime does not use; the numpy result is "
                             "returned by default (torch.from_numpy converts it without a copy).")
        if output_value not in ("sentence_embedding", "token_embeddings", None):
            raise ValueError(f"output_value must be 'sentence_embedding', 'token_embeddings' or None, got {output_value!r}.")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
        texts, single = check_texts(inputs)
        texts_in, prompt = self._prompted(texts, prompt, prompt_name)
        graph = self.routes.graph(task)
        if output_value != "sentence_embedding" and "token_embeddings" not in graph.outputs:
            raise ValueError(f"This model{f' (route {graph.route_name!r})' if graph.route_name else ''} has no token "
                             "embeddings (e.g. StaticEmbedding pools inside the embedding bag); use "
                             "output_value='sentence_embedding'.")
        extra_feeds = {}
        if prompt:
            extra_feeds["prompt_length"] = np.array([graph.tokenizer.prompt_length(prompt)], dtype=np.int64)
        outputs = ["sentence_embedding"] if output_value == "sentence_embedding" else ["sentence_embedding",
                                                                                         "token_embeddings"]
        dimension = graph.route.embedding_dimension or self.manifest.embedding_dimension or 0
        truncate_dim = check_truncate_dim(self.truncate_dim if truncate_dim is None else truncate_dim, dimension or None)
        sentence = np.zeros((len(texts), dimension), dtype=np.float32)
        per_text: list[dict[str, np.ndarray]] = [{} for _ in texts] if output_value != "sentence_embedding" else []
        for index, feeds in tokenized_batches(texts_in, graph.tokenizer, batch_size, show_progress_bar,
                                               graph.backend.batch_tokens):
            feeds.update(extra_feeds)
            result = graph.run(feeds, outputs)
            sentence[index] = result[0]
            if per_text:
                for row, i in enumerate(index):
                    mask = feeds["attention_mask"][row]
                    length = int(np.flatnonzero(mask).max()) + 1 if mask.any() else 1
                    per_text[i] = {
                        "sentence_embedding": result[0][row, :truncate_dim],
                        "token_embeddings": result[1][row, :length],
                        "input_ids": feeds["input_ids"][row],
                        "attention_mask": mask,
                    }

        if output_value == "token_embeddings":
            embeddings = [item["token_embeddings"] for item in per_text]
            return embeddings[0] if single else embeddings
        if output_value is None:
            return per_text[0] if single else per_text

        if truncate_dim is not None:
            sentence = sentence[:, :truncate_dim]
        if normalize_embeddings:
            sentence = l2_normalize(sentence)
        if precision != "float32" and len(sentence):
            sentence = quantize_embeddings(sentence, precision)
        if single:
            return sentence[0]
        return sentence if convert_to_numpy else list(sentence)

    def start_multi_process_pool(self, target_devices: list[str] | None = None, *, processes: int | None = None,
                                 threads_per_process: int | None = None) -> Any:
        """Start worker processes that encode with this model's folder and variant, as sentence-transformers'
        `start_multi_process_pool`; pass the result to `encode(..., pool=pool)` and stop it with
        `stop_multi_process_pool(pool)` (or `pool.close()`, or use it as a context manager).

        Args:
            target_devices: ["cpu"] * N starts N workers (sentence-transformers' form); GPU workers are chosen with
                the model's providers instead.
            processes: number of workers (default: one per core); wins over target_devices.
            threads_per_process: threads of each worker's session (default: cores // processes).

        Raises:
            ValueError: a target device other than "cpu".
        """
        from st_runtime.pool import start_pool

        if processes is None and target_devices is not None:
            if any(str(d).split(":")[0] != "cpu" for d in target_devices):
                raise ValueError(f"target_devices must be 'cpu' entries, got {target_devices}; workers run on the "
                                 "model's providers (load it with providers='cuda' for GPU workers).")
            processes = len(target_devices)
        return start_pool(self, processes=processes, threads_per_process=threads_per_process)

    start_pool = start_multi_process_pool

    @staticmethod
    def stop_multi_process_pool(pool: Any) -> None:
        """Stop a pool from `start_multi_process_pool`."""
        pool.close()

    stop_pool = stop_multi_process_pool
