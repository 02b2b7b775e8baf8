"""What every kind's parity check shares: the probe texts, which (task, prompt) runs cover every graph and prompt
(`parity_runs`), the comparison of two embedding matrices, and the gate. Each kind's check itself (what it encodes,
what it compares) lives in the kind's module: bi_encoder, cross_encoder, sparse_encoder, multi_vector."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
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
    """Largest absolute element difference and smallest row cosine between two (n, dim) arrays.

    A NaN on one side only counts as an infinite difference (and a row cosine of -1), so that the largest difference
    over several runs (`max`) and the gate never lose it; equal values (NaN on both sides included) count as equal.
    """
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if expected.shape != actual.shape:
        raise ParityError(f"Output shapes differ: sentence-transformers {expected.shape}, exported {actual.shape}.")
    if expected.size == 0:
        return 0.0, 1.0
    same = (expected == actual) | (np.isnan(expected) & np.isnan(actual))
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.nan_to_num(np.where(same, 0.0, np.abs(expected - actual)), nan=np.inf)
        norms = np.linalg.norm(expected, axis=1) * np.linalg.norm(actual, axis=1)
        cosine = (expected * actual).sum(1) / np.maximum(norms, 1e-30)
    cosine = np.where(norms == 0, 1.0, cosine)
    cosine = np.where(same.all(axis=1), 1.0, np.nan_to_num(cosine, nan=-1.0))
    return float(diff.max()), float(cosine.min())


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


def source_dtype_parity(check: Callable[..., dict[str, Any]], reference: Any, folder: Path, dtype: str) -> dict[str, Any]:
    """How far the exported fp32 graph is from sentence-transformers running the source in its own `dtype` (bf16,
    fp16): a kind's parity `check` run without a tolerance while `reference` is in that dtype. The manifest's
    "parity" keeps it beside the fp32 gate's numbers; non-finite outputs of the source dtype (fp16 overflow) are
    recorded as such instead of a difference."""
    try:
        report = check(reference, folder, atol=math.inf)
    except ParityError:  # a NaN difference fails any tolerance
        report = {"max_abs_diff": math.inf}
    if not math.isfinite(report["max_abs_diff"]):
        return {"source_dtype": dtype, "source_dtype_max_abs_diff": None,
                "source_dtype_note": f"sentence-transformers gives non-finite outputs in {dtype} on some probe texts "
                                     "(the fp32 graph does not)"}
    return {"source_dtype": dtype, "source_dtype_max_abs_diff": report["max_abs_diff"],
            **({"source_dtype_min_cosine": report["min_cosine"]} if "min_cosine" in report else {})}
