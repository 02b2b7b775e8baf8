"""st-bench labels what a row really computes in: an NNCF static-int8 OpenVINO IR runs its quantized matmuls in int8
and the rest in its inference precision, which INFERENCE_PRECISION_HINT alone cannot tell (it says f32 for that IR)."""

from __future__ import annotations

import importlib.util

import pytest

from bench.rows import precision_of, runs_label, runtime_rows, what_runs
from st_runtime.manifest import Variant

NNCF = Variant(name="openvino_qint8_quantized", file="openvino/openvino_model_qint8_quantized.xml", precision="int8",
               isa="avx512_vnni", backend="openvino", inference_precision="fp32")
WEIGHTS = Variant(name="openvino_qint8_weights", file="openvino/openvino_model_qint8_weights.xml",
                  precision="int8-weights", backend="openvino", inference_precision="fp32")
BF16 = Variant(name="openvino_bf16", file="openvino/openvino_model.xml", precision="fp32", backend="openvino",
               inference_precision="bf16")
DYNAMIC = Variant(name="qint8_avx2", file="onnx/model_qint8_avx2.onnx", precision="int8", isa="avx2")


def test_labels_from_the_manifest(tmp_path):
    assert runs_label(NNCF) == "int8 matmuls + fp32 rest"
    assert runs_label(WEIGHTS) == "runs fp32"  # int8 weights, decompressed: computes in f32
    assert runs_label(BF16) == "runs bf16"
    assert runs_label(DYNAMIC) is None  # onnxruntime's dynamic int8: its precision says it
    labels = {r.variant: r.label for r in runtime_rows(tmp_path, [NNCF, WEIGHTS, DYNAMIC])}
    assert labels == {
        "openvino_qint8_quantized": "st_runtime openvino_qint8_quantized (avx512_vnni, openvino, int8 matmuls + fp32 rest)",
        "openvino_qint8_weights": "st_runtime openvino_qint8_weights (int8-weights, openvino, runs fp32)",
        "qint8_avx2": "st_runtime qint8_avx2 (int8, avx2)",
    }
    assert "fp32)" not in labels["openvino_qint8_quantized"].split("+")[0]


def test_what_runs_reads_the_compiled_matmuls_not_the_hint():
    nncf = {"inference_precision": "f32", "matmul_precisions": {"int8": 48}}
    assert what_runs("int8", nncf) == ("int8 matmuls (48 of 48), f32 rest", None)  # no "runs f32, not int8"
    partial = {"inference_precision": "bf16", "matmul_precisions": {"int8": 36, "bf16": 12}}
    assert what_runs("int8", partial) == ("int8 matmuls (36 of 48), bf16 rest", None)
    none = {"inference_precision": "f32", "matmul_precisions": {"f32": 48}}
    assert what_runs("int8", none) == ("f32", "OpenVINO runs none of the 48 matmuls in int8 (f32 throughout)")
    assert what_runs("int8", {"inference_precision": "f32"}) == (None, None)  # unreadable: claim nothing
    assert what_runs("fp32", {"inference_precision": "bf16"}) == ("bf16", "OpenVINO runs bf16, not fp32")
    assert what_runs("fp32", none) == ("f32", None)
    assert what_runs("bf16", {"inference_precision": "bf16"}) == ("bf16", None)
    assert what_runs("fp32", {}) == (None, None)  # onnxruntime rows: no info
    assert precision_of(NNCF) == "int8" and precision_of(WEIGHTS) == "fp32"


@pytest.mark.skipif(importlib.util.find_spec("nncf") is None or importlib.util.find_spec("openvino") is None,
                    reason="needs openvino and nncf")
def test_the_worker_sees_int8_matmuls_in_an_nncf_ir_only(tiny_bi_encoder, tmp_path):
    import st_runtime
    from bench.worker import openvino_matmul_precisions, openvino_precision
    from exporters import export
    from quantizers import OpenVino, OpenVinoInt8Weights, OpenVinoStaticInt8, quantize

    calibration = tuple(f"calibration sentence number {i} about topic {i % 7}" for i in range(24))
    export(tiny_bi_encoder(), tmp_path / "out")
    manifest = quantize(tmp_path / "out", [OpenVino("fp32"), OpenVinoInt8Weights(), OpenVinoStaticInt8(calibration)],
                        heldout=[f"held-out text {i}" for i in range(10)])
    seen = {}
    for variant in manifest.variants:
        if variant.backend != "openvino":
            continue
        model = st_runtime.SentenceTransformer(tmp_path / "out", variant=variant.name)
        model.encode(["a first call compiles the graph", "and a second text"])
        info = {"inference_precision": openvino_precision(model), "matmul_precisions": openvino_matmul_precisions(model)}
        seen[variant.precision] = info
        runs, note = what_runs(precision_of(variant), info)
        assert note is None, (variant.name, info)
        if variant.precision == "int8":
            assert runs.startswith("int8 matmuls (") and runs.endswith(", f32 rest"), runs
    assert seen["int8"]["inference_precision"] == "f32"  # the hint alone would call this IR f32
    assert seen["int8"]["matmul_precisions"].get("int8", 0) > 0
    for precision in ("fp32", "int8-weights"):
        assert "int8" not in seen[precision]["matmul_precisions"] and seen[precision]["matmul_precisions"]["f32"] > 0
