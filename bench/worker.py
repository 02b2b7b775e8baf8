"""One row of a benchmark, in its own fresh process: `python -m bench.worker SPEC.json --spawn-time T`.

The parent writes SPEC.json (engine, model path, variant, threads, the workload file, the output folder) and
passes the wall-clock time just before it started this process, so the cold start is measured from process start
to the end of the first encode (interpreter start + imports + load + first call). The worker runs the workloads
(warm-up passes, then timed repeats), writes the outputs of the last pass as .npy/.npz and the timings and peak
RSS as result.json into the output folder, and prints `@@ <stage>` lines on stdout so the parent can show progress.

Only the standard library is imported before the clock starts counting the engine's imports.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ENGINES = ("st-torch", "st-onnx", "st-openvino", "st_runtime", "ort-floor", "fastembed")
RANK_TOP_K = 10  # multi-vector encoders: the top of each `rank` over 100 documents that is compared


def stage(name: str) -> None:
    print(f"@@ {name}", flush=True)


def load_engine(spec: dict[str, Any]) -> tuple[Any, dict[str, float]]:
    """Import the engine and load the model; returns (model, {"import_s": ..., "load_s": ...}).

    st_runtime picks the class from the folder's manifest (st_runtime.load); sentence-transformers gets the class the
    parent named in the spec ("model_class", from st_runtime.kinds.TASK_CLASSES: importing st_runtime here would
    count its imports in the torch engines' import time). The bi-encoder peers on the folder's own fp32 file
    ("ort-floor": bench.floor's bare onnxruntime loop; "fastembed": bench.fastembed_peer) import neither.
    """
    engine, threads = spec["engine"], int(spec["threads"])
    t0 = time.perf_counter()
    if engine == "st_runtime":
        import st_runtime

        t1 = time.perf_counter()
        model = st_runtime.load(spec["path"], variant=spec["variant"], intra_op_num_threads=threads)
        return model, {"import_s": t1 - t0, "load_s": time.perf_counter() - t1}
    if engine in ("ort-floor", "fastembed"):  # bi-encoder peers on the folder's fp32 file ("file_name")
        if engine == "ort-floor":
            from bench.floor import BareLoop as peer_class
        else:
            from bench.fastembed_peer import FastembedModel as peer_class
        t1 = time.perf_counter()
        model = peer_class(spec["path"], spec["file_name"], threads)
        return model, {"import_s": t1 - t0, "load_s": time.perf_counter() - t1}

    import torch

    torch.set_num_threads(threads)
    import sentence_transformers

    cls = getattr(sentence_transformers, spec["model_class"])
    kwargs: dict[str, Any] = {"device": "cpu"}
    if engine == "st-onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        kwargs.update(backend="onnx", model_kwargs={"file_name": spec["file_name"], "provider": "CPUExecutionProvider",
                                                    "session_options": options})
    elif engine == "st-openvino":
        model_kwargs: dict[str, Any] = {"ov_config": {"INFERENCE_NUM_THREADS": threads}}
        if spec.get("file_name"):
            model_kwargs["file_name"] = spec["file_name"]
        kwargs.update(backend="openvino", model_kwargs=model_kwargs)
    elif engine != "st-torch":
        raise ValueError(f"Unknown engine {engine!r}; known: {ENGINES}.")
    t1 = time.perf_counter()
    model = cls(spec["path"], **kwargs)
    return model, {"import_s": t1 - t0, "load_s": time.perf_counter() - t1}


def openvino_compiled(model: Any) -> Any:
    """The OpenVINO CompiledModel behind a loaded model (st_runtime's or optimum-intel's); None for other engines."""
    compiled = getattr(getattr(model, "backend", None), "compiled", None)  # st_runtime's OpenVINO backend
    if compiled is None:  # sentence-transformers' backend="openvino": optimum-intel's OVModel
        try:
            compiled = model[0].auto_model.request
        except (AttributeError, TypeError, IndexError, KeyError):
            return None
    if hasattr(compiled, "get_compiled_model"):  # an infer request
        compiled = compiled.get_compiled_model()
    return compiled


def openvino_precision(model: Any) -> str | None:
    """The precision OpenVINO runs its unquantized ops in ("f32", "bf16", ...; it picks bf16 by itself on CPUs with
    AVX-512 BF16 or AMX unless told otherwise), read from the compiled model after the first call; None for other
    engines. Quantized ops (an NNCF IR's FakeQuantize) run in int8 whatever this says: see `openvino_matmul_precisions`."""
    compiled = openvino_compiled(model)
    try:
        value = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    except (AttributeError, RuntimeError, TypeError):
        return None
    return {"bfloat16": "bf16", "f32": "f32", "float32": "f32", "f16": "f16", "float16": "f16", "bf16": "bf16"}.get(
        value.lower().removeprefix("<type: '").removesuffix("'>"), value)


MATMUL_LAYERS = ("FullyConnected", "MatMul")  # the CPU plugin's names in its runtime (execution) graph
_PRECISION_NAMES = {"u8": "int8", "i8": "int8", "f32": "f32", "bf16": "bf16", "f16": "f16"}


def openvino_matmul_precisions(model: Any) -> dict[str, int] | None:
    """How many matmuls of the executed graph run in each precision ({"int8": 48} for an NNCF static-int8 IR), read
    from the compiled model's runtime graph after the first call: a matmul runs in int8 when its activation input is
    u8/i8 (an int8-weights IR decompresses its weights and multiplies f32 activations: f32). None when unreadable."""
    compiled = openvino_compiled(model)
    try:
        ops = compiled.get_runtime_model().get_ordered_ops()
    except (AttributeError, RuntimeError, TypeError):
        return None
    counts: dict[str, int] = {}
    for op in ops:
        info = op.get_rt_info()
        if "layerType" not in info or info["layerType"].astype(str) not in MATMUL_LAYERS:
            continue
        name = op.input(0).get_element_type().get_type_name()
        counts[_PRECISION_NAMES.get(name, name)] = counts.get(_PRECISION_NAMES.get(name, name), 0) + 1
    return counts


def sparse_parts(embeddings: Any) -> dict[str, Any]:
    """CSR parts (indptr, indices, values, shape) of what a sparse encoder returned: a torch sparse tensor, a scipy
    sparse array, st_runtime's SparseEmbeddings or a dense array."""
    import numpy as np

    if hasattr(embeddings, "indptr") and hasattr(embeddings, "indices"):  # scipy CSR, st_runtime SparseEmbeddings
        values = embeddings.data if hasattr(embeddings, "data") else embeddings.values
        return {"indptr": np.asarray(embeddings.indptr, np.int64), "indices": np.asarray(embeddings.indices, np.int64),
                "values": np.asarray(values, np.float32), "shape": np.asarray(embeddings.shape, np.int64)}
    if getattr(embeddings, "is_sparse", False):  # torch COO
        coo = embeddings.coalesce().cpu()
        rows, cols = coo.indices().numpy()
        order = np.lexsort((cols, rows))
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=coo.shape[0]))])
        return {"indptr": indptr.astype(np.int64), "indices": cols[order].astype(np.int64),
                "values": coo.values().numpy()[order].astype(np.float32), "shape": np.asarray(coo.shape, np.int64)}
    dense = np.asarray(embeddings.cpu().numpy() if hasattr(embeddings, "cpu") else embeddings, np.float32)
    rows, cols = np.nonzero(dense)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=dense.shape[0]))])
    return {"indptr": indptr.astype(np.int64), "indices": cols.astype(np.int64), "values": dense[rows, cols],
            "shape": np.asarray(dense.shape, np.int64)}


def heldout_maxsim(model: Any, texts: list[str], batch_size: int) -> Any:
    """MaxSim of the first quarter of `texts` (encode_query) against the rest (encode_document), flattened: the
    multi-vector accuracy of quantizers (st_runtime.metrics), computed by the row's own engine."""
    import numpy as np

    quiet = {"batch_size": batch_size, "show_progress_bar": False}
    queries = texts[: len(texts) // 4]
    scores = model.similarity(model.encode_query(queries, **quiet), model.encode_document(texts[len(queries):], **quiet))
    return np.asarray(scores.cpu() if hasattr(scores, "cpu") else scores, np.float32).ravel()


def rank_ids(model: Any, query: str, documents: list[str], batch_size: int, top_k: int = RANK_TOP_K) -> list[int]:
    """The indices of the top_k documents for `query`, best first: st_runtime's `rank`; sentence-transformers'
    MultiVectorEncoder has none, so for it what `rank` does (encode_query, encode_document, MaxSim, stable sort)."""
    import numpy as np

    quiet = {"batch_size": batch_size, "show_progress_bar": False}
    if hasattr(model, "rank"):
        return [hit["corpus_id"] for hit in model.rank(query, documents, top_k=top_k, **quiet)]
    scores = model.similarity(model.encode_query([query], **quiet), model.encode_document(documents, **quiet))
    scores = np.asarray(scores.cpu() if hasattr(scores, "cpu") else scores)[0]
    return np.argsort(-scores, kind="stable")[:top_k].tolist()


def timed_passes(call: Callable[[], Any], warmup: int, repeats: int) -> tuple[list[float], Any]:
    """Run `call` warmup + repeats times; the seconds of the timed repeats and the last result."""
    result = None
    for _ in range(warmup):
        result = call()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - start)
    return seconds, result


def peak_rss_mb() -> float:
    """This process's peak resident memory: Linux's VmHWM, which starts afresh at exec. (ru_maxrss keeps the RSS the
    process had when it was forked from st-bench, so every row read at least the parent's size.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1024 * 1024)


def latency_calls(call: Callable[[Any], Any], items: list[Any], repeats: int, warmup: int) -> list[list[float]]:
    """Seconds of one call per item, per repeat, after `warmup` untimed passes over the items (steady state: engines
    that prepare kernels per new input shape, as OpenVINO does, pay that in the warm-up as a server does once)."""
    for _ in range(warmup):
        for item in items:
            call(item)
    per_repeat = []
    for _ in range(repeats):
        seconds = []
        for item in items:
            start = time.perf_counter()
            call(item)
            seconds.append(time.perf_counter() - start)
        per_repeat.append(seconds)
    return per_repeat


def run(spec: dict[str, Any], spawn_time: float) -> dict[str, Any]:
    """Load, time the first call, run the task's workloads, write the outputs; returns the result record."""
    import numpy as np

    from bench.workloads import Workload

    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    workload = Workload.load(Path(spec["workload"]))
    task, batch, warmup, repeats = spec["task"], int(spec["batch_size"]), int(spec["warmup"]), int(spec["repeats"])
    stage("load")
    model, times = load_engine(spec)
    quiet = {"batch_size": batch, "show_progress_bar": False}
    first = workload.corpus[0]
    start = time.perf_counter()
    if task == "text-ranking":
        model.predict([(first, first)], **quiet)
    else:
        model.encode([first], **quiet)
    times["first_call_s"] = time.perf_counter() - start
    times["cold_start_s"] = time.time() - spawn_time
    info = ({"inference_precision": openvino_precision(model), "matmul_precisions": openvino_matmul_precisions(model)}
            if spec.get("backend") == "openvino" else {})
    result: dict[str, Any] = {"timings": times, "info": info}

    corpus = list(workload.corpus)
    if task == "sentence-embedding":
        stage("bulk")
        result["bulk_s"], embeddings = timed_passes(lambda: model.encode(corpus, **quiet), warmup, repeats)
        np.save(out / "bulk.npy", np.asarray(embeddings, np.float32))
        stage("latency")
        result["latency_s"] = latency_calls(lambda t: model.encode([t], **quiet), list(workload.latency_texts), repeats,
                                           warmup)
        if workload.lee_documents:
            np.save(out / "lee.npy", np.asarray(model.encode(list(workload.lee_documents), **quiet), np.float32))
    elif task == "sparse-embedding":
        stage("documents")
        result["bulk_s"], docs = timed_passes(lambda: model.encode_document(corpus, **quiet), warmup, repeats)
        np.savez(out / "bulk.npz", **sparse_parts(docs))
        stage("queries")
        queries = list(workload.queries)
        result["query_bulk_s"], encoded = timed_passes(lambda: model.encode_query(queries, **quiet), warmup, repeats)
        np.savez(out / "queries.npz", **sparse_parts(encoded))
        stage("latency")
        result["latency_s"] = latency_calls(lambda q: model.encode_query([q], **quiet), queries, repeats, warmup)
        if workload.lee_documents:
            np.savez(out / "lee.npz", **sparse_parts(model.encode_document(list(workload.lee_documents), **quiet)))
    elif task == "multi-vector-embedding":
        stage("documents")
        result["bulk_s"], _ = timed_passes(lambda: model.encode_document(corpus, **quiet), warmup, repeats)
        stage("queries")
        queries = list(workload.queries)
        result["query_bulk_s"], _ = timed_passes(lambda: model.encode_query(queries, **quiet), warmup, repeats)
        stage("latency")
        result["latency_s"] = latency_calls(lambda q: model.encode_query([q], **quiet), queries, repeats, warmup)
        stage("accuracy")
        np.save(out / "heldout_maxsim.npy", heldout_maxsim(model, list(workload.heldout), batch))
        np.save(out / "rank_top.npy", np.array([rank_ids(model, q, list(docs), batch) for q, docs in workload.rerank],
                                               np.int64).reshape(len(workload.rerank), -1))
    elif task == "text-ranking":
        stage("pairs")
        pairs = workload.pairs
        result["bulk_s"], scores = timed_passes(lambda: model.predict(pairs, **quiet), warmup, repeats)
        np.save(out / "bulk.npy", np.asarray(scores, np.float32))
        stage("latency")
        result["latency_s"] = latency_calls(lambda qd: model.predict([(qd[0], d) for d in qd[1]], **quiet),
                                            list(workload.rerank), repeats, warmup)
    else:
        raise ValueError(f"Unknown task {task!r}.")
    result["peak_rss_mb"] = peak_rss_mb()
    result["torch_imported"] = "torch" in sys.modules
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--spawn-time", type=float, required=True, help="time.time() just before this process started")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text(encoding="utf-8"))
    result = run(spec, args.spawn_time)
    (Path(spec["out"]) / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    stage("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
