"""Accuracy of a row against the reference row's outputs on the same texts, and against human judgement (Lee).

- sentence-embedding: mean and min cosine of the corpus embeddings to the reference's.
- text-ranking: Spearman of all pair scores to the reference's, and the mean over queries of the per-query
  Spearman (does each query's ranking of its 100 documents agree?).
- sparse-embedding: share of the reference's top-32 active dimensions kept in the row's top-32, for documents
  (mean and min) and queries (mean), and the mean cosine of the document vectors.
- multi-vector-embedding: Spearman of the MaxSim scores of the held-out queries x documents to the reference's (the
  texts and split of quantizers' MaxSim accuracy) with their mean |diff|, and the share of the reference's top 10
  of each `rank` over 100 documents that is in the row's top 10 (mean and min over queries).
- Lee (bi-encoders and sparse encoders): Spearman between the model's similarity of the 50 Lee documents (with
  the model's own similarity function) and the human scores, over the 1225 pairs. This one needs no reference.

The comparisons reuse st_runtime.metrics (cosines, spearman, top_k_overlap), as the quantizers do, so a variant's
accuracy in the manifest and in st-bench mean the same thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from st_runtime.metrics import SPARSE_TOP_K, cosines, spearman, top_k_overlap

# The accuracy figure each task is plotted (and summarized) by.
HEADLINE = {"sentence-embedding": "mean_cosine", "text-ranking": "spearman",
            "sparse-embedding": f"top{SPARSE_TOP_K}_overlap", "multi-vector-embedding": "spearman"}
SPARSE_CHUNK = 256  # rows densified at a time


def load_sparse(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in ("indptr", "indices", "values", "shape")}


def dense_rows(parts: dict[str, np.ndarray], start: int, stop: int) -> np.ndarray:
    """Rows start:stop of a CSR matrix as a dense float32 array."""
    indptr, width = parts["indptr"], int(parts["shape"][1])
    out = np.zeros((stop - start, width), np.float32)
    for row in range(start, stop):
        lo, hi = indptr[row], indptr[row + 1]
        out[row - start, parts["indices"][lo:hi]] = parts["values"][lo:hi]
    return out


def embedding_accuracy(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Mean and min row-wise cosine."""
    _check_rows(reference, candidate)
    cos = cosines(reference, candidate)
    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}


def ranking_accuracy(reference: np.ndarray, candidate: np.ndarray, group: int) -> dict[str, float]:
    """Spearman of all scores, and the mean Spearman within consecutive groups of `group` scores (one query each)."""
    reference, candidate = np.asarray(reference).reshape(len(reference), -1), np.asarray(candidate).reshape(len(candidate), -1)
    _check_rows(reference, candidate)
    per_query = [spearman(reference[i : i + group], candidate[i : i + group]) for i in range(0, len(reference), group)]
    return {"spearman": spearman(reference, candidate), "mean_query_spearman": float(np.mean(per_query)),
            "mean_abs_diff": float(np.abs(reference.astype(np.float64) - candidate).mean())}


def rank_overlap(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Share of each reference top-k list (one row of document indices per query) found in the candidate's, mean and
    min over queries: {"top{k}_overlap", "min_top{k}_overlap"}."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    _check_rows(reference, candidate)
    k = reference.shape[1] if reference.ndim == 2 else 0
    if not len(reference) or not k:
        return {}
    shares = np.array([len(set(r.tolist()) & set(c.tolist())) / k for r, c in zip(reference, candidate, strict=True)])
    return {f"top{k}_overlap": float(shares.mean()), f"min_top{k}_overlap": float(shares.min())}


def sparse_accuracy(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], prefix: str = "") -> dict[str, float]:
    """Top-k overlap (mean, min) and mean cosine of two CSR matrices, densified a chunk of rows at a time."""
    rows = int(reference["shape"][0])
    if int(candidate["shape"][0]) != rows:
        raise ValueError(f"reference has {rows} rows, candidate {int(candidate['shape'][0])}")
    overlaps, cos = [], []
    for start in range(0, rows, SPARSE_CHUNK):
        stop = min(rows, start + SPARSE_CHUNK)
        ref, cand = dense_rows(reference, start, stop), dense_rows(candidate, start, stop)
        overlaps.append(top_k_overlap(ref, cand))
        cos.append(cosines(ref, cand))
    overlap, cosine = np.concatenate(overlaps), np.concatenate(cos)
    return {f"{prefix}top{SPARSE_TOP_K}_overlap": float(overlap.mean()),
            f"{prefix}min_top{SPARSE_TOP_K}_overlap": float(overlap.min()), f"{prefix}mean_cosine": float(cosine.mean())}


def lee_spearman(documents: np.ndarray, human: np.ndarray, similarity_fn_name: str = "cosine") -> float:
    """Spearman between the model's similarity of the Lee documents' pairs (upper triangle) and the human scores."""
    from st_runtime.similarity import similarity_functions

    matrix = np.asarray(similarity_functions(similarity_fn_name)[0](documents, documents), np.float64)
    upper = matrix[np.triu_indices(len(documents), 1)]
    if upper.shape != np.shape(human):
        raise ValueError(f"{len(upper)} document pairs but {len(human)} human scores")
    return spearman(upper, np.asarray(human))


def row_accuracy(task: str, reference: Path | None, row: Path, *, rerank_group: int = 100,
                 lee_scores: tuple[float, ...] = (), similarity_fn_name: str = "cosine") -> dict[str, float]:
    """Every accuracy figure of one row from the outputs in its folder (and the reference row's folder, if any).

    Args:
        task: the model's task.
        reference: the reference row's output folder (None: no comparison, only the Lee figure).
        row: this row's output folder.
        rerank_group: documents per query (rerankers).
        lee_scores: human scores of the Lee pairs (empty: no Lee figure).
        similarity_fn_name: the model's similarity function, for the Lee figure.
    """
    figures: dict[str, float] = {}
    if task == "sentence-embedding":
        if reference is not None:
            figures.update(embedding_accuracy(np.load(reference / "bulk.npy"), np.load(row / "bulk.npy")))
        if lee_scores and (row / "lee.npy").is_file():
            figures["lee_spearman"] = lee_spearman(np.load(row / "lee.npy"), np.asarray(lee_scores), similarity_fn_name)
    elif task == "sparse-embedding":
        if reference is not None:
            figures.update(sparse_accuracy(load_sparse(reference / "bulk.npz"), load_sparse(row / "bulk.npz")))
            queries = sparse_accuracy(load_sparse(reference / "queries.npz"), load_sparse(row / "queries.npz"), "query_")
            figures[f"query_top{SPARSE_TOP_K}_overlap"] = queries[f"query_top{SPARSE_TOP_K}_overlap"]
        if lee_scores and (row / "lee.npz").is_file():
            parts = load_sparse(row / "lee.npz")
            docs = dense_rows(parts, 0, int(parts["shape"][0]))
            figures["lee_spearman"] = lee_spearman(docs, np.asarray(lee_scores), similarity_fn_name or "dot")
    elif task == "text-ranking":
        if reference is not None:
            figures.update(ranking_accuracy(np.load(reference / "bulk.npy"), np.load(row / "bulk.npy"), rerank_group))
    elif task == "multi-vector-embedding":
        if reference is not None:
            ref, cand = np.load(reference / "heldout_maxsim.npy"), np.load(row / "heldout_maxsim.npy")
            _check_rows(ref, cand)
            figures.update(spearman=spearman(ref, cand), mean_abs_diff=float(np.abs(ref.astype(np.float64) - cand).mean()))
            figures.update(rank_overlap(np.load(reference / "rank_top.npy"), np.load(row / "rank_top.npy")))
    else:
        raise ValueError(f"Unknown task {task!r}.")
    return figures


def _check_rows(reference: Any, candidate: Any) -> None:
    if np.shape(reference) != np.shape(candidate):
        raise ValueError(f"outputs differ in shape: reference {np.shape(reference)}, candidate {np.shape(candidate)}")
