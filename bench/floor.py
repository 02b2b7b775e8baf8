"""The zero-overhead floor of st-bench: what a user writes by hand around an exported bi-encoder's fp32 graph with
bare onnxruntime + tokenizers + numpy, without st_runtime. The tokenizer file, max_seq_length and the pad token are
read from the folder's st_runtime.json as plain JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


class BareLoop:
    """One onnxruntime session and one tokenizer: length-sorted batches, mean pooling with the attention mask and L2
    normalization in numpy (an all-MiniLM-style Transformer + Pooling("mean") + Normalize model)."""

    def __init__(self, folder: str | Path, model_file: str, threads: int) -> None:
        folder = Path(folder)
        settings = json.loads((folder / "st_runtime.json").read_text(encoding="utf-8"))["tokenizer"]
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(str(folder / model_file), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        outputs = {o.name for o in self.session.get_outputs()}
        self.output_name = "token_embeddings" if "token_embeddings" in outputs else "last_hidden_state"
        self.tokenizer = Tokenizer.from_file(str(folder / settings["file"]))
        if settings["max_seq_length"] is not None:
            self.tokenizer.enable_truncation(max_length=settings["max_seq_length"])
        self.tokenizer.enable_padding(pad_id=settings["pad_token_id"], pad_token=settings["pad_token"])

    def encode(self, texts: list[str], batch_size: int = 32, show_progress_bar: bool = False) -> np.ndarray:
        """Unit-length mean-pooled embeddings (n, dim) in input order; `show_progress_bar` is accepted and ignored."""
        order = np.argsort([-len(t) for t in texts], kind="stable")
        pooled = []
        for start in range(0, len(texts), batch_size):
            encodings = self.tokenizer.encode_batch([texts[i] for i in order[start:start + batch_size]])
            feeds = {"input_ids": np.array([e.ids for e in encodings], np.int64),
                     "attention_mask": np.array([e.attention_mask for e in encodings], np.int64),
                     "token_type_ids": np.array([e.type_ids for e in encodings], np.int64)}
            tokens = self.session.run([self.output_name], {name: feeds[name] for name in self.input_names})[0]
            mask = feeds["attention_mask"][:, :, None].astype(np.float32)
            pooled.append((tokens * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9))
        embeddings = np.concatenate(pooled)
        embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        return embeddings[np.argsort(order)]
