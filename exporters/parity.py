"""What every kind's parity check shares: the probe texts, which (task, prompt) runs cover every graph and prompt
(`parity_runs`), the comparison of two embedding matrices, and the gate. Each kind's check itself (what it encodes,
what it compares) lives in the kind's module: bi_encoder, cross_encoder, sparse_encoder, multi_vector."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from exporters.errors import ParityError
from st_runtime.manifest import Routing

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


def tasks_covering_routes(routing: Routing | None) -> list[str | None]:
    """One task per graph (None: no task): [None] for a model without routes; for a Router model, a task that reaches
    each route text can reach, in this order: no task for the default route, then the named tasks (sorted; the first
    one per route), then, when only it reaches the route of the tasks the Router does not name, such a task. (A task
    the Router does not name resolves as other_tasks_route says, which may be the default route.)"""
    if routing is None:
        return [None]
    chosen: dict[str, str | None] = {}
    if routing.default_route is not None:
        chosen[routing.default_route] = None
    for task, route in sorted(routing.tasks.items()):
        chosen.setdefault(route, task)
    if routing.other_tasks_route is not None and routing.other_tasks_route not in chosen:
        chosen[routing.other_tasks_route] = next(t for t in ("document", "query", "other-task") if t not in routing.tasks)
    return list(chosen.values())


def stored_prompt_names(prompts: Mapping[str, str | None]) -> list[str | None]:
    """None (no prompt), then the name of every stored non-empty prompt, sorted."""
    return [None, *sorted(name for name, text in prompts.items() if text)]


def parity_runs(routing: Routing | None, prompts: Mapping[str, str | None]) -> list[tuple[str | None, str | None]]:
    """The (task, prompt_name) runs a parity check compares: every graph (`tasks_covering_routes`) without a prompt
    and with each stored prompt (`stored_prompt_names`)."""
    return [(task, name) for task in tasks_covering_routes(routing) for name in stored_prompt_names(prompts)]


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
