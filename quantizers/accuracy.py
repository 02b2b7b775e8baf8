"""How close a variant stays to the fp32 graph, per model kind, on held-out texts.

sentence-embedding: mean and min cosine of the embeddings; text-ranking: Spearman correlation of the pair
scores (and mean |diff|); sparse-embedding: mean overlap of the top-k active dimensions (and mean cosine);
multi-vector-embedding: Spearman correlation of the MaxSim scores of queries x documents (and mean |diff|).
The headline figure each kind is gated on is `score`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import st_runtime
from st_runtime.manifest import Manifest, Variant

SPARSE_TOP_K = 32


def cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, dim) arrays (1.0 where both rows are zero)."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    dots = (reference * candidate).sum(1)
    return np.where(norms == 0, 1.0, dots / np.maximum(norms, 1e-300))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties), numpy only."""
    def ranks(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64).ravel()
        order = np.argsort(x, kind="stable")
        sorted_x = x[order]
        result = np.empty(len(x))
        start = 0
        while start < len(x):
            end = start
            while end + 1 < len(x) and sorted_x[end + 1] == sorted_x[start]:
                end += 1
            result[order[start : end + 1]] = (start + end) / 2.0
            start = end + 1
        return result
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 1.0 if np.array_equal(ra, rb) else 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def top_k_overlap(reference: np.ndarray, candidate: np.ndarray, k: int = SPARSE_TOP_K) -> np.ndarray:
    """Per row, the share of the reference's top-k active dimensions that are also in the candidate's top-k."""
    overlaps = []
    for ref_row, cand_row in zip(np.asarray(reference), np.asarray(candidate), strict=True):
        kk = min(k, int((ref_row > 0).sum()))
        if kk == 0:
            overlaps.append(1.0 if not (cand_row > 0).any() else 0.0)
            continue
        ref_top = set(np.argsort(-ref_row, kind="stable")[:kk].tolist())
        cand_top = {int(i) for i in np.argsort(-cand_row, kind="stable")[:kk] if cand_row[i] > 0}  # active dims only
        overlaps.append(len(ref_top & cand_top) / kk)
    return np.array(overlaps)


def embedding_report(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    cos = cosines(reference, candidate)
    return {"score": float(cos.mean()), "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}


def ranking_report(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    rho = spearman(reference, candidate)
    return {"score": rho, "spearman": rho, "mean_abs_diff": float(np.abs(np.asarray(reference) - candidate).mean())}


def sparse_report(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    overlap = top_k_overlap(reference, candidate)
    return {"score": float(overlap.mean()), f"top{SPARSE_TOP_K}_overlap": float(overlap.mean()),
            f"min_top{SPARSE_TOP_K}_overlap": float(overlap.min()),
            "mean_cosine": float(cosines(reference, candidate).mean())}


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


# task -> (runtime class name, run the model on texts, compare)
KIND_ACCURACY: dict[str, tuple[str, Callable[[Any, list[str]], np.ndarray], Callable[..., dict[str, float]]]] = {
    "sentence-embedding": ("SentenceTransformer", _embed, embedding_report),
    "text-ranking": ("CrossEncoder", _rank, ranking_report),
    "sparse-embedding": ("SparseEncoder", _sparse, sparse_report),
    "multi-vector-embedding": ("MultiVectorEncoder", _maxsim, ranking_report),
}


def outputs_of(folder: Path, manifest: Manifest, variant: Variant, texts: list[str], **load_kwargs: Any) -> np.ndarray:
    """What the kind's headline output is for `texts` under `variant` (embeddings, pair scores, sparse rows)."""
    class_name, run, _ = KIND_ACCURACY[manifest.task]
    model = getattr(st_runtime, class_name)(folder, manifest=manifest, variant=variant.name, **load_kwargs)
    return run(model, texts)


def measure(folder: Path, manifest: Manifest, variant: Variant, texts: tuple[str, ...],
            reference: np.ndarray | None = None) -> dict[str, float]:
    """Accuracy of `variant` against the fp32 graph of the same folder on `texts`."""
    texts = list(texts)
    if reference is None:
        reference = outputs_of(folder, manifest, manifest.variant(name="fp32"), texts)
    candidate = outputs_of(folder, manifest, variant, texts, verify=False)  # not yet recorded in the manifest
    report = KIND_ACCURACY[manifest.task][2](reference, candidate)
    report["texts"] = len(texts)
    return report
