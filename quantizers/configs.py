"""Frozen configurations of the passes; each names the variant (and file) it writes, following
sentence-transformers' file names (onnx/model_O3.onnx, onnx/model_qint8_avx512_vnni.onnx, openvino/...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from quantizers.isa import ISAS, detect_isa

CalibrationMethod = Literal["minmax", "entropy", "percentile"]
OptimizationLevel = Literal["O1", "O2", "O3", "O4"]


@dataclass(frozen=True)
class Optimize:
    """onnxruntime graph optimizations. O1 basic; O2 + transformer fusions (attention, skip-layernorm,
    bias-gelu, embed-layernorm); O3 O2 + gelu approximation; O4 O3 + fp16 (for GPUs)."""

    level: OptimizationLevel = "O2"

    def __post_init__(self) -> None:
        if self.level not in ("O1", "O2", "O3", "O4"):
            raise ValueError(f"Optimization level must be O1, O2, O3 or O4, got {self.level!r}.")

    @property
    def name(self) -> str:
        return self.level

    @property
    def file(self) -> str:
        return f"onnx/model_{self.level}.onnx"

    @property
    def precision(self) -> str:
        return "fp16" if self.level == "O4" else "fp32"


@dataclass(frozen=True)
class DynamicInt8:
    """Dynamic int8 (weights quantized offline, activations at run time), preset per ISA."""

    isa: str | None = None  # None: detect from this CPU
    # Keep the feed-forward down-projections' activations in float (weights still int8): set automatically by
    # quantize() when the full variant falls under DYNAMIC_RETRY_BELOW (all-mpnet-base-v2: 0.869 -> 0.989).
    float_ffn_output: bool = False

    def __post_init__(self) -> None:
        if self.isa is not None and self.isa not in ISAS:
            raise ValueError(f"ISA must be one of {ISAS}, got {self.isa!r}.")

    @property
    def target_isa(self) -> str:
        return self.isa or detect_isa()

    @property
    def weight_type(self) -> str:
        # u8u8 on AVX2 avoids the u8s8 saturation of VPMADDUBSW; VNNI, AVX-512 (reduced range) and arm64 take s8.
        return "quint8" if self.target_isa == "avx2" else "qint8"

    @property
    def reduce_range(self) -> bool:
        return self.target_isa == "avx512"

    @property
    def name(self) -> str:
        return f"{self.weight_type}_{self.target_isa}"

    @property
    def file(self) -> str:
        return f"onnx/model_{self.name}.onnx"

    precision = "int8"


@dataclass(frozen=True)
class StaticInt8:
    """Static int8 in QDQ form, activation ranges calibrated on texts (one per line in a file)."""

    calibration_texts: tuple[str, ...] | None = None  # None: the set shipped in quantizers/data
    method: CalibrationMethod = "minmax"
    isa: str | None = None

    def __post_init__(self) -> None:
        if self.method not in ("minmax", "entropy", "percentile"):
            raise ValueError(f"Calibration method must be minmax, entropy or percentile, got {self.method!r}.")

    @property
    def name(self) -> str:
        return f"qint8_static_{self.method}"

    @property
    def file(self) -> str:
        return f"onnx/model_{self.name}.onnx"

    precision = "int8"


@dataclass(frozen=True)
class Fp16:
    """fp16 weights and compute (inputs and outputs stay int64/fp32); for GPUs."""

    name = "fp16"
    file = "onnx/model_fp16.onnx"
    precision = "fp16"


@dataclass(frozen=True)
class OpenVino:
    """OpenVINO IR converted from the fp32 graph. fp32 and bf16 share the fp32 IR (bf16 is OpenVINO's inference
    precision on CPUs with AVX-512 BF16 / AMX); fp16 stores the weights in half precision."""

    precision: Literal["fp32", "fp16", "bf16"] = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"OpenVINO precision must be fp32, fp16 or bf16, got {self.precision!r}.")

    @property
    def name(self) -> str:
        return "openvino" if self.precision == "fp32" else f"openvino_{self.precision}"

    @property
    def file(self) -> str:
        return "openvino/openvino_model_fp16.xml" if self.precision == "fp16" else "openvino/openvino_model.xml"


@dataclass(frozen=True)
class OpenVinoInt8Weights:
    """NNCF int8 weight compression of the OpenVINO IR (activations stay floating point)."""

    name = "openvino_qint8_weights"
    file = "openvino/openvino_model_qint8_weights.xml"
    precision = "int8-weights"


@dataclass(frozen=True)
class OpenVinoStaticInt8:
    """NNCF static int8 quantization (transformer preset) calibrated on texts."""

    calibration_texts: tuple[str, ...] | None = None
    name = "openvino_qint8_quantized"
    file = "openvino/openvino_model_qint8_quantized.xml"
    precision = "int8"


QuantizationConfig = Optimize | DynamicInt8 | StaticInt8 | Fp16 | OpenVino | OpenVinoInt8Weights | OpenVinoStaticInt8
