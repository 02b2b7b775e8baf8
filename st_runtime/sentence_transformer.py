"""`SentenceTransformer`: embeddings from an exported bi-encoder, with sentence-transformers' encode API."""

from __future__ import annotations

from typing import Literal

import numpy as np

from st_runtime.base import TextEncoder, check_texts, length_sorted_batches, progress
from st_runtime.quantization import PRECISIONS, Precision, quantize_embeddings
from st_runtime.similarity import similarity_functions

OutputValue = Literal["sentence_embedding", "token_embeddings"]


class SentenceTransformer(TextEncoder):
    """A bi-encoder exported by `st-export`; the whole module chain (transformer, pooling, dense,
    normalize) runs inside one ONNX graph, so `encode` only tokenizes, runs and reorders.

    Thread-safe: `encode` may be called from several threads on one instance.
    See `ExportedModel` for the constructor arguments.
    """

    task = "sentence-embedding"

    @property
    def similarity_fn_name(self) -> str:
        """"cosine", "dot", "euclidean" or "manhattan", as the source model declared (default cosine)."""
        return self.manifest.similarity_fn_name or "cosine"

    def get_sentence_embedding_dimension(self) -> int | None:
        """Size of the vectors `encode` returns."""
        return self.manifest.embedding_dimension

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
            truncate_dim: keep only the first dimensions (Matryoshka models).
            task: picks the route of a Router/Asym model ("query", "document", ...; see `routes`); only that
                route's graph runs. Models without a Router ignore it, as sentence-transformers does.

        Returns:
            (n, dim) array, or (dim,) for a single string input; see output_value for the other forms.

        Raises:
            InvalidInputError: inputs is None or holds non-strings.
            ValueError: unknown prompt_name, output_value, precision or task, a non-positive batch_size, or an
                output_value the model (route) does not produce.
        """
        if convert_to_tensor:
            raise ValueError("convert_to_tensor needs torch, which st_runtime does not use; the numpy result is "
                             "returned by default (torch.from_numpy converts it without a copy).")
        if output_value not in ("sentence_embedding", "token_embeddings", None):
            raise ValueError(f"output_value must be 'sentence_embedding', 'token_embeddings' or None, got {output_value!r}.")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
        texts, single = check_texts(inputs)
        prompt = self._resolve_prompt(prompt, prompt_name)
        graph = self.routes.graph(task)
        if output_value != "sentence_embedding" and "token_embeddings" not in graph.outputs:
            raise ValueError(f"This model{f' (route {graph.route_name!r})' if graph.route_name else ''} has no token "
                             "embeddings (e.g. StaticEmbedding pools inside the embedding bag); use "
                             "output_value='sentence_embedding'.")
        extra_feeds = {}
        if prompt:
            extra_feeds["prompt_length"] = np.array([graph.tokenizer.prompt_length(prompt)], dtype=np.int64)
            texts_in = [prompt + t for t in texts]
        else:
            texts_in = texts
        outputs = ["sentence_embedding"] if output_value == "sentence_embedding" else ["sentence_embedding",
                                                                                         "token_embeddings"]
        dimension = graph.route.embedding_dimension or self.get_sentence_embedding_dimension() or 0
        sentence = np.zeros((len(texts), dimension), dtype=np.float32)
        per_text: list[dict[str, np.ndarray]] = [{} for _ in texts] if output_value != "sentence_embedding" else []
        batches = list(length_sorted_batches([len(t) for t in texts], batch_size))
        with progress(len(batches), show_progress_bar) as bar:
            for index in batches:
                feeds = graph.tokenizer.encode([texts_in[i] for i in index])
                feeds.update(extra_feeds)
                result = graph.run(feeds, outputs)
                sentence[index] = result[0]
                if per_text:
                    for row, i in enumerate(index):
                        mask = feeds["attention_mask"][row]
                        length = int(np.flatnonzero(mask).max()) + 1 if mask.any() else 1
                        per_text[i] = {
                            "sentence_embedding": result[0][row],
                            "token_embeddings": result[1][row, :length],
                            "input_ids": feeds["input_ids"][row],
                            "attention_mask": mask,
                        }
                bar.update(1)

        if output_value == "token_embeddings":
            embeddings = [item["token_embeddings"] for item in per_text]
            return embeddings[0] if single else embeddings
        if output_value is None:
            return per_text[0] if single else per_text

        if truncate_dim is not None:
            sentence = sentence[:, :truncate_dim]
        if normalize_embeddings:
            sentence = sentence / np.maximum(np.linalg.norm(sentence, axis=1, keepdims=True), 1e-12)
        if precision != "float32" and len(sentence):
            sentence = quantize_embeddings(sentence, precision)
        if single:
            return sentence[0]
        return sentence if convert_to_numpy else list(sentence)
