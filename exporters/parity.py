"""Parity gate: the exported folder, run by st_runtime, against sentence-transformers on the same texts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sentence_transformers import SentenceTransformer as TorchSentenceTransformer

import st_runtime
from exporters.errors import ParityError

# Short, long (past any max_seq_length), empty, unicode and mixed-script texts, batched together so padding is exercised.
PROBE_TEXTS: tuple[str, ...] = (
    "A man is eating food.",
    "",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "Zürich, Москва, 東京 and القاهرة are cities; emoji 🙂 and accents éàü too.",
    "What is the capital of France?",
    " ".join(["Long inputs must be truncated exactly where sentence-transformers truncates them."] * 60),
    "ok",
    "Paris is the capital and most populous city of France, with an estimated population of two million.",
    "  leading and trailing spaces  ",
    "Numbers 3.14159, 2026-11-23 and e-mail someone@example.com",
)


def max_abs_and_min_cosine(expected: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """Largest absolute element difference and smallest row cosine between two (n, dim) arrays."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if expected.shape != actual.shape:
        raise ParityError(f"Output shapes differ: sentence-transformers {expected.shape}, exported {actual.shape}.")
    if expected.size == 0:
        return 0.0, 1.0
    norms = np.linalg.norm(expected, axis=1) * np.linalg.norm(actual, axis=1)
    cosine = (expected * actual).sum(1) / np.maximum(norms, 1e-30)
    cosine = np.where(norms == 0, 1.0, cosine)
    return float(np.abs(expected - actual).max()), float(cosine.min())


def check_bi_encoder_parity(
    reference: TorchSentenceTransformer, folder: Path, *, atol: float, texts: tuple[str, ...] = PROBE_TEXTS
) -> dict[str, Any]:
    """Encode `texts` (and, for each stored prompt, `texts` with that prompt) with both; for a Router model, also
    with every task that has a route (each route's graph); raise above `atol`.

    Returns:
        {"max_abs_diff", "min_cosine", "texts", "atol"} for the manifest.

    Raises:
        ParityError: when the largest difference exceeds `atol`.
    """
    runtime = st_runtime.SentenceTransformer(folder)
    worst, min_cos, count = 0.0, 1.0, 0
    routing = runtime.manifest.routing
    tasks = [None] if routing is None or routing.default_route else []
    tasks += sorted(routing.tasks) if routing else []
    tasks = tasks or ["document"]  # a Router whose every task falls to other_tasks_route: any task name will do
    prompt_names = [None, *sorted(name for name, text in reference.prompts.items() if text)]
    for task, prompt_name in [(task, None) for task in tasks] + [(tasks[0], name) for name in prompt_names[1:]]:
        task_kwargs = {"task": task} if task is not None else {}
        expected = reference.encode(list(texts), prompt_name=prompt_name, batch_size=4, show_progress_bar=False,
                                    **task_kwargs)
        actual = runtime.encode(list(texts), prompt_name=prompt_name, batch_size=4, show_progress_bar=False, task=task)
        diff, cosine = max_abs_and_min_cosine(expected, actual)
        worst, min_cos, count = max(worst, diff), min(min_cos, cosine), count + len(texts)
    return parity_gate({"max_abs_diff": worst, "min_cosine": min_cos, "texts": count, "atol": atol}, "The exported graph")


def parity_gate(report: dict[str, Any], what: str) -> dict[str, Any]:
    """Return the parity report for the manifest, or raise when its max_abs_diff exceeds its atol (NaN fails too).

    Raises:
        ParityError: naming `what` differed, by how much, and that nothing was written.
    """
    worst, atol = report["max_abs_diff"], report["atol"]
    if not worst <= atol:
        cosine = f", min cosine {report['min_cosine']:.6f}" if "min_cosine" in report else ""
        raise ParityError(
            f"{what} differs from sentence-transformers by {worst:.3g} (tolerance {atol:g}{cosine}); nothing was "
            "written. This is an exporter bug for this architecture: please report it."
        )
    return report
