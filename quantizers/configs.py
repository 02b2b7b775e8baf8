"""Frozen configurations of the passes. Each names the variant (and file) it writes, following sentence-transformers'
file names (onnx/model_O3.onnx, onnx/model_qint8_avx512_vnni.onnx, openvino/...), and applies itself: `apply` writes
the variant's file(s) and returns a report that the manifest keeps (Variant.report), e.g. an optimization's fusions.
Which variant a name (a recipe key, a manifest name, st-export's flags) stands for: quantizers/variants.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

from quantizers.errors import QuantizationError
from st_runtime.machine import ISAS, detect_isa
from st_runtime.manifest import Manifest, Variant

CalibrationMethod = Literal["minmax", "entropy", "percentile"]
CALIBRATION_METHODS: tuple[str, ...] = get_args(CalibrationMethod)
OptimizationLevel = Literal["O1", "O2", "O3", "O4"]
OPTIMIZATION_LEVELS: tuple[str, ...] = get_args(OptimizationLevel)


@dataclass(frozen=True)
class PassJob:
    """What a pass reads and where it writes."""

    folder: Path  # the exported folder
    manifest: Manifest  # its manifest
    src: Path  # the fp32 graph
    dst: Path  # the file to write (the variant's `file` once it is moved into the folder)
    reuse: bool = False  # the file exists already (an OpenVINO IR that another precision of it wrote)


class Pass:
    """What every configuration shares: the manifest entry of its variant, and `apply`."""

    name: str  # the variant's name in the manifest
    file: str  # its file, relative to the folder
    precision: str
    backend: ClassVar[str] = "onnxruntime"

    @property
    def variant_isa(self) -> str | None:
        """The ISA the variant was built for (int8 presets), recorded in the manifest."""
        return None

    @property
    def inference_precision(self) -> str | None:
        return None

    def variant(self) -> Variant:
        """The manifest entry of the variant (quantize adds its report and accuracy)."""
        return Variant(name=self.name, file=self.file, precision=self.precision, isa=self.variant_isa,
                       backend=self.backend, inference_precision=self.inference_precision)

    def apply(self, job: PassJob) -> dict[str, Any]:
        """Write the variant's file(s) at job.dst and return what the pass did ({}: nothing worth recording).

        Raises:
            QuantizationError: the pass cannot make a useful variant of this graph.
        """
        raise NotImplementedError


class OnnxPass(Pass):
    """A pass writing an onnxruntime graph, onnx/model_<name>.onnx."""

    @property
    def file(self) -> str:
        return f"onnx/model_{self.name}.onnx"


@dataclass(frozen=True)
class Optimize(OnnxPass):
    """onnxruntime graph optimizations. O1 basic; O2 + transformer fusions (attention, skip-layernorm,
    bias-gelu, embed-layernorm); O3 O2 + gelu approximation; O4 O3 + fp16 (for GPUs). O2-O4 must fuse something:
    without a fusion the variant would be a copy of the fp32 graph."""

    level: OptimizationLevel = "O2"

    def __post_init__(self) -> None:
        if self.level not in OPTIMIZATION_LEVELS:
            raise ValueError(f"Optimization level must be O1, O2, O3 or O4, got {self.level!r}.")

    @property
    def name(self) -> str:
        return self.level

    @property
    def precision(self) -> str:
        return "fp16" if self.level == "O4" else "fp32"

    def apply(self, job: PassJob) -> dict[str, Any]:
        """Returns {"fusions": {operator: count}} (the fused operators the optimizer added; {} for O1).

        Raises:
            QuantizationError: O2-O4 fused nothing.
        """
        from quantizers import onnx_passes

        target = onnx_passes.fusion_target(job.folder)
        fusions = onnx_passes.optimize(job.src, job.dst, self, target)
        if self.level != "O1" and not fusions:
            raise QuantizationError(
                f"{self.level} fused nothing in this graph: onnxruntime's {target.model_type!r} optimizer found no attention, "
                "layer-norm or GELU pattern, so the variant would only be a copy of the fp32 graph. Nothing was "
                "written; use O1 (basic graph optimizations) for this model, or no optimization."
            )
        return {"fusions": fusions} if fusions else {}


@dataclass(frozen=True)
class DynamicInt8(OnnxPass):
    """Dynamic int8 (weights quantized offline, activations at run time), preset per ISA."""

    isa: str | None = None  # None: detect from this CPU
    # Keep the feed-forward down-projections' activations in float (weights still int8): set automatically by
    # quantize() when the full variant falls under DYNAMIC_RETRY_BELOW (all-mpnet-base-v2: 0.869 -> 0.989).
    float_ffn_output: bool = False
    precision = "int8"

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
    def variant_isa(self) -> str | None:
        return self.target_isa

    def apply(self, job: PassJob) -> dict[str, Any]:
        """Returns {"quantized_nodes": n} (and "float_ffn_outputs": m, the products kept in float)."""
        from quantizers import onnx_passes

        return onnx_passes.dynamic_int8(job.src, job.dst, self)


@dataclass(frozen=True)
class StaticInt8(OnnxPass):
    """Static int8 in QDQ form, activation ranges calibrated on texts (one per line in a file)."""

    calibration_texts: tuple[str, ...] | None = None  # None: the set shipped in quantizers/data
    method: CalibrationMethod = "minmax"
    isa: str | None = None
    precision = "int8"

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"Calibration method must be minmax, entropy or percentile, got {self.method!r}.")

    @property
    def name(self) -> str:
        return f"qint8_static_{self.method}"

    @property
    def variant_isa(self) -> str | None:
        return self.isa or detect_isa()

    def apply(self, job: PassJob) -> dict[str, Any]:
        """Returns {"quantized_nodes": n, "calibration_texts": m}."""
        from quantizers import onnx_passes
        from quantizers.calibration import calibration_feeds
        from quantizers.texts import calibration_texts

        texts = self.calibration_texts or calibration_texts()
        feeds = calibration_feeds(job.folder, job.manifest, texts, job.manifest.inputs, same_length=self.method != "minmax")
        return onnx_passes.static_int8(job.src, job.dst, self, feeds) | {"calibration_texts": len(texts)}


@dataclass(frozen=True)
class WeightOnly(OnnxPass):
    """onnxruntime weight-only quantization (MatMulNBits): the weight of every MatMul with a constant 2-D weight
    stored in `bits`-bit blocks of `block_size` inputs, each with its own scale and zero point; activations stay
    float. What decoder-sized models run with on CPU. `accuracy_level`: the precision MatMulNBits computes in
    (0: the input's own, fp32; 4: int8 activations), chosen by measurement (docs/models.md, weight-only variants)."""

    bits: Literal[4, 8] = 4
    block_size: int = 32
    accuracy_level: int = 4
    symmetric: bool = False

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"Weight-only bits must be 4 or 8, got {self.bits!r}.")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of 2 of at least 16, got {self.block_size!r}.")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ValueError(f"accuracy_level must be 0-4, got {self.accuracy_level!r}.")

    @property
    def name(self) -> str:
        return f"qint{self.bits}_weights"

    @property
    def precision(self) -> str:
        return f"int{self.bits}-weights"

    def apply(self, job: PassJob) -> dict[str, Any]:
        """Returns {"quantized_nodes": n, "bits", "block_size", "accuracy_level"}.

        Raises:
            QuantizationError: the graph has no MatMul with a constant 2-D weight (nothing to quantize).
        """
        from quantizers import onnx_passes

        return onnx_passes.weight_only(job.src, job.dst, self)


@dataclass(frozen=True)
class Fp16(OnnxPass):
    """fp16 weights and compute (inputs and outputs stay int64/fp32); for GPUs."""

    name = "fp16"
    precision = "fp16"

    def apply(self, job: PassJob) -> dict[str, Any]:
        from quantizers import onnx_passes

        onnx_passes.fp16(job.src, job.dst)
        return {}


class OpenVinoPass(Pass):
    """A pass writing an OpenVINO IR (openvino/*.xml and its .bin), run in fp32 unless a hint says otherwise."""

    backend: ClassVar[str] = "openvino"

    @property
    def inference_precision(self) -> str | None:
        return "fp32"


@dataclass(frozen=True)
class OpenVino(OpenVinoPass):
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

    @property
    def inference_precision(self) -> str | None:
        return "bf16" if self.precision == "bf16" else "fp32"

    def apply(self, job: PassJob) -> dict[str, Any]:
        from quantizers import openvino_passes

        if not job.reuse:
            openvino_passes.convert(job.src, job.dst, fp16=self.precision == "fp16")
        return {}


@dataclass(frozen=True)
class OpenVinoInt8Weights(OpenVinoPass):
    """NNCF int8 weight compression of the OpenVINO IR (activations stay floating point)."""

    name = "openvino_qint8_weights"
    file = "openvino/openvino_model_qint8_weights.xml"
    precision = "int8-weights"

    def apply(self, job: PassJob) -> dict[str, Any]:
        from quantizers import openvino_passes

        openvino_passes.int8_weights(job.src, job.dst)
        return {}


@dataclass(frozen=True)
class OpenVinoInt4Weights(OpenVinoPass):
    """NNCF int4 weight compression of the OpenVINO IR, in groups of `group_size` inputs (a weight whose input size
    the group does not divide gets the largest power-of-2 group that does, down to 32, else int8); NNCF keeps the
    embedding and the last projection in int8 (its backup mode). Activations stay floating point."""

    group_size: int = 128
    symmetric: bool = False
    name = "openvino_qint4_weights"
    file = "openvino/openvino_model_qint4_weights.xml"
    precision = "int4-weights"

    def apply(self, job: PassJob) -> dict[str, Any]:
        """Returns {"int4_weights": n, "int8_weights": m, "group_size": g}.

        Raises:
            QuantizationError: no weight was compressed to int4.
        """
        from quantizers import openvino_passes

        return openvino_passes.int4_weights(job.src, job.dst, group_size=self.group_size, symmetric=self.symmetric)


@dataclass(frozen=True)
class OpenVinoStaticInt8(OpenVinoPass):
    """NNCF static int8 quantization (transformer preset) calibrated on texts."""

    calibration_texts: tuple[str, ...] | None = None
    name = "openvino_qint8_quantized"
    file = "openvino/openvino_model_qint8_quantized.xml"
    precision = "int8"

    @property
    def variant_isa(self) -> str | None:
        return detect_isa()

    def apply(self, job: PassJob) -> dict[str, Any]:
        """Returns {"calibration_texts": m}."""
        from quantizers import openvino_passes
        from quantizers.calibration import calibration_feeds
        from quantizers.texts import calibration_texts

        texts = self.calibration_texts or calibration_texts()
        openvino_passes.static_int8(job.src, job.dst, calibration_feeds(job.folder, job.manifest, texts, job.manifest.inputs))
        return {"calibration_texts": len(texts)}


QuantizationConfig = (Optimize | DynamicInt8 | StaticInt8 | WeightOnly | Fp16 | OpenVino | OpenVinoInt8Weights
                      | OpenVinoInt4Weights | OpenVinoStaticInt8)
