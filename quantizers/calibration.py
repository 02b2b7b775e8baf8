"""Calibration texts -> graph feeds, tokenized exactly as the runtime tokenizes them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from st_runtime.manifest import Manifest
from st_runtime.tokenizer import TextTokenizer

CALIBRATION_BATCH = 8
HISTOGRAM_TEXTS = 96
HISTOGRAM_TOKENS = 128


def calibration_feeds(folder: Path, manifest: Manifest, texts: tuple[str, ...], inputs: tuple[str, ...],
                      batch_size: int = CALIBRATION_BATCH, *, same_length: bool = False) -> list[dict[str, np.ndarray]]:
    """Tokenized batches of `texts` holding only the graph inputs named in `inputs` (length-sorted, so
    batches pad little and the activation ranges are those of real tokens).

    same_length: for calibrators that keep every activation in memory (onnxruntime's entropy and percentile):
        an evenly spaced subset of HISTOGRAM_TEXTS texts, cut at HISTOGRAM_TOKENS tokens and padded to one length.
    """
    if same_length and len(texts) > HISTOGRAM_TEXTS:
        texts = tuple(texts[i] for i in np.linspace(0, len(texts) - 1, HISTOGRAM_TEXTS).astype(int))
    tokenizer = TextTokenizer(folder, manifest.tokenizer)
    ordered = sorted(texts, key=len)
    feeds = []
    for start in range(0, len(ordered), batch_size):
        batch = tokenizer.encode(list(ordered[start : start + batch_size]))
        feeds.append({name: batch[name] for name in inputs if name in batch})
    if same_length and feeds:
        feeds = [{name: a[:, :HISTOGRAM_TOKENS] for name, a in f.items()} for f in feeds]
        longest = max(f["input_ids"].shape[1] for f in feeds)
        pad = {"input_ids": manifest.tokenizer.pad_token_id}
        feeds = [{name: np.pad(a, ((0, 0), (0, longest - a.shape[1])), constant_values=pad.get(name, 0))
                  for name, a in f.items()} for f in feeds]
    return feeds


class FeedsReader:
    """onnxruntime's CalibrationDataReader protocol over prepared feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = feeds
        self._iterator: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iterator, None)

    def rewind(self) -> None:
        self._iterator = iter(self._feeds)
