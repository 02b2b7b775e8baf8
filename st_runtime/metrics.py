"""How close two sets of outputs of the same texts are, numpy only: the accuracy figures of every model kind.

quantizers gate a variant on them (its fp32 graph is the reference), st-bench compares engines with them and the zoo
records them, all without onnx. The headline figure of each report is `score`.

sentence-embedding: mean and min cosine of the embeddings; text-ranking: Spearman correlation of the pair scores (and
mean |diff|); sparse-embedding: mean overlap of the top-k active dimensions (and mean cosine); multi-vector-embedding:
Spearman correlation of the MaxSim scores of queries x documents (and mean |diff|).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

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


# Manifest task -> (the report a variant's outputs are compared with, what its `score` is called in tables).
KIND_REPORTS: dict[str, tuple[Callable[[np.ndarray, np.ndarray], dict[str, float]], str]] = {
    "sentence-embedding": (embedding_report, "mean cosine"),
    "text-ranking": (ranking_report, "Spearman"),
    "sparse-embedding": (sparse_report, f"top-{SPARSE_TOP_K} overlap"),
    "multi-vector-embedding": (ranking_report, "MaxSim Spearman"),
}
