"""sentence-transformers' `util` functions in numpy, for code ported from `sentence_transformers.util`.

`from st_runtime import util` (or `import st_runtime.util as util`) gives the same names with the same arguments
and results, numpy arrays in and out (lists and 1-D arrays are accepted):

- similarity: `cos_sim`, `dot_score`, `euclidean_sim`, `manhattan_sim` and their `pairwise_*` forms (the same
  functions `SentenceTransformer.similarity` uses);
- search: `semantic_search`, `paraphrase_mining`, `paraphrase_mining_embeddings`, `community_detection`;
- `quantize_embeddings` (the one `encode(precision=...)` uses).

The algorithms are sentence-transformers 6's, step for step (chunking, per-chunk top-k, heaps, the order communities
are claimed in). Where torch leaves the order of equal scores unspecified (torch.topk), these functions break ties
by the lower index; scores are Python floats computed in float32 (float64 for float64 input), so they can differ
from torch's in the last bits.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from itertools import islice
from typing import Any

import numpy as np

from st_runtime.base import check_positive_int
from st_runtime.quantization import quantize_embeddings
from st_runtime.similarity import (
    _as_2d,
    cos_sim,
    dot_score,
    euclidean_sim,
    l2_normalize,
    manhattan_sim,
    pairwise_cos_sim,
    pairwise_dot_score,
    pairwise_euclidean_sim,
    pairwise_manhattan_sim,
)

__all__ = [
    "community_detection",
    "cos_sim",
    "dot_score",
    "euclidean_sim",
    "manhattan_sim",
    "pairwise_cos_sim",
    "pairwise_dot_score",
    "pairwise_euclidean_sim",
    "pairwise_manhattan_sim",
    "paraphrase_mining",
    "paraphrase_mining_embeddings",
    "quantize_embeddings",
    "semantic_search",
]

ScoreFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]


def semantic_search(
    query_embeddings: np.ndarray | list,
    corpus_embeddings: np.ndarray | list,
    query_chunk_size: int = 100,
    corpus_chunk_size: int = 500000,
    top_k: int = 10,
    score_function: ScoreFunction = cos_sim,
) -> list[list[dict[str, int | float]]]:
    """The top_k corpus entries of every query, by `score_function` (default cosine similarity).

    Args:
        query_embeddings: (n_queries, dim), or (dim,) for one query.
        corpus_embeddings: (n_corpus, dim).
        query_chunk_size: queries scored at once.
        corpus_chunk_size: corpus rows scored at once.
        top_k: results per query (fewer when the corpus is smaller).
        score_function: (queries, corpus) -> (n_queries, n_corpus) scores, higher is better.

    Returns:
        One list per query of {"corpus_id": int, "score": float}, highest score first (equal scores: lower
        corpus_id first).

    Raises:
        ValueError: a chunk size below 1 or a negative top_k.
    """
    check_positive_int(query_chunk_size, "query_chunk_size")
    check_positive_int(corpus_chunk_size, "corpus_chunk_size")
    check_positive_int(top_k, "top_k", allow_zero=True)
    queries, corpus = _as_2d(query_embeddings), _as_2d(corpus_embeddings)
    results: list[list[tuple[float, int]]] = [[] for _ in range(len(queries))]
    # cos_sim would normalize the same corpus chunk once per query chunk; normalizing it once gives the same scores.
    normalize = score_function is cos_sim
    for corpus_start in range(0, len(corpus), corpus_chunk_size):
        corpus_chunk = corpus[corpus_start : corpus_start + corpus_chunk_size]
        if normalize:
            corpus_chunk = l2_normalize(corpus_chunk)
        for query_start in range(0, len(queries), query_chunk_size):
            query_chunk = queries[query_start : query_start + query_chunk_size]
            if normalize:
                scores = dot_score(l2_normalize(query_chunk), corpus_chunk)
            else:
                scores = np.asarray(score_function(query_chunk, corpus_chunk))
            values, indices = _top_k(scores, top_k)
            for heap, corpus_ids, chunk_scores in zip(results[query_start : query_start + query_chunk_size],
                                                      (indices + corpus_start).tolist(), values.tolist(), strict=True):
                # A min-heap of (score, corpus_id): fill it to top_k, then keep a candidate only if it beats the minimum.
                candidates = zip(chunk_scores, corpus_ids, strict=True)
                for candidate in islice(candidates, top_k - len(heap)):
                    heapq.heappush(heap, candidate)
                for candidate in candidates:
                    heapq.heappushpop(heap, candidate)
    return [[{"corpus_id": corpus_id, "score": score} for score, corpus_id in sorted(heap, key=_score_then_id)]
            for heap in results]


def paraphrase_mining(
    model: Any,
    sentences: list[str],
    show_progress_bar: bool = False,
    batch_size: int = 32,
    query_chunk_size: int = 5000,
    corpus_chunk_size: int = 100000,
    max_pairs: int = 500000,
    top_k: int = 100,
    score_function: ScoreFunction = cos_sim,
    truncate_dim: int | None = None,
    prompt_name: str | None = None,
    prompt: str | None = None,
) -> list[list[float | int]]:
    """Encode `sentences` with `model` (an st_runtime.SentenceTransformer) and return the most similar pairs:
    `paraphrase_mining_embeddings` on the embeddings.

    Args:
        model: anything with sentence-transformers' `encode` (an st_runtime.SentenceTransformer).
        sentences: the texts.
        show_progress_bar, batch_size, truncate_dim, prompt_name, prompt: passed to `model.encode`.
        query_chunk_size, corpus_chunk_size, max_pairs, top_k, score_function: see `paraphrase_mining_embeddings`.

    Returns:
        [[score, i, j], ...] with i < j, highest score first.
    """
    embeddings = model.encode(sentences, show_progress_bar=show_progress_bar, batch_size=batch_size,
                              truncate_dim=truncate_dim, prompt_name=prompt_name, prompt=prompt)
    return paraphrase_mining_embeddings(embeddings, query_chunk_size=query_chunk_size,
                                        corpus_chunk_size=corpus_chunk_size, max_pairs=max_pairs, top_k=top_k,
                                        score_function=score_function)


def paraphrase_mining_embeddings(
    embeddings: np.ndarray | list,
    query_chunk_size: int = 5000,
    corpus_chunk_size: int = 100000,
    max_pairs: int = 500000,
    top_k: int = 100,
    score_function: ScoreFunction = cos_sim,
) -> list[list[float | int]]:
    """The pairs of rows with the highest scores: each row's top_k other rows, at most max_pairs pairs overall.

    Args:
        embeddings: (n, dim).
        query_chunk_size: rows scored at once against the corpus.
        corpus_chunk_size: rows each query chunk is scored against at once.
        max_pairs: the most pairs returned (the highest-scoring ones).
        top_k: candidates per row (besides itself).
        score_function: (a, b) -> scores; assumed symmetric, since one direction's score is kept per pair.

    Returns:
        [[score, i, j], ...] with i < j and score a Python float, highest score first (equal scores: lower i, then
        lower j first).

    Raises:
        ValueError: a chunk size below 1, or a negative max_pairs or top_k.
    """
    check_positive_int(query_chunk_size, "query_chunk_size")
    check_positive_int(corpus_chunk_size, "corpus_chunk_size")
    check_positive_int(max_pairs, "max_pairs", allow_zero=True)
    check_positive_int(top_k, "top_k", allow_zero=True)
    embeddings = _as_2d(embeddings)
    pairs: list[tuple[float, int, int]] = []  # min-heap of (score, i, j), i < j, at most max_pairs long
    queued: set[tuple[int, int]] = set()  # the (i, j) of every pair in `pairs`
    min_score = float("-inf")
    for query_start in range(0, len(embeddings), query_chunk_size):
        queries = embeddings[query_start : query_start + query_chunk_size]
        # Each query's top_k + 1 (itself included) over all corpus chunks, so candidates don't depend on chunking.
        best_values = best_indices = None
        for corpus_start in range(0, len(embeddings), corpus_chunk_size):
            scores = np.asarray(score_function(queries, embeddings[corpus_start : corpus_start + corpus_chunk_size]))
            values, indices = _top_k(scores, top_k + 1)
            indices = indices + corpus_start
            if best_values is None:
                best_values, best_indices = values, indices
            else:
                values, indices = np.concatenate([best_values, values], 1), np.concatenate([best_indices, indices], 1)
                best_values, position = _top_k(values, top_k + 1)
                best_indices = np.take_along_axis(indices, position, 1)
        if best_values is None:
            continue
        for row, (neighbour_ids, neighbour_scores) in enumerate(zip(best_indices.tolist(), best_values.tolist(),
                                                                    strict=True)):
            i = query_start + row
            neighbours = [(j, score) for j, score in zip(neighbour_ids, neighbour_scores, strict=True) if j != i][:top_k]
            for j, score in neighbours:
                if score <= min_score:
                    continue
                pair = (i, j) if i < j else (j, i)
                if pair in queued:
                    continue
                queued.add(pair)
                if len(pairs) < max_pairs:
                    heapq.heappush(pairs, (score, *pair))
                else:
                    evicted = heapq.heappushpop(pairs, (score, *pair))
                    queued.discard(evicted[1:])
                    min_score = evicted[0]
    return [[score, i, j] for score, i, j in sorted(pairs, key=lambda p: (-p[0], p[1], p[2]))]


def community_detection(
    embeddings: np.ndarray | list,
    threshold: float = 0.75,
    min_community_size: int = 10,
    batch_size: int = 1024,
    show_progress_bar: bool = False,
) -> list[list[int]]:
    """Fast community detection: groups of rows whose cosine similarity to a central row is at least `threshold`.

    Every row with at least min_community_size rows (itself included) at or above the threshold is a candidate
    center; the largest candidate communities claim their rows first, and a community keeps only rows not claimed
    before (it is dropped if fewer than min_community_size remain, or if its center was claimed).

    Args:
        embeddings: (n, dim).
        threshold: cosine similarity a member has with the center, at least.
        min_community_size: the smallest community returned.
        batch_size: rows scored against all rows at once.
        show_progress_bar: show a progress bar over the batches.

    Returns:
        Communities as lists of row indices, largest first; each starts with its center, the other members follow by
        decreasing similarity to it (equal similarities: lower index first).

    Raises:
        ValueError: min_community_size or batch_size below 1.
    """
    check_positive_int(min_community_size, "min_community_size")
    check_positive_int(batch_size, "batch_size")
    embeddings = np.asarray(embeddings)
    if len(embeddings) == 0:
        return []
    embeddings = _as_2d(embeddings)
    n = len(embeddings)
    if n < min_community_size:
        return []
    threshold = np.float32(threshold)  # as torch.tensor(threshold): compared in float32 (float64 for float64 input)
    embeddings = l2_normalize(embeddings)
    from tqdm.auto import tqdm

    candidates: list[tuple[int, np.ndarray]] = []  # (center, members by decreasing similarity)
    sort_max_size = min(max(2 * min_community_size, 50), n)  # members looked at per center; doubled when too few
    for start in tqdm(range(0, n, batch_size), desc="Finding clusters", disable=not show_progress_bar):
        scores = embeddings[start : start + batch_size] @ embeddings.T
        # The min_community_size-th largest score of each row decides whether the row can be a center.
        kth_largest = np.partition(scores, n - min_community_size, axis=1)[:, n - min_community_size]
        for i in np.flatnonzero(kth_largest >= threshold).tolist():
            values, indices = _top_k(scores[i : i + 1], sort_max_size)
            while values[0, -1] >= threshold and sort_max_size < n:
                sort_max_size = min(2 * sort_max_size, n)
                values, indices = _top_k(scores[i : i + 1], sort_max_size)
            candidates.append((start + i, indices[0][values[0] >= threshold]))
    candidates.sort(key=lambda c: len(c[1]), reverse=True)  # largest first; stable, so equal sizes keep row order
    communities: list[list[int]] = []
    used = np.zeros(n, dtype=bool)
    for center, members in candidates:
        if used[center]:
            continue
        unclaimed = members[~used[members]]
        if len(unclaimed) >= min_community_size:
            community = [center, *unclaimed[unclaimed != center].tolist()]
            communities.append(community)
            used[community] = True
    return sorted(communities, key=len, reverse=True)


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, column indices) of the k largest scores of each row of a 2-D array, largest first.

    torch.topk leaves the order of equal scores unspecified; here the lower column comes first, also at the k-th
    place (which of several equal scores is kept).
    """
    rows, n = scores.shape
    k = min(k, n)
    if k == 0:
        return scores[:, :0], np.zeros((rows, 0), dtype=np.int64)
    if k == n:
        order = np.argsort(-scores, axis=1, kind="stable")
        return np.take_along_axis(scores, order, 1), order
    candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(scores, candidates, 1)
    # Rows where the k-th value ties with a score left out: argpartition picked arbitrarily among them.
    tied = np.flatnonzero((scores >= values.min(axis=1, keepdims=True)).sum(axis=1) > k)
    if len(tied):
        candidates[tied] = np.argsort(-scores[tied], axis=1, kind="stable")[:, :k]
        values[tied] = np.take_along_axis(scores[tied], candidates[tied], 1)
    order = np.lexsort((candidates, -values), axis=-1)
    return np.take_along_axis(values, order, 1), np.take_along_axis(candidates, order, 1)


def _score_then_id(item: tuple[float, int]) -> tuple[float, int]:
    return -item[0], item[1]
