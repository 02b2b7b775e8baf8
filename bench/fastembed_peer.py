"""fastembed on an exported bi-encoder's fp32 file, registered the way docs/peer-loaders.md shows: a custom model whose
graph already pools, projects and normalizes, so fastembed takes its `sentence_embedding` output as it is. fastembed
truncates at tokenizer_config.json's max_length / model_max_length, where st-export writes max_seq_length."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from fastembed import TextEmbedding
from fastembed.common.model_description import ModelSource, PoolingType


class FastembedModel:
    """fastembed's `TextEmbedding` over the folder's `model_file`, behind the `encode` call the bench worker makes."""

    def __init__(self, folder: str | Path, model_file: str, threads: int) -> None:
        folder = Path(folder).resolve()
        name = f"st-bench/{folder.as_posix().strip('/')}"  # one registration per folder in a process
        dimension = json.loads((folder / "st_runtime.json").read_text(encoding="utf-8"))["embedding_dimension"]
        TextEmbedding.add_custom_model(model=name, pooling=PoolingType.DISABLED, normalization=False,
                                       sources=ModelSource(hf=name), dim=dimension, model_file=model_file,
                                       output_name="sentence_embedding")
        self.model = TextEmbedding(model_name=name, specific_model_path=str(folder), threads=threads)

    def encode(self, texts: list[str], batch_size: int = 32, show_progress_bar: bool = False) -> np.ndarray:
        """Embeddings (n, dim) in input order; `show_progress_bar` is accepted and ignored."""
        return np.stack(list(self.model.embed(texts, batch_size=batch_size)))
