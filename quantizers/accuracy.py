"""How close a variant stays to the fp32 graph, per model kind, on held-out texts: each kind's outputs here, compared
with the kind's report from st_runtime.metrics (numpy only, shared with st-bench and the zoo). The headline figure
each kind is gated on is `score`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import st_runtime
from st_runtime.manifest import Manifest, Variant
from st_runtime.metrics import KIND_REPORTS


def _embed(model: Any, texts: list[str]) -> np.ndarray:
    return model.encode(texts, batch_size=16, show_progress_bar=False)


def _rank(model: Any, texts: list[str]) -> np.ndarray:
    queries = texts[: len(texts) // 4]
    pairs = [(q, d) for i, q in enumerate(queries) for d in texts[len(queries) + 3 * i : len(queries) + 3 * i + 3]]
    return np.asarray(model.predict(pairs, batch_size=16, show_progress_bar=False)).ravel()


def _maxsim(model: Any, texts: list[str]) -> np.ndarray:
    """MaxSim of the first quarter of the texts (as queries) against the rest (as documents), flattened."""
    queries = texts[: len(texts) // 4]
    query_embeddings = model.encode_query(queries, batch_size=16, show_progress_bar=False)
    document_embeddings = model.encode_document(texts[len(queries):], batch_size=16, show_progress_bar=False)
    return np.asarray(model.similarity(query_embeddings, document_embeddings)).ravel()


def _sparse(model: Any, texts: list[str]) -> np.ndarray:
    embeddings = model.encode(texts, batch_size=16, show_progress_bar=False)
    return embeddings.toarray() if hasattr(embeddings, "toarray") else np.asarray(embeddings)


# task -> what a variant is compared on: the model run on texts (the class comes from st_runtime.load)
KIND_OUTPUTS: dict[str, Callable[[Any, list[str]], np.ndarray]] = {
    "sentence-embedding": _embed,
    "text-ranking": _rank,
    "sparse-embedding": _sparse,
    "multi-vector-embedding": _maxsim,
}


def outputs_of(folder: Path, manifest: Manifest, variant: Variant, texts: list[str], **load_kwargs: Any) -> np.ndarray:
    """What the kind's headline output is for `texts` under `variant` (embeddings, pair scores, sparse rows)."""
    model = st_runtime.load(folder, manifest=manifest, variant=variant.name, **load_kwargs)
    return KIND_OUTPUTS[manifest.task](model, texts)


def measure(folder: Path, manifest: Manifest, variant: Variant, texts: tuple[str, ...],
            reference: np.ndarray | None = None) -> dict[str, float]:
    """Accuracy of `variant` against the fp32 graph of the same folder on `texts`."""
    texts = list(texts)
    if reference is None:
        reference = outputs_of(folder, manifest, manifest.variant(name="fp32"), texts)
    candidate = outputs_of(folder, manifest, variant, texts, verify=False)  # not yet recorded in the manifest
    report = KIND_REPORTS[manifest.task][0](reference, candidate)
    report["texts"] = len(texts)
    return report
