"""`--baseline`: compare a run with an earlier result document, row by row, on ratios and accuracy only.

Absolute times depend on the machine and its load; ratios to the reference row of the same run much less. So a
row regresses when
- a ratio (speed-up, latency speed-up, query speed-up: all higher is better) is below baseline x (1 - tolerance), or
- an accuracy figure (cosines, Spearman, top-k overlap: higher is better) is below baseline - accuracy_tolerance
  (absolute: a relative 10% of a cosine would let anything through).
Rows of the baseline that did not run now are reported (and fail the gate only with fail_on_missing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RATIO_KEYS = ("speedup", "latency_speedup", "query_speedup")
LOWER_IS_BETTER = ("mean_abs_diff",)  # informative only: not gated


@dataclass(frozen=True)
class Finding:
    row: str
    metric: str
    baseline: float
    current: float
    limit: float

    def __str__(self) -> str:
        return (f"{self.row}: {self.metric} {self.current:.5g} is below the allowed {self.limit:.5g} "
                f"(baseline {self.baseline:.5g})")


@dataclass
class Comparison:
    regressions: list[Finding] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # baseline rows that did not run now
    problems: list[str] = field(default_factory=list)  # the runs are not comparable (reference or task changed)
    warnings: list[str] = field(default_factory=list)  # comparable, but measured differently (machine, threads)
    compared: int = 0  # figures compared

    def failed(self, fail_on_missing: bool = False) -> bool:
        return bool(self.regressions or self.problems or (fail_on_missing and self.missing))


def parse_tolerance(text: str | float) -> float:
    """"10%" -> 0.10, "0.1" -> 0.1.

    Raises:
        ValueError: not a number, or outside [0, 1).
    """
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ValueError(f"tolerance must be a fraction or a percentage such as 10%, got {text!r}.") from None
    if not 0 <= value < 1:
        raise ValueError(f"tolerance must be between 0 and 100%, got {text!r}.")
    return value


def _ok_rows(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in document.get("rows", []) if r.get("status") == "ok"}


def compare(current: dict[str, Any], baseline: dict[str, Any], *, tolerance: float = 0.10,
            accuracy_tolerance: float = 0.002) -> Comparison:
    """Compare every row of `baseline` that ran with the same row of `current`."""
    result = Comparison()
    for key in ("task", "reference"):
        if current.get(key) != baseline.get(key):
            result.problems.append(f"{key} differs: baseline {baseline.get(key)!r}, now {current.get(key)!r}; "
                                   "ratios and accuracy are not comparable")
    if result.problems:
        return result
    for key, where in (("threads", "settings"), ("model", "machine")):
        if current.get(where, {}).get(key) != baseline.get(where, {}).get(key):
            result.warnings.append(f"{key} differs: baseline {baseline.get(where, {}).get(key)!r}, "
                                   f"now {current.get(where, {}).get(key)!r}")
    for key in ("corpus", "texts"):
        if current.get("workload", {}).get(key) != baseline.get("workload", {}).get(key):
            result.warnings.append(f"workload {key} differs: baseline {baseline.get('workload', {}).get(key)!r}, "
                                   f"now {current.get('workload', {}).get(key)!r}")
    now = _ok_rows(current)
    for row_id, old in _ok_rows(baseline).items():
        if row_id not in now:
            status = next((f"{r['status']}: {r.get('note')}" for r in current.get("rows", []) if r["id"] == row_id),
                          "not in this run")
            result.missing.append(f"{row_id} ({status})")
            continue
        old_m, new_m = old.get("metrics", {}), now[row_id].get("metrics", {})
        for key in RATIO_KEYS:
            if old_m.get(key) is None:
                continue
            result.compared += 1
            limit = old_m[key] * (1 - tolerance)
            if new_m.get(key) is None or new_m[key] < limit:
                result.regressions.append(Finding(row_id, key, old_m[key], new_m.get(key, float("nan")), limit))
        old_acc, new_acc = old_m.get("accuracy", {}), new_m.get("accuracy", {})
        for key, value in old_acc.items():
            if key in LOWER_IS_BETTER or value is None:
                continue
            result.compared += 1
            limit = value - accuracy_tolerance
            if new_acc.get(key) is None or new_acc[key] < limit:
                result.regressions.append(Finding(row_id, f"accuracy.{key}", value, new_acc.get(key, float("nan")), limit))
    return result


def format_comparison(comparison: Comparison, *, tolerance: float, accuracy_tolerance: float) -> str:
    lines = [f"baseline check: {comparison.compared} figures compared (ratios may drop {tolerance:.0%}, "
             f"accuracy {accuracy_tolerance:g})"]
    lines += [f"  NOT COMPARABLE: {p}" for p in comparison.problems]
    lines += [f"  REGRESSION: {f}" for f in comparison.regressions]
    lines += [f"  missing now: {m}" for m in comparison.missing]
    lines += [f"  warning: {w}" for w in comparison.warnings]
    if not (comparison.problems or comparison.regressions):
        lines.append("  no regression")
    return "\n".join(lines) + "\n"
