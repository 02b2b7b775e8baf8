"""quantizers: optimized and quantized variants of an exported folder (onnxruntime O1-O4, fp16, dynamic and
static int8, MatMulNBits int8/int4 weights;
OpenVINO IR, NNCF int8/int4 weights and static int8), each with a measured accuracy.

The configs and the variant vocabulary (quantizers.variants) import no onnx; `quantize` needs the export extra."""

from __future__ import annotations

import importlib.util
from typing import Any

from quantizers.configs import (
    DynamicInt8,
    Fp16,
    OpenVino,
    OpenVinoInt4Weights,
    OpenVinoInt8Weights,
    OpenVinoStaticInt8,
    Optimize,
    QuantizationConfig,
    StaticInt8,
    WeightOnly,
)
from quantizers.errors import AccuracyError, QuantizationError
from quantizers.variants import VARIANT_KEYS, variant_config


def __getattr__(name: str) -> Any:
    if name == "quantize":  # imported on first use: it needs onnx (and onnxruntime's tools)
        if importlib.util.find_spec("onnx") is None:
            raise ImportError("quantizers needs the onnx package: pip install 'st-runtime[export]'")
        from quantizers.api import quantize

        globals()["quantize"] = quantize
        return quantize
    raise AttributeError(f"module 'quantizers' has no attribute {name!r}")


__all__ = [
    "VARIANT_KEYS",
    "AccuracyError",
    "DynamicInt8",
    "Fp16",
    "OpenVino",
    "OpenVinoInt4Weights",
    "OpenVinoInt8Weights",
    "OpenVinoStaticInt8",
    "Optimize",
    "QuantizationConfig",
    "QuantizationError",
    "StaticInt8",
    "WeightOnly",
    "quantize",
    "variant_config",
]
