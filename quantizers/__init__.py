"""quantizers: optimized and quantized variants of an exported folder (onnxruntime O1-O4, fp16, dynamic and
static int8; OpenVINO IR, NNCF int8 weights and static int8), each with a measured accuracy."""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("onnx") is None:
    raise ImportError("quantizers needs the onnx package: pip install 'st-runtime[export]'")

from quantizers.api import quantize
from quantizers.configs import (
    DynamicInt8,
    Fp16,
    OpenVino,
    OpenVinoInt8Weights,
    OpenVinoStaticInt8,
    Optimize,
    QuantizationConfig,
    StaticInt8,
)
from quantizers.errors import AccuracyError, QuantizationError

__all__ = [
    "AccuracyError",
    "DynamicInt8",
    "Fp16",
    "OpenVino",
    "OpenVinoInt8Weights",
    "OpenVinoStaticInt8",
    "Optimize",
    "QuantizationConfig",
    "QuantizationError",
    "StaticInt8",
    "quantize",
]
