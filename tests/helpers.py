"""Assertions shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import st_runtime

FP32_ATOL = 1e-5


def assert_bi_encoder_parity(reference, folder: Path, texts: list[str], atol: float = FP32_ATOL, **kwargs) -> float:
    """Encode `texts` with sentence-transformers and with st_runtime; assert max |diff| <= atol; return it."""
    expected = reference.encode(texts, convert_to_numpy=True, show_progress_bar=False, **kwargs)
    actual = st_runtime.SentenceTransformer(folder).encode(texts, show_progress_bar=False, **kwargs)
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    diff = float(np.abs(actual.astype(np.float64) - expected).max()) if expected.size else 0.0
    assert diff <= atol, f"max abs diff {diff:.3g} > {atol:g}"
    return diff
