"""The result document as a terminal table, a JSON file, a Markdown file and a speed-up vs accuracy plot."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from st_runtime.metrics import SPARSE_TOP_K

Getter = Callable[[dict[str, Any]], Any]
ENGINE_COLORS = {"st_runtime": "tab:red", "ort-floor": "tab:green", "fastembed": "tab:green"}  # else sentence-transformers


def _m(*keys: str) -> Getter:
    def get(row: dict[str, Any]) -> Any:
        value: Any = row.get("metrics", {})
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value
    return get


def _num(digits: int, suffix: str = "") -> Callable[[Any], str]:
    return lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.{digits}f}{suffix}"


def _spread(row: dict[str, Any], key: str = "texts_per_s") -> str:
    low, high = _m(f"{key}_min")(row), _m(f"{key}_max")(row)
    return "-" if low is None else f"{low:,.0f}-{high:,.0f}"


def _gflops(row: dict[str, Any]) -> str:
    value, fraction = _m("gflops")(row), _m("peak_fraction")(row)
    if value is None:
        return "-"
    share = "-" if fraction is None else f"{fraction:.1%}" if fraction < 0.1 else f"{fraction:.0%}"
    return f"{value:,.1f} ({share} {_m('peak_precision')(row)})"


def columns(task: str) -> list[tuple[str, Getter, Callable[[Any], str]]]:
    """(header, value getter, formatter) of every column, per task."""
    queries = task in ("sparse-embedding", "multi-vector-embedding")  # documents and queries are encoded apart
    unit = "pairs/s" if task == "text-ranking" else "docs/s" if queries else "texts/s"
    latency = "q x 100 docs" if task == "text-ranking" else "1 query" if queries else "1 text"
    cols: list[tuple[str, Getter, Callable[[Any], str]]] = [
        (unit, _m("texts_per_s"), _num(0)),
        ("min-max", lambda r: _spread(r), str),
        ("tokens/s", _m("tokens_per_s"), _num(0)),
        ("speed-up", _m("speedup"), _num(2, "x")),
    ]
    if queries:
        cols += [("queries/s", _m("query_texts_per_s"), _num(0)), ("q speed-up", _m("query_speedup"), _num(2, "x"))]
    cols += [
        (f"p50 ms ({latency})", _m("latency_ms", "p50"), _num(2)),
        ("p95 ms", _m("latency_ms", "p95"), _num(2)),
        ("p99 ms", _m("latency_ms", "p99"), _num(2)),
        ("lat. speed-up", _m("latency_speedup"), _num(2, "x")),
        ("cold start s", _m("cold_start_s"), _num(2)),
        ("peak RSS MB", _m("peak_rss_mb"), _num(0)),
        ("file MB", _m("model_size_mb"), _num(1)),
        ("GFLOP/s (of peak est.)", _gflops, str),
    ]
    if task == "sentence-embedding":
        cols += [("mean cos", _m("accuracy", "mean_cosine"), _num(6)), ("min cos", _m("accuracy", "min_cosine"), _num(5)),
                 ("Lee Spearman", _m("accuracy", "lee_spearman"), _num(4))]
    elif task == "text-ranking":
        cols += [("Spearman", _m("accuracy", "spearman"), _num(5)),
                 ("per-query Spearman", _m("accuracy", "mean_query_spearman"), _num(5))]
    elif task == "multi-vector-embedding":
        cols += [("MaxSim Spearman", _m("accuracy", "spearman"), _num(5)),
                 ("rank top10", _m("accuracy", "top10_overlap"), _num(4)),
                 ("min top10", _m("accuracy", "min_top10_overlap"), _num(2))]
    else:
        k = SPARSE_TOP_K
        cols += [(f"doc top{k}", _m("accuracy", f"top{k}_overlap"), _num(4)),
                 (f"min doc top{k}", _m("accuracy", f"min_top{k}_overlap"), _num(3)),
                 (f"query top{k}", _m("accuracy", f"query_top{k}_overlap"), _num(4)),
                 ("Lee Spearman", _m("accuracy", "lee_spearman"), _num(4))]
    return cols


def _label(row: dict[str, Any]) -> str:
    return row["label"] + (" [reference]" if row.get("reference") else "")


def cells(document: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, one list of cells per row that ran, and the lines for rows that were skipped or failed."""
    cols = columns(document["task"])
    header = ["row", *(c[0] for c in cols)]
    body, other = [], []
    for row in document["rows"]:
        if row["status"] != "ok":
            other.append(f"{row['label']}: {row['status']} ({row['note']})")
            continue
        body.append([_label(row), *(fmt(get(row)) for _, get, fmt in cols)])
        if row.get("note"):
            other.append(f"{row['label']}: {row['note']}")
    return header, body, other


def _summary_lines(document: dict[str, Any]) -> list[str]:
    w, s, machine = document["workload"], document["settings"], document["machine"]
    peaks = machine["peak_gflops_estimate"]
    lines = [
        f"model: {document['folder']} ({document['task']}); reference: {document['reference']}",
        f"corpus: {w['corpus']}: {w['texts']} texts, {w['real_tokens']:,} real tokens (median {w['median_tokens']:.0f})"
        + (f", {w['pairs']} pairs" if w["pairs"] and document["task"] == "text-ranking" else ""),
        f"threads {s['threads']}, batch {s['batch_size']}, warm-up {s['warmup']} (latency: passes over its calls), "
        f"median of {s['repeats']} repeats"
        + (f" in each of {s['rounds']} rounds (rows interleaved)" if s.get("rounds", 1) > 1 else "") + "; "
        + (f"latency: {w['rerank_queries']} calls (one query x 100 documents each) per repeat"
           if document["task"] == "text-ranking" else f"latency: {s['latency_n']} calls per repeat"),
        f"CPU: {machine['model']}, {machine['physical_cores']} cores, {machine['mhz'] or '?'} MHz ({machine['clock_source']}), "
        f"ISA {machine['isa']}, flags {' '.join(machine['flags'])}",
        f"peak GFLOP/s (ESTIMATE, {machine['threads_used']} threads): fp32 {peaks['fp32']}, bf16 {peaks['bf16']}, "
        f"int8 {peaks['int8']}; {peaks['note']}",
    ]
    if document["task"] == "multi-vector-embedding":
        lines.append(f"accuracy: MaxSim of {w.get('heldout_texts', 0) // 4} held-out queries x the other "
                     f"{w.get('heldout_texts', 0) - w.get('heldout_texts', 0) // 4} held-out texts as documents "
                     f"(quantizers' held-out set); rank: {w['rerank_queries']} queries x 100 corpus documents, top 10")
    if document.get("flops"):
        f = document["flops"]
        lines.append(f"FLOPs per token: {f['flops_per_token'] / 1e6:.2f} M ({f['formula']}; "
                     f"weights {f['weight_flops_per_token'] / 1e6:.2f} M, attention {f['attention_flops_per_token'] / 1e6:.3f} M "
                     f"at length {f['token_weighted_length']})")
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in document["versions"].items()))
    return lines


def terminal_table(document: dict[str, Any]) -> str:
    """A fixed-width table for the terminal, followed by skipped rows, notes and what the run was measured on."""
    header, body, other = cells(document)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))  # noqa: E731
    out = [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in body)]
    out += [""] + [f"- {o}" for o in other] + [f"note: {n}" for n in document["notes"]]
    out += ["", *_summary_lines(document)]
    return "\n".join(out) + "\n"


def markdown(document: dict[str, Any]) -> str:
    """The same table as Markdown, with the settings, machine and versions, and the command that produced it."""
    header, body, other = cells(document)
    out = [f"# st-bench: {Path(document['folder']).name}", ""]
    if document.get("command"):
        out += ["```", document["command"], "```", ""]
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in body]
    out += [""] + [f"- {o}" for o in other] + [f"- note: {n}" for n in document["notes"]]
    out += [""] + [f"- {line}" for line in _summary_lines(document)]
    out += ["", "Speed-ups are against the reference row of the same run; GFLOP/s are achieved on the bulk corpus, "
            "against an ESTIMATED peak (see docs/bench.md)."]
    return "\n".join(out) + "\n"


def write_json(document: dict[str, Any], path: Path) -> Path:
    Path(path).write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return Path(path)


def write_markdown(document: dict[str, Any], path: Path) -> Path:
    Path(path).write_text(markdown(document), encoding="utf-8")
    return Path(path)


def write_plot(document: dict[str, Any], path: Path) -> Path:
    """Speed-up (x) against the headline accuracy figure (y), one labelled point per row (matplotlib, Agg).

    Raises:
        ImportError: matplotlib is missing (pip install 'st-runtime[bench]').
    """
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("--plot needs matplotlib: pip install 'st-runtime[bench]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    accuracy_key = document["headline_accuracy"]
    rows = [r for r in document["rows"] if r["status"] == "ok"]
    has_ratio = any("speedup" in r["metrics"] for r in rows)
    points = [(r, r["metrics"].get("speedup") if has_ratio else r["metrics"]["texts_per_s"],
               r["metrics"].get("accuracy", {}).get(accuracy_key)) for r in rows]
    points = [(r, x, y) for r, x, y in points if x is not None and y is not None]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    xs, ys = [x for _, x, _ in points] or [1.0], [y for _, _, y in points] or [1.0]
    x_span, y_span = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1e-6
    placed: list[tuple[float, float]] = []
    for number, (row, x, y) in enumerate(points, 1):
        color = ENGINE_COLORS.get(row["engine"], "tab:blue")
        ax.scatter([x], [y], s=40, color=color, zorder=3, label=f"{number}: {_label(row)}")
        # Points on top of each other (fp32 rows at cosine 1.0) get their numbers stacked, not overprinted.
        near = sum(abs(px - x) < 0.04 * x_span and abs(py - y) < 0.04 * y_span for px, py in placed)
        ax.annotate(str(number), (x, y), textcoords="offset points", xytext=(6, 3 + 10 * near), fontsize=8)
        placed.append((x, y))
    ax.set_xlabel(f"speed-up vs {document['reference']} (texts/s ratio)" if has_ratio else "texts/s")
    ax.set_ylabel(f"{accuracy_key} vs the reference")
    ax.set_title(f"{Path(document['folder']).name}: speed vs accuracy, {document['settings']['threads']} threads\n"
                 "blue: sentence-transformers, green: bare onnxruntime loop / fastembed, red: st_runtime", fontsize=9)
    ax.grid(True, alpha=0.3)
    if points:
        ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.14), fontsize=7, frameon=False)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
