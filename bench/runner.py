"""`run_bench()`: plan the rows, make the peers' files, run every row in a fresh worker process on the same texts
and thread settings, and turn the workers' timings and outputs into ratios, percentiles and accuracy figures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import bench
from bench import quality, rows, sysinfo
from bench.flops import GraphFlops, count_graph_flops, token_weighted_length
from bench.workloads import Workload, build_workload, token_counts
from st_runtime.errors import StRuntimeError
from st_runtime.kinds import TASK_CLASSES
from st_runtime.manifest import Manifest, load_manifest

SCHEMA = "st-bench/1"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS",
                    "RAYON_RS_NUM_CPUS")


class BenchError(StRuntimeError, RuntimeError):
    """A run could not be set up (bad folder, no runnable reference); the message says what to do."""


@dataclass(frozen=True)
class BenchConfig:
    """Everything a run depends on (the CLI flags)."""

    folder: Path
    source: Path | None = None
    variants: tuple[str, ...] | None = None  # None: every variant in the manifest
    peers: tuple[str, ...] = rows.PEERS
    threads: int | None = None  # None: every core this process may use
    batch_size: int = 32
    repeats: int = 3
    warmup: int = 1
    rounds: int = 1  # the whole plan this many times, rows interleaved (a host whose speed drifts treats all alike)
    corpus: Path | None = None
    max_texts: int | None = None
    latency_n: int = 100
    rerank_queries: int = 20
    row_timeout: float = 1800.0
    workdir: Path | None = None  # kept after the run when given
    progress: bool | None = None  # None: when stderr is a terminal

    def resolved_threads(self) -> int:
        if self.threads is not None:
            if self.threads < 1:
                raise BenchError(f"--threads must be >= 1, got {self.threads}.")
            return self.threads
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker_env(threads: int) -> dict[str, str]:
    """The environment of every child: the thread count pinned for every library that reads one, and this
    checkout of bench / st_runtime importable."""
    env = dict(os.environ)
    env.update({name: str(threads) for name in THREAD_VARIABLES})
    root = str(Path(bench.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("TOKENIZERS_PARALLELISM", "true")
    return env


def _last_line(path: Path) -> str:
    """The last line a child wrote on stderr: for a Python error, the exception and its message."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()] \
        if path.is_file() else []
    return lines[-1] if lines else "no output"


def run_worker(spec: dict[str, Any], folder: Path, env: dict[str, str], timeout: float,
               on_stage: Callable[[str], None]) -> dict[str, Any]:
    """Run one row in a fresh `python -m bench.worker`; its result.json, or {"error": ...}."""
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps({**spec, "out": str(folder)}), encoding="utf-8")
    log = folder / "stderr.log"
    timed_out = threading.Event()
    with open(log, "w", encoding="utf-8") as err:
        spawn = time.time()
        process = subprocess.Popen([sys.executable, "-m", "bench.worker", str(spec_path), "--spawn-time", repr(spawn)],
                                   stdout=subprocess.PIPE, stderr=err, env=env, text=True)
        timer = threading.Timer(timeout, lambda: (timed_out.set(), process.kill()))
        timer.start()
        try:
            for line in process.stdout or ():
                if line.startswith("@@ "):
                    on_stage(line[3:].strip())
            code = process.wait()
        finally:
            timer.cancel()
    if timed_out.is_set():
        return {"error": f"timed out after {timeout:.0f} s (--row-timeout)"}
    if code != 0 or not (folder / "result.json").is_file():
        return {"error": f"worker exited with {code}: {_last_line(log)}"}
    return json.loads((folder / "result.json").read_text(encoding="utf-8"))


def merge_rounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row's worker results of every round as one: the timed passes and latency calls of all rounds together,
    the median cold start, the highest peak RSS; the rest (info, outputs) from the last round. A round that failed
    fails the row."""
    failed = next((run for run in runs if "error" in run), None)
    if failed is not None or len(runs) == 1:
        return failed or runs[0]
    merged = dict(runs[-1])
    for key in ("bulk_s", "query_bulk_s", "latency_s"):
        if key in merged:
            merged[key] = [value for run in runs for value in run[key]]
    merged["timings"] = {key: float(np.median([run["timings"][key] for run in runs])) for key in runs[-1]["timings"]}
    merged["peak_rss_mb"] = max(run["peak_rss_mb"] for run in runs)
    return merged


def prepare_peers(source: Path, task: str, isa: str, out: Path, env: dict[str, str], *, onnx: bool, openvino: bool,
                  timeout: float) -> dict[str, dict[str, str]]:
    """sentence-transformers' own ONNX / int8 / OpenVINO files, made by `python -m bench.peers` in a child process."""
    command = [sys.executable, "-m", "bench.peers", str(source), task, str(out), "--isa", isa]
    command += ["--onnx"] * onnx + ["--openvino"] * openvino
    log = out / "peers-stderr.log"
    out.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as err:
        try:
            done = subprocess.run(command, stdout=subprocess.PIPE, stderr=err, env=env, text=True, timeout=timeout,
                                  check=False)
        except subprocess.TimeoutExpired:
            return {k: {"error": "timed out"} for k in ("onnx", "openvino")}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        message = f"bench.peers exited with {done.returncode}: {_last_line(log)}"
        return {k: {"error": message} for k in ("onnx", "openvino")}
    return json.loads(lines[-1])


def percentiles(seconds: list[list[float]]) -> dict[str, float]:
    """p50/p95/p99 in ms over every call of every repeat, and the spread of the per-repeat p50."""
    calls = np.concatenate([np.asarray(s, np.float64) for s in seconds]) * 1000
    per_repeat = [float(np.percentile(np.asarray(s) * 1000, 50)) for s in seconds]
    return {"p50": float(np.percentile(calls, 50)), "p95": float(np.percentile(calls, 95)),
            "p99": float(np.percentile(calls, 99)), "p50_min": min(per_repeat), "p50_max": max(per_repeat),
            "calls": int(calls.size)}


def throughput(seconds: list[float], items: int) -> dict[str, float]:
    """Items per second: median over repeats, and the slowest / fastest repeat."""
    rates = items / np.asarray(seconds, np.float64)
    return {"median": float(np.median(rates)), "min": float(rates.min()), "max": float(rates.max()),
            "seconds": float(np.median(seconds))}


def row_metrics(row: rows.RowSpec, result: dict[str, Any], workload: Workload, tokens: dict[str, np.ndarray],
                flops: GraphFlops | None, peaks: dict[str, Any], *, task: str) -> dict[str, Any]:
    """Absolute figures of one row (ratios are added once the reference is known)."""
    bulk_items = len(workload.pairs) if task == "text-ranking" else len(workload.corpus)
    bulk = throughput(result["bulk_s"], bulk_items)
    metrics: dict[str, Any] = {
        "texts_per_s": bulk["median"], "texts_per_s_min": bulk["min"], "texts_per_s_max": bulk["max"],
        "tokens_per_s": float(tokens["bulk"].sum() / bulk["seconds"]),
        "latency_ms": percentiles(result["latency_s"]),
        "cold_start_s": result["timings"]["cold_start_s"],
        "cold_start_parts_s": {k: v for k, v in result["timings"].items() if k != "cold_start_s"},
        "peak_rss_mb": result["peak_rss_mb"],
        "model_size_mb": sum(os.path.getsize(f) for f in row.weight_files) / 2**20 if row.weight_files else None,
    }
    if "query_bulk_s" in result:
        queries = throughput(result["query_bulk_s"], len(workload.queries))
        metrics.update(query_texts_per_s=queries["median"], query_texts_per_s_min=queries["min"],
                       query_texts_per_s_max=queries["max"])
    if flops is not None:
        precision = "bf16" if result["info"].get("inference_precision") == "bf16" and row.precision == "fp32" else row.precision
        gflops = metrics["tokens_per_s"] * flops.per_token(token_weighted_length(tokens["bulk"])) / 1e9
        peak = peaks.get(precision)
        metrics.update(gflops=gflops, peak_precision=precision, peak_fraction=gflops / peak if peak else None)
    return metrics


def add_ratios(metrics: dict[str, Any], reference: dict[str, Any]) -> None:
    """Speed-ups against the reference row of the same run (never absolute times)."""
    metrics["speedup"] = metrics["texts_per_s"] / reference["texts_per_s"]
    metrics["latency_speedup"] = reference["latency_ms"]["p50"] / metrics["latency_ms"]["p50"]
    if "query_texts_per_s" in metrics and "query_texts_per_s" in reference:
        metrics["query_speedup"] = metrics["query_texts_per_s"] / reference["query_texts_per_s"]


def _tokens(folder: Path, manifest: Manifest, workload: Workload) -> dict[str, np.ndarray]:
    """Real tokens of each workload's items, with the prompts the encode calls add."""
    prompts = manifest.prompts
    default = prompts.get(manifest.default_prompt_name or "", "")
    if manifest.task == "text-ranking":
        return {"bulk": token_counts(folder, workload.pairs)}
    if manifest.task in ("sparse-embedding", "multi-vector-embedding"):
        doc_prompt = next((prompts[n] for n in ("document", "passage", "corpus") if n in prompts), default)
        # multi-vector documents are truncated at their document_length (None: max_seq_length)
        length = manifest.task_config.document_length if manifest.task == "multi-vector-embedding" else None
        return {"bulk": token_counts(folder, [doc_prompt + t for t in workload.corpus], max_seq_length=length),
                "queries": token_counts(folder, [prompts.get("query", default) + t for t in workload.queries])}
    return {"bulk": token_counts(folder, [default + t for t in workload.corpus])}


def _graph_flops(folder: Path, manifest: Manifest, notes: list[str]) -> GraphFlops | None:
    fp32 = next((v for v in manifest.variants if v.name == "fp32" and v.file.endswith(".onnx")), None)
    if fp32 is None:
        notes.append("no fp32 ONNX graph in the folder: no GFLOP/s")
        return None
    try:
        return count_graph_flops(folder / fp32.file)
    except (ImportError, ValueError) as exc:
        notes.append(f"no GFLOP/s: {exc}")
        return None


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Run every row and return the result document (what --json writes).

    A row that cannot run (missing package, failed export or worker) is reported in the document with its reason;
    when the reference itself fails, st_runtime fp32 (if it ran) becomes the reference and a note says so.

    Raises:
        ManifestError: the folder is not an exported folder, or --variants names a variant it lacks.
        BenchError: bad settings (repeats, batch size, threads, a --source that is not a folder, an empty --corpus,
            --max-texts, --latency-n or --rerank-queries below 1).
        FileNotFoundError: a --corpus file that is missing.
    """
    from tqdm.auto import tqdm

    if config.repeats < 1 or config.rounds < 1 or config.warmup < 0 or config.batch_size < 1:
        raise BenchError("--repeats, --rounds and --batch-size must be >= 1 and --warmup >= 0.")
    if config.source is not None and not Path(config.source).is_dir():
        raise BenchError(f"--source {str(config.source)!r} is not a folder; pass a local sentence-transformers model folder.")
    folder = Path(config.folder)
    manifest = load_manifest(folder)
    threads = config.resolved_threads()
    notes: list[str] = []
    cpu = sysinfo.cpu_info()
    selected = rows.select_variants(manifest, list(config.variants) if config.variants else None)
    plan = rows.peer_rows(Path(config.source) if config.source else None, tuple(config.peers), cpu["isa"],
                          task=manifest.task)
    plan += rows.file_peer_rows(folder, manifest, tuple(config.peers))
    plan += rows.runtime_rows(folder, selected)
    reference_id = rows.choose_reference(plan)
    if reference_id == rows.REFERENCE_FP32 and reference_id not in {r.id for r in plan}:
        plan += rows.runtime_rows(folder, rows.select_variants(manifest, ["fp32"]))
        notes.append("st_runtime fp32 was added to the rows: it is the reference")
    if reference_id == rows.REFERENCE_FP32:
        recorded = manifest.source.get("name_or_path")
        notes.append("reference is st_runtime fp32 (no sentence-transformers torch row)"
                     + (f"; pass --source {recorded} to compare against sentence-transformers" if recorded else ""))

    try:
        workload = build_workload(manifest.task, corpus_file=config.corpus, max_texts=config.max_texts,
                                  latency_n=config.latency_n, rerank_queries=config.rerank_queries)
    except ValueError as exc:  # an empty --corpus, a --max-texts / --latency-n / --rerank-queries below 1
        raise BenchError(str(exc)) from exc
    notes += workload.notes
    tokens = _tokens(folder, manifest, workload)
    flops = _graph_flops(folder, manifest, notes)
    cores = min(threads, cpu["physical_cores"])
    peaks = sysinfo.peak_gflops(cores, cpu["mhz"], cpu["flags"])

    own_workdir = config.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="st-bench-")) if own_workdir else Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    env = worker_env(threads)
    workload_file = workload.save(workdir / "workload.json")
    runs_by_row: dict[str, list[dict[str, Any]]] = {}  # every round's worker result, per row id
    try:
        runnable = [r for r in plan if r.skip is None]
        wants = {r.engine for r in runnable}
        with tqdm(total=len(runnable) * config.rounds + ("st-onnx" in wants or "st-openvino" in wants), desc="st-bench",
                  unit="row", disable=None if config.progress is None else not config.progress, file=sys.stderr) as bar:
            if "st-onnx" in wants or "st-openvino" in wants:
                bar.set_postfix_str("sentence-transformers exports its ONNX/OpenVINO files")
                prepared = prepare_peers(Path(config.source), manifest.task, cpu["isa"], workdir / "peers", env,
                                         onnx="st-onnx" in wants, openvino="st-openvino" in wants,
                                         timeout=config.row_timeout)
                plan = [rows.with_peer_files(r, prepared, workdir / "peers")
                        if r.skip is None and r.engine in ("st-onnx", "st-openvino") else r for r in plan]
                bar.update(1)
            for round_ in range(config.rounds):
                order = list(enumerate(plan))
                for index, row in order if round_ % 2 == 0 else reversed(order):  # odd rounds backwards: linear drift cancels
                    if row.skip is not None:
                        continue
                    spec = {"id": row.id, "engine": row.engine, "backend": row.backend, "task": manifest.task,
                            "model_class": TASK_CLASSES[manifest.task], "path": row.path,
                            "variant": row.variant, "file_name": row.file_name, "threads": threads,
                            "batch_size": config.batch_size, "repeats": config.repeats, "warmup": config.warmup,
                            "workload": str(workload_file)}
                    runs_by_row.setdefault(row.id, []).append(
                        run_worker(spec, workdir / f"row{index:02d}", env, config.row_timeout,
                                   lambda s, rid=row.id: bar.set_postfix_str(f"{rid}: {s}")))
                    bar.update(1)
        results = {rid: merge_rounds(runs) for rid, runs in runs_by_row.items()}
        document = _assemble(config, manifest, plan, results, workload, tokens, flops, peaks, reference_id, workdir,
                             threads, cpu, notes)
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return document


def _assemble(config: BenchConfig, manifest: Manifest, plan: list[rows.RowSpec], results: dict[str, dict[str, Any]],
              workload: Workload, tokens: dict[str, np.ndarray], flops: GraphFlops | None, peaks: dict[str, Any],
              reference_id: str, workdir: Path, threads: int, cpu: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    out_dirs = {r.id: workdir / f"row{i:02d}" for i, r in enumerate(plan)}
    ok = {rid for rid, res in results.items() if "error" not in res}
    if reference_id not in ok and rows.REFERENCE_FP32 in ok and reference_id != rows.REFERENCE_FP32:
        notes.append(f"the reference {reference_id} failed; st_runtime fp32 is the reference instead")
        reference_id = rows.REFERENCE_FP32
    if reference_id not in ok:
        notes.append(f"the reference {reference_id} did not run: no ratios and no accuracy against it")
    metrics = {rid: row_metrics(next(r for r in plan if r.id == rid), results[rid], workload, tokens, flops, peaks,
                                task=manifest.task) for rid in ok}
    similarity = manifest.similarity_fn_name or ("dot" if manifest.task == "sparse-embedding" else "cosine")
    table = []
    for row in plan:
        entry: dict[str, Any] = {"id": row.id, "label": row.label, "engine": row.engine, "variant": row.variant,
                                 "precision": row.precision, "backend": row.backend, "reference": row.id == reference_id,
                                 "status": "ok", "note": row.note}
        if row.skip is not None:
            entry.update(status="skipped", note=row.skip)
        elif row.id not in ok:
            entry.update(status="error", note=results.get(row.id, {}).get("error", "did not run"))
        else:
            m = metrics[row.id]
            if reference_id in ok:
                add_ratios(m, metrics[reference_id])
            m["accuracy"] = quality.row_accuracy(
                manifest.task, out_dirs[reference_id] if reference_id in ok else None, out_dirs[row.id],
                lee_scores=workload.lee_scores, similarity_fn_name=similarity)
            info = results[row.id].get("info", {})
            if info.get("inference_precision"):
                entry["inference_precision"] = info["inference_precision"]
            runs, mismatch = rows.what_runs(row.precision, info)  # from the compiled model, not the hint alone
            if runs:
                entry["runs"] = runs
            if mismatch:  # e.g. bf16 picked by OpenVINO itself, or an int8 IR whose matmuls run in f32
                entry["note"] = mismatch
            if row.engine == "st_runtime" and results[row.id].get("torch_imported"):
                entry["note"] = "torch was imported by st_runtime (it must not be)"
            entry["metrics"] = m
        table.append(entry)
    lengths = tokens["bulk"]
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "folder": str(config.folder), "source": str(config.source) if config.source else None,
        "task": manifest.task, "reference": reference_id, "headline_accuracy": quality.HEADLINE[manifest.task],
        "settings": {"threads": threads, "batch_size": config.batch_size, "repeats": config.repeats,
                     "rounds": config.rounds, "warmup": config.warmup, "latency_n": config.latency_n,
                     "max_texts": config.max_texts},
        "workload": {"corpus": workload.corpus_name, "texts": len(workload.corpus), "pairs": len(workload.pairs),
                     "queries": len(workload.queries), "rerank_queries": len(workload.rerank),
                     "real_tokens": int(lengths.sum()),
                     "median_tokens": float(np.median(lengths)) if lengths.size else 0.0,
                     "lee_documents": len(workload.lee_documents), "heldout_texts": len(workload.heldout)},
        "machine": {**cpu, "threads_used": threads, "peak_gflops_estimate": peaks},
        "flops": flops.describe(token_weighted_length(lengths)) if flops else None,
        "versions": sysinfo.package_versions(),
        "notes": notes,
        "rows": table,
    }


__all__ = ["BenchConfig", "BenchError", "run_bench"]
