"""Where the time of an st_runtime `encode` (a cross-encoder: `predict`) goes, per variant of an exported folder:

    python -m bench.profile FOLDER [--variant V ...] [--threads 2] [--texts 2000] [--rerank-queries 6]
        [--batch-size 32] [--json OUT]

One `encode` of the workload (st-bench's: Lee sentences when gensim's test data is installed, else the held-out
texts; a cross-encoder: `predict` of st-bench's (query, document) pairs) is split into tokenization, graph runs and
the rest (Python: sorting, batching, copying results), measured by timing the model's own tokenizer and backend
calls during that call. The graph runs are then split by op type:
onnxruntime's profiler on the same feeds, or OpenVINO's performance counters (PERF_COUNT) on the same feeds.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.sysinfo import cpu_info
from bench.workloads import build_workload


class Timed:
    """Wrap a callable and add up the seconds spent in it."""

    def __init__(self, call: Any) -> None:
        self.call, self.seconds, self.calls = call, 0.0, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.call(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


def call_and_unit(task: str) -> tuple[str, str]:
    """The call st-bench times for a kind of model and what it takes: `predict` of pairs for a cross-encoder, else
    `encode` of texts."""
    return ("predict", "pairs") if task == "text-ranking" else ("encode", "texts")


def inference(model: Any) -> Any:
    """The model's bound `call_and_unit` method."""
    return getattr(model, call_and_unit(model.manifest.task)[0])


def split_encode(model: Any, items: list[Any], batch_size: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Seconds of one encode (predict) split into tokenize / graph / rest, and the feeds the graph ran on."""
    tokenize, run = Timed(model.tokenizer.tokenize), Timed(model.backend.run)
    feeds: list[dict[str, Any]] = []

    def recording_run(outputs: list[str], batch: dict[str, Any]) -> Any:
        feeds.append(batch)
        return run(outputs, batch)

    model.tokenizer.tokenize, model.backend.run = tokenize, recording_run
    try:
        start = time.perf_counter()
        inference(model)(items, batch_size=batch_size)
        total = time.perf_counter() - start
    finally:
        del model.tokenizer.tokenize, model.backend.run  # back to the class's methods
    return {"total_s": total, "tokenize_s": tokenize.seconds, "graph_s": run.seconds,
            "rest_s": total - tokenize.seconds - run.seconds, "batches": run.calls}, feeds


def onnx_op_times(path: Path, feeds: list[dict[str, Any]], threads: int) -> dict[str, float]:
    """Seconds per op type over the feeds, from onnxruntime's profiler (same session options as st_runtime's)."""
    import onnxruntime as ort

    from st_runtime.providers import session_options

    options = session_options(threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="bench-profile-")) / "ort")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    for batch in feeds:
        session.run(None, {k: v for k, v in batch.items() if k in names})
    trace = json.loads(Path(session.end_profiling()).read_text())
    times: collections.Counter[str] = collections.Counter()
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            times[event["args"]["op_name"]] += event["dur"] / 1e6
    return dict(times)


def openvino_op_times(model: Any, feeds: list[dict[str, Any]], threads: int) -> dict[str, float]:
    """Seconds per layer type (and its execution precision) over the feeds, from OpenVINO's performance counters."""
    from st_runtime.backends import import_openvino

    ov = import_openvino()
    xml = model.folder / model.variant.file
    hint = {"bf16": "bf16", "fp16": "f16"}.get(model.variant.precision or "", "f32")
    compiled = ov.Core().compile_model(str(xml), "CPU", {"PERF_COUNT": True, "INFERENCE_NUM_THREADS": threads,
                                                           "INFERENCE_PRECISION_HINT": hint})
    request = compiled.create_infer_request()
    names = {port.any_name for port in compiled.inputs}
    times: collections.Counter[str] = collections.Counter()
    for batch in feeds:
        request.infer({k: v for k, v in batch.items() if k in names})
        for info in request.profiling_info:
            if info.status == info.Status.EXECUTED:
                times[f"{info.node_type} ({info.exec_type.split('_')[-1]})"] += info.real_time.total_seconds()
    return dict(times)


def profile_variant(folder: Path, variant: str | None, items: list[Any], threads: int, batch_size: int) -> dict[str, Any]:
    """The split and the op times of one variant on `items` (texts; pairs for a cross-encoder)."""
    import st_runtime

    model = st_runtime.load(folder, variant=variant, intra_op_num_threads=threads)
    inference(model)(items[: batch_size * 2], batch_size=batch_size)  # warm-up
    split, feeds = split_encode(model, items, batch_size)
    if model.variant.backend == "openvino":
        ops = openvino_op_times(model, feeds, threads)
    else:
        ops = onnx_op_times(model.folder / model.variant.file, feeds, threads)
    tokens = int(sum(int(f["attention_mask"].sum()) for f in feeds))
    padded = int(sum(f["attention_mask"].size for f in feeds))
    call, unit = call_and_unit(model.manifest.task)
    return {"variant": model.variant.name, "call": call, "unit": unit, **split, "texts": len(items), "tokens": tokens,
            "padded_tokens": padded, "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1]))}


def markdown(result: dict[str, Any], top: int = 8) -> str:
    total = result["total_s"]
    share = lambda s: f"{s:.3f} s ({100 * s / total:.0f}%)"  # noqa: E731
    lines = [f"### {result['variant']}", "",
             f"{result['call']} of {result['texts']} {result['unit']} ({result['tokens']} tokens, {result['padded_tokens']} "
             f"with padding) in {total:.3f} s = {result['texts'] / total:.0f} {result['unit']}/s, {result['batches']} graph "
             "runs", "",
             "| part | time |", "|---|---:|",
             f"| tokenization | {share(result['tokenize_s'])} |", f"| graph runs | {share(result['graph_s'])} |",
             f"| the rest (Python) | {share(result['rest_s'])} |", "",
             "| op type (profiler) | time | share of op time |", "|---|---:|---:|"]
    op_total = sum(result["ops"].values()) or 1.0
    for name, seconds in list(result["ops"].items())[:top]:
        lines.append(f"| {name} | {seconds:.3f} s | {100 * seconds / op_total:.1f}% |")
    rest = sum(list(result["ops"].values())[top:])
    lines.append(f"| other op types | {rest:.3f} s | {100 * rest / op_total:.1f}% |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--variant", action="append", help="variant name (repeatable; default: every variant)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--rerank-queries", type=int, default=6, help="cross-encoders: queries x 100 documents")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    import st_runtime

    manifest = st_runtime.load_manifest(args.folder)
    variants = args.variant or [v.name for v in manifest.variants]
    workload = build_workload(manifest.task, max_texts=args.texts, rerank_queries=args.rerank_queries)
    items = workload.pairs if call_and_unit(manifest.task)[1] == "pairs" else list(workload.corpus)
    cpu = cpu_info()
    print(f"CPU: {cpu['model']} ({cpu['isa']}; {', '.join(cpu['flags'])}); threads {args.threads}; batch size {args.batch_size}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}\n")
    results = []
    for variant in variants:
        results.append(profile_variant(args.folder, variant, items, args.threads, args.batch_size))
        print(markdown(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
