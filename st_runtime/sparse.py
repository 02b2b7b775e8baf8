"""Sparse embeddings in numpy: `SparseEmbeddings` (rows in CSR form, for when scipy is not installed), conversion of
every accepted form to it, and sentence-transformers' similarity functions computed without densifying."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

SIMILARITY_NAMES = ("cosine", "dot", "euclidean", "manhattan")


@dataclass(frozen=True, eq=False)
class SparseEmbeddings:
    """Sparse embeddings without scipy: rows in CSR form (row i holds indices[indptr[i]:indptr[i+1]] and the
    matching data), indices ascending. shape is (rows, dim), or (dim,) for one embedding (a single input text)."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    shape: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nnz(self) -> int:
        """Number of stored (non-zero) weights."""
        return len(self.data)

    def __len__(self) -> int:
        return self.shape[0]

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, weights) of row i (of the only row for a 1-D embedding)."""
        start, end = self.indptr[i], self.indptr[i + 1]
        return self.indices[start:end], self.data[start:end]

    def __getitem__(self, i: int | slice) -> SparseEmbeddings:
        """Row i as a 1-D SparseEmbeddings, or the rows of a slice as a 2-D one."""
        if self.ndim != 2:
            raise TypeError("A 1-D SparseEmbeddings has no rows; use .row(0) or .toarray().")
        rows = range(self.shape[0])[i]  # negative indices, slices, and IndexError past the end
        if isinstance(rows, int):
            indices, data = self.row(rows)
            return SparseEmbeddings(np.array([0, len(data)]), indices, data, (self.shape[1],))
        parts = [self.row(r) for r in rows]
        indptr = np.concatenate([[0], np.cumsum([len(d) for _, d in parts], dtype=np.int64)]).astype(np.int64)
        return SparseEmbeddings(indptr, np.concatenate([self.indices[:0], *(ix for ix, _ in parts)]),
                                np.concatenate([self.data[:0], *(d for _, d in parts)]), (len(parts), self.shape[1]))

    def __iter__(self) -> Iterator[SparseEmbeddings]:
        """The rows, each a 1-D SparseEmbeddings."""
        if self.ndim != 2:
            raise TypeError("A 1-D SparseEmbeddings has no rows; use .row(0) or .toarray().")
        return (self[i] for i in range(len(self)))

    def toarray(self) -> np.ndarray:
        """The dense float32 array (rows, dim) or (dim,)."""
        rows = max(len(self.indptr) - 1, 0)
        dense = np.zeros((rows, self.shape[-1]), dtype=self.data.dtype)
        dense[np.repeat(np.arange(rows), np.diff(self.indptr)), self.indices] = self.data
        return dense.reshape(self.shape)

    def to_scipy(self) -> Any:
        """The same embeddings as a scipy.sparse csr_array (needs scipy >= 1.14 for a 1-D embedding)."""
        return scipy_sparse(required=True).csr_array((self.data, self.indices, self.indptr), shape=self.shape)

    def __repr__(self) -> str:
        return f"SparseEmbeddings(shape={self.shape}, nnz={self.nnz})"


@lru_cache(maxsize=1)
def _scipy_module() -> Any:
    """scipy.sparse when it is importable and has 1-D sparse arrays (scipy >= 1.14), else None."""
    try:
        import scipy.sparse as sparse

        sparse.csr_array((np.zeros(1, np.float32), np.zeros(1, np.int32), np.array([0, 1])), shape=(2,))
    except (ImportError, ValueError, TypeError, NotImplementedError):
        return None
    return sparse


def scipy_sparse(*, required: bool) -> Any:
    """scipy.sparse, or None without a usable scipy.

    Raises:
        ImportError: `required` and no scipy >= 1.14.
    """
    sparse = _scipy_module()
    if sparse is None and required:
        raise ImportError('sparse_format="scipy" needs scipy >= 1.14 (pip install "scipy>=1.14"); '
                          'sparse_format="numpy" returns st_runtime.SparseEmbeddings without it.')
    return sparse


def _is_scipy(x: Any) -> bool:
    return hasattr(x, "tocsr") and hasattr(x, "format") and hasattr(x, "nnz")


def to_csr(embeddings: Any) -> tuple[SparseEmbeddings, bool]:
    """Any accepted embeddings as a 2-D SparseEmbeddings without zeros, and whether the input was one embedding.

    Accepts what `encode` returns: a scipy sparse array/matrix, SparseEmbeddings, a dense array, or a list of rows.

    Raises:
        ValueError: not 1-D or 2-D.
    """
    if isinstance(embeddings, list) and embeddings and not np.isscalar(embeddings[0]):
        rows = [to_csr(row)[0] for row in embeddings]
        if len({r.shape[1] for r in rows}) != 1:
            raise ValueError("The rows of the list have different dimensions.")
        indptr = np.concatenate([[0], np.cumsum([r.nnz for r in rows])])
        return SparseEmbeddings(indptr, np.concatenate([r.indices for r in rows]),
                                np.concatenate([r.data for r in rows]), (len(rows), rows[0].shape[1])), False
    if isinstance(embeddings, SparseEmbeddings):
        csr = embeddings if embeddings.ndim == 2 else SparseEmbeddings(
            embeddings.indptr, embeddings.indices, embeddings.data, (1, embeddings.shape[0]))
        keep = csr.data != 0
        if not keep.all():
            counts = np.bincount(_row_ids(csr)[keep], minlength=len(csr))
            csr = SparseEmbeddings(np.concatenate([[0], np.cumsum(counts)]), csr.indices[keep], csr.data[keep], csr.shape)
        return csr, embeddings.ndim == 1
    if _is_scipy(embeddings):
        was_1d = embeddings.ndim == 1
        matrix = embeddings.reshape((1, embeddings.shape[0])) if was_1d else embeddings
        matrix = matrix.tocsr(copy=True)
        matrix.sum_duplicates()
        matrix.eliminate_zeros()
        return SparseEmbeddings(matrix.indptr.astype(np.int64), matrix.indices.astype(np.int64),
                                matrix.data.astype(np.float32, copy=False), matrix.shape), was_1d
    dense = np.asarray(embeddings, dtype=np.float32)
    if dense.ndim not in (1, 2):
        raise ValueError(f"Expected 1-D or 2-D embeddings, got {dense.ndim}-D.")
    matrix = dense.reshape(1, -1) if dense.ndim == 1 else dense
    rows, cols = np.nonzero(matrix)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=matrix.shape[0]))])
    return SparseEmbeddings(indptr, cols.astype(np.int64), matrix[rows, cols], matrix.shape), dense.ndim == 1


def _row_ids(csr: SparseEmbeddings) -> np.ndarray:
    return np.repeat(np.arange(len(csr)), np.diff(csr.indptr))


def _row_sums(csr: SparseEmbeddings, values: np.ndarray) -> np.ndarray:
    return np.bincount(_row_ids(csr), weights=values, minlength=len(csr))


def _dot_matrix(a: SparseEmbeddings, b: SparseEmbeddings) -> np.ndarray:
    """res[i, j] = a[i] . b[j], with scipy's sparse product when available, else one dense row of a at a time."""
    sparse = _scipy_module()
    if sparse is not None:
        return np.asarray((a.to_scipy() @ b.to_scipy().T).toarray(), dtype=np.float32)
    out = np.zeros((len(a), len(b)), dtype=np.float32)
    row = np.zeros(a.shape[1], dtype=np.float32)
    b_rows = _row_ids(b)
    for i in range(len(a)):
        indices, data = a.row(i)
        row[indices] = data
        out[i] = np.bincount(b_rows, weights=row[b.indices] * b.data, minlength=len(b))
        row[indices] = 0
    return out


def _normalized(csr: SparseEmbeddings) -> SparseEmbeddings:
    norms = np.sqrt(_row_sums(csr, csr.data.astype(np.float64) ** 2))
    data = csr.data / np.maximum(norms, 1e-12)[_row_ids(csr)].astype(np.float32)
    return SparseEmbeddings(csr.indptr, csr.indices, data, csr.shape)


def _pairwise_difference(a: SparseEmbeddings, b: SparseEmbeddings) -> tuple[np.ndarray, np.ndarray]:
    """(row, value) of every non-zero of a[i] - b[i]."""
    width = a.shape[1]
    keys = np.concatenate([_row_ids(a) * width + a.indices, _row_ids(b) * width + b.indices])
    unique, inverse = np.unique(keys, return_inverse=True)
    diff = np.bincount(inverse, weights=np.concatenate([a.data, -b.data]).astype(np.float64), minlength=len(unique))
    return unique // width, diff


def sparse_similarity(name: str, embeddings1: Any, embeddings2: Any, *, pairwise: bool = False) -> np.ndarray:
    """sentence-transformers' similarity `name` between sparse embeddings, without densifying them.

    Returns:
        (n1, n2) float32 matrix, or (n,) when `pairwise` (embeddings1[i] against embeddings2[i]).

    Raises:
        ValueError: unknown name, or embeddings of different dimensions / (pairwise) row counts.
    """
    if name not in SIMILARITY_NAMES:
        raise ValueError(f"Unknown similarity function {name!r}; expected one of {list(SIMILARITY_NAMES)}.")
    a, b = to_csr(embeddings1)[0], to_csr(embeddings2)[0]
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"The embeddings have different dimensions: {a.shape[1]} and {b.shape[1]}.")
    if pairwise:
        if len(a) != len(b):
            raise ValueError(f"similarity_pairwise needs as many rows in both, got {len(a)} and {len(b)}.")
        if name in ("dot", "cosine"):
            a, b = (_normalized(a), _normalized(b)) if name == "cosine" else (a, b)
            width = a.shape[1]  # join on row * width + token: products where both rows are non-zero
            common, ia, ib = np.intersect1d(_row_ids(a) * width + a.indices, _row_ids(b) * width + b.indices,
                                            assume_unique=True, return_indices=True)
            products = a.data[ia].astype(np.float64) * b.data[ib]
            return np.bincount(common // width, weights=products, minlength=len(a)).astype(np.float32)
        rows, diff = _pairwise_difference(a, b)
        if name == "manhattan":
            return -np.bincount(rows, weights=np.abs(diff), minlength=len(a)).astype(np.float32)
        return -np.sqrt(np.bincount(rows, weights=diff**2, minlength=len(a))).astype(np.float32)
    if name in ("dot", "cosine"):
        return _dot_matrix(_normalized(a), _normalized(b)) if name == "cosine" else _dot_matrix(a, b)
    if name == "euclidean":  # as sentence-transformers does for sparse inputs: |a|^2 + |b|^2 - 2 a.b
        squared = _row_sums(a, a.data**2)[:, None] + _row_sums(b, b.data**2)[None, :] - 2 * _dot_matrix(a, b)
        return -np.sqrt(np.maximum(squared, 0.0)).astype(np.float32)
    # manhattan: sum|a - b| = sum|a| + sum over b's non-zeros of (|a_j - b_j| - |a_j|), one dense row of a at a time
    out = np.zeros((len(a), len(b)), dtype=np.float32)
    row = np.zeros(a.shape[1], dtype=np.float64)
    b_rows = _row_ids(b)
    for i in range(len(a)):
        indices, data = a.row(i)
        row[indices] = data
        at_b = row[b.indices]
        out[i] = -(np.abs(data).sum() + np.bincount(b_rows, weights=np.abs(at_b - b.data) - np.abs(at_b), minlength=len(b)))
        row[indices] = 0
    return out


def intersection(embeddings_1: Any, embeddings_2: Any) -> Any:
    """embeddings_1 * embeddings_2 (each row of a 2-D embeddings_2) keeping only the products > 0, i.e. the dimensions
    active in both, as sentence-transformers' SparseEncoder.intersection.

    Args:
        embeddings_1: one sparse embedding (1-D), in any form `to_csr` accepts.
        embeddings_2: one embedding (1-D) or several (2-D) of the same dimension.

    Returns:
        Shaped like embeddings_2: a scipy csr_array when either input is scipy sparse, else SparseEmbeddings.

    Raises:
        ValueError: embeddings_1 is not 1-D, or the dimensions differ.
    """
    a, a_1d = to_csr(embeddings_1)
    if not a_1d:
        raise ValueError(f"Expected one embedding (1-D) for embeddings_1, got shape {tuple(a.shape)}.")
    b, b_1d = to_csr(embeddings_2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"Vocab dimension mismatch: embeddings_1 has {a.shape[1]}, embeddings_2 has {b.shape[1]}.")
    a_indices, a_data = a.row(0)  # ascending: to_csr sorts and sums duplicates
    position = np.searchsorted(a_indices, b.indices)  # where each non-zero of b would sit among a's
    shared = position < len(a_indices)
    shared[shared] = a_indices[position[shared]] == b.indices[shared]
    products = np.zeros(len(b.data), dtype=np.result_type(a.data, b.data))
    products[shared] = a_data[position[shared]] * b.data[shared]
    keep = products > 0
    counts = np.bincount(_row_ids(b)[keep], minlength=len(b))
    result = SparseEmbeddings(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), b.indices[keep],
                              products[keep], b.shape)
    result = result[0] if b_1d else result
    return as_format(result, scipy_sparse(required=True)) if _is_scipy(embeddings_1) or _is_scipy(embeddings_2) else result


def keep_top_k(scores: np.ndarray, k: int | None) -> np.ndarray:
    """Zero all but the k largest |weights| of each row, as sentence-transformers' select_max_active_dims."""
    if k is None or k >= scores.shape[1]:
        return scores
    top = np.argpartition(-np.abs(scores), k - 1, axis=1)[:, :k]
    kept = np.zeros_like(scores)
    np.put_along_axis(kept, top, np.take_along_axis(scores, top, axis=1), axis=1)
    return kept


def as_format(csr: SparseEmbeddings, sparse: Any) -> Any:
    """SparseEmbeddings -> scipy csr_array when `sparse` (the scipy.sparse module) is given."""
    if sparse is None:
        return csr
    return sparse.csr_array((csr.data, csr.indices, csr.indptr), shape=csr.shape)
