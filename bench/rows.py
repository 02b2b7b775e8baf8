"""Which rows a run has: the sentence-transformers peers (torch fp32, its own ONNX file and int8 file, OpenVINO), for
bi-encoders the other loaders of the exported fp32 file (a bare onnxruntime loop, fastembed), and every selected
variant of the exported folder through st_runtime; and which of them is the 1.0 reference."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from st_runtime.errors import ManifestError
from st_runtime.manifest import Manifest, Variant

ST_PEERS = ("torch", "onnx", "onnx-int8", "openvino")  # sentence-transformers on the --source model
FILE_PEERS = ("floor", "fastembed")  # bi-encoders: what a user would run on the exported fp32 file instead of st_runtime
PEERS = ST_PEERS + FILE_PEERS
REFERENCE_TORCH = "st:torch"
REFERENCE_FP32 = "st_runtime:fp32"


@dataclass(frozen=True)
class RowSpec:
    """One row: what runs, on which files, and what it is compared by."""

    id: str  # stable key, used by --baseline: "st:torch", "st:onnx:qint8_avx512_vnni", "floor:fp32", "st_runtime:fp32", ...
    label: str
    engine: str  # bench.worker.ENGINES
    path: str = ""  # model folder the engine loads
    variant: str | None = None  # st_runtime: the manifest variant
    file_name: str | None = None  # sentence-transformers backends, floor, fastembed: the file inside `path`
    precision: str = "fp32"  # which peak the GFLOP/s are set against: fp32, bf16 or int8
    backend: str = "onnxruntime"  # what runs the graph: torch, onnxruntime, openvino
    weight_files: tuple[str, ...] = ()  # the files counted as the model's size
    skip: str | None = None  # why the row does not run (reported as a skipped row)
    note: str | None = None


def found(module: str) -> bool:
    """Whether a module is importable, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


def select_variants(manifest: Manifest, names: list[str] | None) -> list[Variant]:
    """The manifest's variants in its order, or the named ones.

    Raises:
        ManifestError: a name is not a variant of the folder; the message lists the available ones.
    """
    if not names:
        return list(manifest.variants)
    known = {v.name: v for v in manifest.variants}
    missing = [n for n in names if n not in known]
    if missing:
        raise ManifestError(f"No variant {', '.join(map(repr, missing))} in this folder. "
                            f"Available: {', '.join(known)}.")
    return [known[n] for n in dict.fromkeys(names)]


def variant_files(folder: Path, variant: Variant) -> tuple[str, ...]:
    """The graph file of a variant and its weights (ONNX external data; the .bin of an OpenVINO IR)."""
    path = folder / variant.file
    companions = [path.with_suffix(".bin")] if path.suffix == ".xml" else list(path.parent.glob(path.name + "_data*"))
    return tuple(str(p) for p in [path, *companions] if p.is_file())


def precision_of(variant: Variant) -> str:
    """Which peak applies: int8 variants the int8 one, bf16 inference the bf16 one, everything else fp32."""
    if variant.precision == "int8":  # "int8-weights" (weight compression) computes in floating point
        return "int8"
    if (variant.inference_precision or variant.precision) == "bf16":
        return "bf16"
    return "fp32"


def runs_label(variant: Variant) -> str | None:
    """What a variant computes in, from its manifest facts, when its precision alone does not say it.

    An NNCF static-int8 IR (precision "int8", OpenVINO) runs its quantized matmuls in int8 and every other op in its
    inference precision: "int8 matmuls + fp32 rest". An int8-weights IR stores int8 weights and computes in floating
    point: "runs fp32". `what_runs` checks the int8 claim against the compiled model after the run.
    """
    runs = variant.inference_precision
    if variant.backend == "openvino" and variant.precision == "int8":
        return f"int8 matmuls + {runs or 'fp32'} rest"
    return f"runs {runs}" if runs not in (None, variant.precision) else None


def what_runs(precision: str, info: dict[str, Any]) -> tuple[str | None, str | None]:
    """What OpenVINO really ran for a row of `precision` ("fp32", "bf16", "int8"), read by the worker from the compiled
    model: its inference precision (everything not quantized) and the input precision of each matmul.

    Returns:
        (what runs, e.g. "int8 matmuls (48 of 48), f32 rest" or "bf16"; None when unknown),
        (a note when that is not what the row claims, e.g. "OpenVINO runs bf16, not fp32"; else None).
    """
    hint = info.get("inference_precision")
    matmuls: dict[str, int] = info.get("matmul_precisions") or {}
    int8, total = matmuls.get("int8", 0), sum(matmuls.values())
    if precision == "int8":  # the hint says nothing about the quantized ops: only the compiled matmuls do
        if int8:
            return f"int8 matmuls ({int8} of {total}), {hint or 'f32'} rest", None
        if total:
            return hint, f"OpenVINO runs none of the {total} matmuls in int8 ({hint or 'f32'} throughout)"
        return None, None
    if hint and hint != {"fp32": "f32", "fp16": "f16"}.get(precision, precision):  # e.g. bf16 picked by OpenVINO
        return hint, f"OpenVINO runs {hint}, not {precision}"
    return hint, None


def runtime_rows(folder: Path, variants: list[Variant]) -> list[RowSpec]:
    rows = []
    for v in variants:
        runs = runs_label(v)
        named = v.precision == v.name or (runs or "").startswith(v.precision + " ")  # said by the name or `runs`
        detail = ", ".join(x for x in (None if named else v.precision, v.isa,
                                       v.backend if v.backend != "onnxruntime" else None, runs) if x)
        label = f"st_runtime {v.name}" + (f" ({detail})" if detail else "")
        rows.append(RowSpec(id=f"st_runtime:{v.name}", label=label, engine="st_runtime",
                            path=str(folder), variant=v.name, precision=precision_of(v), backend=v.backend,
                            weight_files=variant_files(folder, v)))
    return rows


# Why sentence-transformers' own backends of a MultiVectorEncoder (which needs sentence-transformers >= 6, so
# transformers >= 5) are missing: they exist, but the optimum packages cap transformers.
MULTI_VECTOR_HINTS = {
    "optimum.onnxruntime": "sentence-transformers 6 offers backend=\"onnx\" for MultiVectorEncoder, but optimum-onnx "
                           "caps transformers below 4.58 and MultiVectorEncoder needs transformers >= 5: the two do not "
                           "install together",
    "optimum.intel": "sentence-transformers 6 offers backend=\"openvino\" for MultiVectorEncoder through optimum-intel, "
                     "which caps transformers below 5.6: pip install 'optimum-intel[openvino]' 'transformers<5.6'",
}


def peer_rows(source: Path | None, peers: tuple[str, ...], isa: str, task: str | None = None) -> list[RowSpec]:
    """The sentence-transformers rows before their files exist (paths are filled in by `with_peer_files`).

    Args:
        task: the folder's task; a multi-vector encoder's rows need sentence-transformers >= 6 (MultiVectorEncoder).
    """
    if not peers:
        return []
    rows = []
    int8 = f"int8_{isa}"  # the final name comes from the file sentence-transformers writes (with_peer_files)
    plans = {
        "torch": RowSpec(id=REFERENCE_TORCH, label="sentence-transformers, torch fp32", engine="st-torch", backend="torch"),
        "onnx": RowSpec(id="st:onnx", label='sentence-transformers backend="onnx"', engine="st-onnx"),
        "onnx-int8": RowSpec(id=f"st:onnx:{int8}", label=f'sentence-transformers backend="onnx", {int8}',
                             engine="st-onnx", precision="int8"),
        "openvino": RowSpec(id="st:openvino", label='sentence-transformers backend="openvino"', engine="st-openvino",
                            backend="openvino"),
    }
    needs = {"torch": ("torch", "sentence_transformers"), "onnx": ("sentence_transformers", "optimum.onnxruntime"),
             "onnx-int8": ("sentence_transformers", "optimum.onnxruntime"),
             "openvino": ("sentence_transformers", "optimum.intel")}
    for peer in ST_PEERS:
        if peer not in peers:
            continue
        row = plans[peer]
        if source is None:
            row = replace(row, skip="no --source: the sentence-transformers model is needed for this row")
        else:
            missing = [m for m in needs[peer] if not found(m)]
            multi_vector = task == "multi-vector-embedding"
            no_class = "sentence_transformers" not in missing and not found("sentence_transformers.multi_vector_encoder")
            if multi_vector and no_class:
                row = replace(row, skip="MultiVectorEncoder is new in sentence-transformers 6; this environment has the "
                              "5.x line")
            elif multi_vector and missing and peer != "torch":
                row = replace(row, skip=f"{', '.join(missing)} not installed"
                              + "".join(f" ({MULTI_VECTOR_HINTS[m]})" for m in missing if m in MULTI_VECTOR_HINTS))
            elif missing:
                hint = {m: "pip install 'st-runtime[peers]'; it requires transformers < 4.58, so sentence-transformers "
                        "5.x: scripts/setup.sh --line st5" for m in ("optimum.intel", "optimum.onnxruntime")}
                row = replace(row, skip=f"{', '.join(missing)} not installed"
                              + "".join(f" ({hint[m]})" for m in missing if m in hint))
            elif peer == "torch":
                row = replace(row, path=str(source), weight_files=tuple(
                    str(p) for p in sorted(source.rglob("*")) if p.suffix in (".safetensors", ".bin", ".pt", ".pth")))
        rows.append(row)
    return rows


FASTEMBED_HINT = ("pip install 'st-runtime[peers]'; fastembed requires huggingface-hub < 2, so sentence-transformers "
                  "5.x: scripts/setup.sh --line st5")


def mean_pooled_and_normalized(modules: tuple[dict[str, Any], ...]) -> bool:
    """Whether the model is Transformer + Pooling (mean only) + Normalize: what the bare loop computes by hand."""
    types = [m.get("type") for m in modules]
    return types == ["Transformer", "Pooling", "Normalize"] and modules[1].get("config", {}).get("pooling_mode") in (
        "mean", ["mean"])


def file_peer_rows(folder: Path, manifest: Manifest, peers: tuple[str, ...]) -> list[RowSpec]:
    """A bi-encoder's rows for the loaders a user would pick instead of st_runtime, on the folder's fp32 ONNX file:
    "floor" (bench.floor: bare onnxruntime + tokenizers + numpy, the zero-overhead floor) and "fastembed" (a custom
    model taking the graph's sentence_embedding). None for other tasks; a row that cannot give the model's embeddings
    is skipped with the reason."""
    if manifest.task != "sentence-embedding":
        return []
    fp32 = next((v for v in manifest.variants if v.name == "fp32" and v.file.endswith(".onnx")), None)
    prompt = manifest.prompts.get(manifest.default_prompt_name or "", "")
    plans = {"floor": RowSpec(id="floor:fp32", label="onnxruntime floor (fp32, bare loop)", engine="ort-floor"),
             "fastembed": RowSpec(id="fastembed:fp32", label="fastembed (fp32, exported file)", engine="fastembed")}
    rows = []
    for peer in (p for p in FILE_PEERS if p in peers):
        row = plans[peer]
        if fp32 is None:
            row = replace(row, skip="no fp32 ONNX graph in the folder")
        elif manifest.routing is not None or prompt:
            does = "routes its inputs (Router)" if manifest.routing else f"adds its prompt {manifest.default_prompt_name!r}"
            row = replace(row, skip=f"the model {does}, which only st_runtime and sentence-transformers do")
        elif peer == "floor" and not mean_pooled_and_normalized(manifest.modules):
            row = replace(row, skip="the bare loop computes Transformer + mean Pooling + Normalize; this model is "
                          + " + ".join(str(m.get("type")) for m in manifest.modules))
        elif peer == "fastembed" and not found("fastembed"):
            row = replace(row, skip=f"fastembed not installed ({FASTEMBED_HINT})")
        else:
            row = replace(row, path=str(folder), file_name=fp32.file, weight_files=variant_files(folder, fp32))
        rows.append(row)
    return rows


def with_peer_files(row: RowSpec, prepared: dict[str, dict[str, str]], peers_dir: Path) -> RowSpec:
    """Point an ONNX/OpenVINO peer row at the files `bench.peers` made (or mark it skipped with the error)."""
    kind, key = ("openvino", "fp32") if row.engine == "st-openvino" else ("onnx", "int8" if row.precision == "int8" else "fp32")
    files = prepared.get(kind, {"error": "not prepared"})
    if "error" in files:
        return replace(row, skip=f"sentence-transformers could not make its {kind} files: {files['error']}")
    folder = peers_dir / kind
    path = folder / files[key]
    weights = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path, *path.parent.glob(path.name + "_data*")]
    row = replace(row, path=str(folder), file_name=files[key], weight_files=tuple(str(p) for p in weights if p.is_file()))
    if key == "int8":  # e.g. onnx/model_qint8_avx512_vnni.onnx -> "qint8_avx512_vnni"
        name = path.stem.removeprefix("model_")
        row = replace(row, id=f"st:onnx:{name}", label=f'sentence-transformers backend="onnx", {name}')
    return row


def choose_reference(rows: list[RowSpec]) -> str:
    """sentence-transformers torch fp32 when it runs, else st_runtime's fp32 variant."""
    ids = {r.id for r in rows if r.skip is None}
    return REFERENCE_TORCH if REFERENCE_TORCH in ids else REFERENCE_FP32
