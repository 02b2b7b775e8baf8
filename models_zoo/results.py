"""Validated results: one JSON line per (model, variant) built, appended to a results file, and their markdown
table. Each line says what was measured (size, speed, accuracy against fp32) and on which machine and date."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from models_zoo.errors import ZooError
from models_zoo.sources import cache_dir


def default_results_file() -> Path:
    """<cache>/zoo/results.jsonl (the cache is $ST_RUNTIME_CACHE or $XDG_CACHE_HOME/st-runtime)."""
    return cache_dir() / "zoo" / "results.jsonl"


# CPU features that decide which variants run fast (int8 dot products, bf16, AMX), as /proc/cpuinfo names them.
FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "asimddp", "bf16")


def metric_name(task: str) -> str:
    """What the accuracy score of `task` is (st_runtime.metrics, which the quantizers gate on), as the table's legend
    names it, e.g. "mean cosine"."""
    from st_runtime.metrics import KIND_REPORTS  # imported here: listing recipes stays light

    return KIND_REPORTS[task][1]


def machine() -> dict[str, Any]:
    """The machine results are measured on: CPU model, cores this process may use, the FEATURES its CPU has, OS,
    architecture (st_runtime.machine reads the CPU, as the quantizers and st-bench do)."""
    from st_runtime.machine import cpu_flags, cpu_model  # imported here: listing recipes stays light

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    flags = cpu_flags()
    return {"cpu": cpu_model(), "cores": usable, "features": [f for f in FEATURES if f in flags],
            "system": platform.system(), "arch": platform.machine()}


def describe_machine(m: dict[str, Any]) -> str:
    """E.g. "Intel(R) Xeon(R) Processor (2 cores; avx512_vnni, amx_tile)"."""
    features = ", ".join(f for f in m.get("features") or [] if f not in ("avx2", "avx512f"))
    return f"{m.get('cpu', '?')} ({m.get('cores', '?')} cores{'; ' + features if features else ''})"


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def append_results(records: Iterable[dict[str, Any]], path: str | Path | None = None) -> Path:
    """Append one JSON line per record to the results file (created with its folder if needed); return its path."""
    path = Path(path) if path is not None else default_results_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
    return path


def read_results(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The records of a results file ([] when it does not exist yet).

    Raises:
        ZooError: a line is not a JSON object (the message gives the file and line).
    """
    path = Path(path) if path is not None else default_results_file()
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ZooError(f"{path}:{number} is not valid JSON ({exc}); fix or remove that line.") from exc
        if not isinstance(record, dict) or "model" not in record or "variant" not in record:
            raise ZooError(f"{path}:{number} is not a zoo result (needs at least 'model' and 'variant').")
        records.append(record)
    return records


def latest(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest record per (model, variant, CPU, cores), in model, then build order."""
    newest: dict[tuple, dict[str, Any]] = {}
    for record in records:
        m = record.get("machine") or {}
        key = (record["model"], record["variant"], m.get("cpu"), m.get("cores"))
        if key not in newest or str(record.get("date", "")) >= str(newest[key].get("date", "")):
            newest[key] = record
    order = {id(r): i for i, r in enumerate(records)}
    return sorted(newest.values(), key=lambda r: (r["model"].lower(), r.get("date", ""), order[id(r)]))


def _number(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "–"


def markdown_table(records: Sequence[dict[str, Any]], *, all_records: bool = False) -> str:
    """A markdown table of results (the newest per model, variant and machine unless `all_records`)."""
    rows = list(records) if all_records else latest(records)
    lines = ["| model | variant | precision | size MB | texts/s | speed-up vs fp32 | accuracy vs fp32 | floor | machine | date |",
             "|---|---|---|---:|---:|---:|---|---:|---|---|"]
    for r in rows:
        m = r.get("machine") or {}
        score = r.get("score")
        accuracy = "reference" if score is None else f"{score:.5f} ({r.get('metric', 'score')})"
        speedup = _number(r.get("speedup"), ".2f")
        lines.append("| " + " | ".join([
            str(r["model"]), str(r["variant"]), str(r.get("precision", "")), _number(r.get("size_mb"), ".1f"),
            _number(r.get("texts_per_s"), ".1f"), speedup + ("×" if speedup != "–" else ""), accuracy,
            _number(r.get("floor"), "g"), describe_machine(m),
            str(r.get("date", ""))[:10],
        ]) + " |")
    if not rows:
        lines.append("| (no results yet: run `st-zoo build NAME`) | | | | | | | | | |")
    return "\n".join(lines) + "\n"
