"""Similarity functions in numpy, with sentence-transformers' names and sign conventions."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from st_runtime.errors import InvalidInputError

Array = np.ndarray


def _as_float(a: Array | list) -> Array:
    """As sentence-transformers converts: float64 stays float64, anything else (lists, float16, ints) is float32.

    Raises:
        InvalidInputError: sparse embeddings (scipy or SparseEmbeddings), which these dense functions do not take.
    """
    if hasattr(a, "tocsr") or type(a).__name__ == "SparseEmbeddings":
        raise InvalidInputError(f"Expected dense embeddings, got {type(a).__name__}: compare sparse embeddings with "
                                "SparseEncoder.similarity / similarity_pairwise, or densify them with .toarray().")
    a = np.asarray(a)
    return a if a.dtype == np.float64 else a.astype(np.float32, copy=False)


def _as_2d(a: Array | list) -> Array:
    a = _as_float(a)
    return a[None, :] if a.ndim == 1 else a


def l2_normalize(a: Array) -> Array:
    """Rows (the last axis) scaled to unit L2 norm; a zero row stays zero (norms are floored at 1e-12)."""
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def cos_sim(a: Array, b: Array) -> Array:
    """res[i, j] = cosine(a[i], b[j])."""
    return l2_normalize(_as_2d(a)) @ l2_normalize(_as_2d(b)).T


def dot_score(a: Array, b: Array) -> Array:
    """res[i, j] = a[i] . b[j]."""
    return _as_2d(a) @ _as_2d(b).T


def euclidean_sim(a: Array, b: Array) -> Array:
    """res[i, j] = -||a[i] - b[j]||_2."""
    a, b = _as_2d(a), _as_2d(b)
    return -np.sqrt(np.maximum(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1), 0.0))


def manhattan_sim(a: Array, b: Array) -> Array:
    """res[i, j] = -||a[i] - b[j]||_1."""
    a, b = _as_2d(a), _as_2d(b)
    return -np.abs(a[:, None, :] - b[None, :, :]).sum(-1)


def pairwise_cos_sim(a: Array, b: Array) -> Array:
    """res[i] = cosine(a[i], b[i]); 1-D inputs give a 0-d result, as in sentence-transformers."""
    return (l2_normalize(_as_float(a)) * l2_normalize(_as_float(b))).sum(-1)


def pairwise_dot_score(a: Array, b: Array) -> Array:
    """res[i] = a[i] . b[i]; 1-D inputs give a 0-d result, as in sentence-transformers."""
    return (_as_float(a) * _as_float(b)).sum(-1)


def pairwise_euclidean_sim(a: Array, b: Array) -> Array:
    """res[i] = -||a[i] - b[i]||_2."""
    return -np.sqrt(((_as_float(a) - _as_float(b)) ** 2).sum(-1))


def pairwise_manhattan_sim(a: Array, b: Array) -> Array:
    """res[i] = -||a[i] - b[i]||_1."""
    return -np.abs(_as_float(a) - _as_float(b)).sum(-1)


SIMILARITY_FUNCTIONS: dict[str, tuple[Callable[[Array, Array], Array], Callable[[Array, Array], Array]]] = {
    "cosine": (cos_sim, pairwise_cos_sim),
    "dot": (dot_score, pairwise_dot_score),
    "euclidean": (euclidean_sim, pairwise_euclidean_sim),
    "manhattan": (manhattan_sim, pairwise_manhattan_sim),
}


def similarity_functions(name: str) -> tuple[Callable[[Array, Array], Array], Callable[[Array, Array], Array]]:
    """(matrix, pairwise) similarity functions for a sentence-transformers similarity_fn_name."""
    try:
        return SIMILARITY_FUNCTIONS[name]
    except KeyError:
        raise ValueError(f"Unknown similarity function {name!r}; expected one of {sorted(SIMILARITY_FUNCTIONS)}.") from None
