"""Output precisions of `encode(precision=...)` and `st_runtime.util.quantize_embeddings`, computed as
sentence-transformers' quantize_embeddings does (the 6.x behaviour)."""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np

logger = logging.getLogger("st_runtime")

Precision = Literal["float32", "int8", "uint8", "binary", "ubinary"]
PRECISIONS: tuple[str, ...] = ("float32", "int8", "uint8", "binary", "ubinary")


def quantize_embeddings(
    embeddings: np.ndarray | list[np.ndarray],
    precision: Precision,
    ranges: np.ndarray | None = None,
    calibration_embeddings: np.ndarray | None = None,
) -> np.ndarray | list[np.ndarray]:
    """Quantize float embeddings, as sentence-transformers' `quantize_embeddings`.

    int8/uint8 map each dimension's [min, max] onto 256 buckets; the ranges come from `ranges` (shape (2, dim)),
    else from `calibration_embeddings`, else from `embeddings` themselves (a warning below 100 rows).
    binary/ubinary pack the sign bits (> 0) into bytes, ceil(dim / 8) per row; binary is ubinary - 128 as int8.

    Args:
        embeddings: (n, dim) or (dim,) float array, or a list of (dim,) rows; a list of (tokens, dim) matrices
            (multi-vector) is quantized matrix by matrix with ranges shared across the list.
        precision: "float32", "int8", "uint8", "binary" or "ubinary".
        ranges: (2, dim) per-dimension minimum and maximum for int8/uint8.
        calibration_embeddings: embeddings to take the int8/uint8 ranges from when `ranges` is not given.

    Returns:
        The quantized array (float32, int8 or uint8), or a list of arrays for a list of matrices.

    Raises:
        ValueError: unknown precision, integer (already quantized) input, or int8/uint8 ranges that would have to
            come from a single embedding.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if isinstance(embeddings, list):
        if not embeddings:
            return []
        if isinstance(embeddings[0], np.ndarray) and embeddings[0].ndim == 2:
            if precision.endswith("int8") and ranges is None:  # one set of ranges for every matrix
                calibration = np.concatenate(embeddings) if calibration_embeddings is None else calibration_embeddings
                if len(calibration):
                    ranges = _ranges(calibration, precision, calibration_embeddings)
            return [quantize_embeddings(matrix, precision, ranges, calibration_embeddings) for matrix in embeddings]
    embeddings = np.asarray(embeddings)
    if embeddings.dtype in (np.uint8, np.int8):
        raise ValueError(f"Embeddings to quantize must be float, got {embeddings.dtype} (already quantized?).")
    if embeddings.ndim == 2 and embeddings.shape[0] == 0:
        dim = embeddings.shape[1]
        if precision.endswith("int8"):
            return np.zeros((0, dim), dtype=np.int8 if precision == "int8" else np.uint8)
        if precision.endswith("binary"):
            return np.zeros((0, (dim + 7) // 8), dtype=np.int8 if precision == "binary" else np.uint8)
    if precision == "float32":
        return embeddings.astype(np.float32)
    if precision.endswith("int8"):
        if ranges is None:
            ranges = _ranges(embeddings, precision, calibration_embeddings)
        ranges = np.asarray(ranges).astype(np.float32, copy=False)
        starts = ranges[0]
        steps = (ranges[1] - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        buckets = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
        return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)
    packed = np.packbits(embeddings > 0, axis=-1)
    return packed if precision == "ubinary" else (packed - 128).astype(np.int8)


def _ranges(embeddings: np.ndarray, precision: str, calibration_embeddings: Any) -> np.ndarray:
    """(2, dim) per-dimension min and max of the calibration embeddings, else of `embeddings`.

    Raises:
        ValueError: no calibration embeddings and `embeddings` is a single embedding (every bucket would be 0).
    """
    if calibration_embeddings is None:
        if embeddings.ndim == 1 or embeddings.shape[0] == 1:
            raise ValueError(f"Cannot compute {precision} quantization ranges from a single embedding; pass `ranges` "
                             "or `calibration_embeddings` from a representative set of embeddings (or encode more "
                             "than one text at once).")
        if embeddings.shape[0] < 100:
            logger.warning("Computing %s quantization buckets based on %d embeddings. %s quantization is more stable "
                           "with `ranges` calculated from more embeddings or a `calibration_embeddings` that can be "
                           "used to calculate the buckets.", precision, len(embeddings), precision)
        calibration_embeddings = embeddings
    calibration_embeddings = np.asarray(calibration_embeddings)
    return np.vstack((calibration_embeddings.min(axis=0), calibration_embeddings.max(axis=0)))
