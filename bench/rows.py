"""Which rows a run has: the sentence-transformers peers (torch fp32, its own ONNX file and int8 file, OpenVINO) and
every selected variant of the exported folder through st_runtime; and which of them is the 1.0 reference."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path

from st_runtime.errors import ManifestError
from st_runtime.manifest import Manifest, Variant

PEERS = ("torch", "onnx", "onnx-int8", "openvino")
REFERENCE_TORCH = "st:torch"
REFERENCE_FP32 = "st_runtime:fp32"


@dataclass(frozen=True)
class RowSpec:
    """One row: what runs, on which files, and what it is compared by."""

    id: str  # stable key, used by --baseline: "st:torch", "st:onnx", "st:onnx:qint8_avx512_vnni", "st_runtime:fp32", ...
    label: str
    engine: str  # bench.worker.ENGINES
    path: str = ""  # model folder the engine loads
    variant: str | None = None  # st_runtime: the manifest variant
    file_name: str | None = None  # sentence-transformers backends: the file inside `path`
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


def runtime_rows(folder: Path, variants: list[Variant]) -> list[RowSpec]:
    rows = []
    for v in variants:
        runs = f"runs {v.inference_precision}" if v.inference_precision not in (None, v.precision) else None
        detail = ", ".join(x for x in (v.precision if v.precision != v.name else None, v.isa,
                                       v.backend if v.backend != "onnxruntime" else None, runs) if x)
        label = f"st_runtime {v.name}" + (f" ({detail})" if detail else "")
        rows.append(RowSpec(id=f"st_runtime:{v.name}", label=label, engine="st_runtime",
                            path=str(folder), variant=v.name, precision=precision_of(v), backend=v.backend,
                            weight_files=variant_files(folder, v)))
    return rows


def peer_rows(source: Path | None, peers: tuple[str, ...], isa: str) -> list[RowSpec]:
    """The sentence-transformers rows before their files exist (paths are filled in by `with_peer_files`)."""
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
    for peer in PEERS:
        if peer not in peers:
            continue
        row = plans[peer]
        if source is None:
            row = replace(row, skip="no --source: the sentence-transformers model is needed for this row")
        else:
            missing = [m for m in needs[peer] if not found(m)]
            if missing:
                hint = {m: "pip install 'st-runtime[peers]'; it requires transformers < 4.58, so sentence-transformers "
                        "5.x: scripts/setup.sh --line st5" for m in ("optimum.intel", "optimum.onnxruntime")}
                row = replace(row, skip=f"{', '.join(missing)} not installed"
                              + "".join(f" ({hint[m]})" for m in missing if m in hint))
            elif peer == "torch":
                row = replace(row, path=str(source), weight_files=tuple(
                    str(p) for p in sorted(source.rglob("*")) if p.suffix in (".safetensors", ".bin", ".pt", ".pth")))
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
