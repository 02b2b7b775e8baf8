"""Graph passes with onnxruntime's tools: O1-O4 optimization, fp16, dynamic and static int8, weight-only int8/int4.
Each reads the fp32 graph and writes a new file; the fp32 graph is never modified. A graph whose weights are in
external data (`<file>_data`, over 2 GiB or asked for) gives variants whose weights are external too, written by
exporters.onnx_export.save_onnx one tensor at a time. The passes that change the graph's
structure return what they did (fusions, quantized nodes), which the manifest keeps as the variant's report."""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from exporters.onnx_export import external_data_file, save_onnx, uses_external_data
from quantizers.calibration import FeedsReader
from quantizers.configs import DynamicInt8, Optimize, StaticInt8, WeightOnly
from quantizers.errors import QuantizationError

# The layers worth int8: matrix products and the embedding tables (Gather), which hold most of the bytes.
DYNAMIC_OPS = ["MatMul", "Attention", "Gather", "EmbedLayerNormalization"]
STATIC_OPS = ["MatMul", "Gather"]
_ACTIVATIONS = {"Erf", "Gelu", "FastGelu", "BiasGelu", "Relu", "Tanh"}
_ELEMENTWISE = {"Mul", "Add", "Div", "Sub", "Cast", "Identity"}
_CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
_FUSION_MODEL_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra", "deberta", "deberta-v2"}


@dataclass(frozen=True)
class FusionTarget:
    """What onnxruntime's transformer optimizer needs to know of the model in an exported folder."""

    model_type: str = "bert"  # the optimizer family (encoder models all use "bert")
    num_heads: int = 0  # 0: let the optimizer guess from the graph (it often cannot, and then fuses no Attention)
    hidden_size: int = 0


def fusion_target(folder: Path) -> FusionTarget:
    """The transformer's optimizer family, attention heads and hidden size, from the folder's config.json."""
    path = folder / "config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    model_type = config.get("model_type", "bert")
    heads, hidden = config.get("num_attention_heads"), config.get("hidden_size")
    known = isinstance(heads, int) and isinstance(hidden, int) and heads > 0 and hidden % heads == 0
    return FusionTarget("bert" if model_type in _FUSION_MODEL_TYPES else model_type,
                        heads if known else 0, hidden if known else 0)


def optimize(src: Path, dst: Path, config: Optimize, target: FusionTarget = FusionTarget()) -> dict[str, int]:
    """Write `src` optimized at config.level to `dst`; returns the fusions: how many more nodes of each fused operator
    type (Attention, SkipLayerNormalization, BiasGelu, ...) the optimized graph has than `src` (empty for O1, and for
    a graph where nothing was fused)."""
    external = uses_external_data(src)
    with _scratch(dst) as out:
        if config.level == "O1":
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            options.optimized_model_filepath = str(out)
            if external:  # over 2 GiB the optimized graph cannot be written inline
                options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                                 external_data_file(out).name)
                options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                                 "1024")
            ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
            _publish(out, dst, external)
            return {}
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        options = FusionOptions(target.model_type)
        options.enable_gelu_approximation = config.level in ("O3", "O4")
        model = optimize_model(str(src), model_type=target.model_type, num_heads=target.num_heads,
                               hidden_size=target.hidden_size, optimization_options=options, opt_level=0)
        if config.level == "O4":
            model.convert_float_to_float16(keep_io_types=True)
        model.save_model_to_file(str(out), use_external_data_format=external)
        after = model.get_fused_operator_statistics()  # counts of the fused operator types, some there already
        del model
        _publish(out, dst, external)
    before = Counter(node.op_type for node in onnx.load(str(src), load_external_data=False).graph.node)
    return {name: count - before[name] for name, count in sorted(after.items()) if count > before[name]}


@contextlib.contextmanager
def _scratch(dst: Path) -> Iterator[Path]:
    """A path for a tool's output beside `dst` (on the same disk), removed with whatever the tool wrote next to it."""
    with tempfile.TemporaryDirectory(prefix=".pass-", dir=dst.parent) as scratch:
        yield Path(scratch) / "model.onnx"


def _publish(written: Path, dst: Path, external: bool) -> None:
    """Move a tool's output graph to `dst`, its weights (whatever external files the tool wrote) streamed into
    `<dst>_data` when the source graph's are external or they exceed 2 GiB, else inline."""
    save_onnx(onnx.load(str(written), load_external_data=False), dst, base_dir=written.parent,
              external_data=True if external else None)


def _save(model: onnx.ModelProto, dst: Path, external: bool) -> None:
    """Write a graph held whole in memory to `dst` (external data as in `_publish`)."""
    save_onnx(model, dst, external_data=True if external else None)


class _NoPreprocessingHint(logging.Filter):
    """Drops onnxruntime's "Please consider to run pre-processing before quantization" (its shape inference step is
    for CNNs; the graphs here are already inferred), which it logs on the root logger for every quantized model."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider to run pre-processing")


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    hint, root = _NoPreprocessingHint(), logging.getLogger()
    root.addFilter(hint)  # the hint is logged on the root logger itself, whose own filters see it first
    try:
        yield
    finally:
        root.removeFilter(hint)


def fp16(src: Path, dst: Path) -> None:
    """fp16 weights and compute; inputs and outputs keep their types."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    external = uses_external_data(src)
    # onnx's in-memory shape inference refuses protobufs over 2 GiB; the exported graph carries its value_info.
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, disable_shape_infer=external)
    _save(model, dst, external)


def dynamic_int8(src: Path, dst: Path, config: DynamicInt8) -> dict[str, int]:
    """Dynamic int8 with the ISA preset: per-channel s8 weights (u8 on AVX2), reduced range on non-VNNI AVX-512.

    Returns:
        {"quantized_nodes": n} and, with config.float_ffn_output, {"float_ffn_outputs": m}: the down-projections
        kept in float (int8-stored weights).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    external = uses_external_data(src)
    model = onnx.load(str(src), load_external_data=False)  # the node names are all it needs
    nodes = weight_nodes(model, DYNAMIC_OPS, skip_after_activation=config.float_ffn_output)
    report = {"quantized_nodes": len(nodes)}
    with _scratch(dst) as out, _quiet_quantizer():
        quantize_dynamic(
            str(src), str(out),
            weight_type=QuantType.QUInt8 if config.weight_type == "quint8" else QuantType.QInt8,
            per_channel=True,
            reduce_range=config.reduce_range,
            nodes_to_quantize=nodes,
            op_types_to_quantize=DYNAMIC_OPS,
            use_external_data_format=external,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        if not config.float_ffn_output:
            _publish(out, dst, external)
            return report
        quantized = onnx.load(str(out))  # their weights are still stored as int8
        report["float_ffn_outputs"] = weight_only_int8(quantized, sorted(set(weight_nodes(model, ["MatMul"])) - set(nodes)))
        _save(quantized, dst, external)
    return report


def static_int8(src: Path, dst: Path, config: StaticInt8, feeds: list[dict[str, np.ndarray]]) -> dict[str, int]:
    """Static QDQ int8: s8 per-channel weights, u8 activations with ranges from the calibration feeds.

    Returns:
        {"quantized_nodes": n, "float_ffn_outputs": m} (m: MatMuls kept in float, with int8-stored weights).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    external = uses_external_data(src)
    with _scratch(dst) as out:
        prepared = out.with_name("prepared.onnx")
        quant_pre_process(str(src), str(prepared), skip_optimization=False, skip_symbolic_shape=True,
                          save_as_external_data=external, all_tensors_to_one_file=True,
                          external_data_location=external_data_file(prepared).name)
        prepared_graph = onnx.load(str(prepared), load_external_data=False)
        quantized = weight_nodes(prepared_graph, STATIC_OPS, skip_after_activation=True)
        quantize_static(
            str(prepared), str(out), FeedsReader(feeds),
            nodes_to_quantize=quantized,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=STATIC_OPS,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, _CALIBRATION_METHODS[config.method]),
            use_external_data_format=external,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "CalibTensorRangeSymmetric": False,
                           "CalibMovingAverage": config.method == "minmax"},
        )
        # The MatMuls kept in float still store int8 weights (dequantized once, at load), so the file shrinks
        # like the rest of the model.
        model = onnx.load(str(out))
        in_float = weight_only_int8(model, sorted(set(weight_nodes(prepared_graph, ["MatMul"])) - set(quantized)))
        _save(model, dst, external)
    return {"quantized_nodes": len(quantized), "float_ffn_outputs": in_float}


def weight_only(src: Path, dst: Path, config: WeightOnly) -> dict[str, int]:
    """onnxruntime's MatMulNBits weight-only quantization (round to nearest, per block) of every MatMul whose weight
    is a constant 2-D initializer; the embedding table (Gather) and activation x activation products stay float.

    Returns:
        {"quantized_nodes": n, "bits": b, "block_size": s, "accuracy_level": a}.

    Raises:
        QuantizationError: no MatMul was quantized (a graph without constant 2-D MatMul weights).
    """
    MatMulNBitsQuantizer = _matmul_nbits_quantizer()
    external = uses_external_data(src)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), bits=config.bits, block_size=config.block_size,
                                     is_symmetric=config.symmetric, accuracy_level=config.accuracy_level)
    with _quiet_quantizer():
        quantizer.process()
    model = quantizer.model.model
    count = sum(node.op_type == "MatMulNBits" for node in model.graph.node)
    if not count:
        raise QuantizationError(f"Weight-only int{config.bits} quantized nothing: the graph has no MatMul with a "
                                "constant 2-D weight. Nothing was written; use --quantize int8 for this model.")
    _save(model, dst, external)
    return {"quantized_nodes": count, "bits": config.bits, "block_size": config.block_size,
            "accuracy_level": config.accuracy_level}


def _matmul_nbits_quantizer() -> type:
    """onnxruntime's MatMulNBitsQuantizer, imported without its side effect: at import it calls
    logging.basicConfig(level=INFO), which would print a line per graph node in any program that has not configured
    logging yet. A handler on the root logger for the import makes that call a no-op.

    Raises:
        QuantizationError: it cannot be imported (it needs the onnx-ir package).
    """
    root, placeholder = logging.getLogger(), logging.NullHandler()
    root.addHandler(placeholder)
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:
        raise QuantizationError(f"Weight-only quantization needs onnxruntime's MatMulNBits quantizer, which could not "
                                f"be imported ({exc}); pip install onnx-ir.") from exc
    finally:
        root.removeHandler(placeholder)
    logging.getLogger(MatMulNBitsQuantizer.__module__).setLevel(logging.WARNING)  # "skip to quantize <node>" per node
    return MatMulNBitsQuantizer


def weight_nodes(model: onnx.ModelProto, op_types: list[str], *, skip_after_activation: bool = False) -> list[str]:
    """Names of the nodes of `op_types` that read a weight (an initializer). The products of two activations
    (attention scores, attention x values) are left in float, where int8 costs most accuracy for least speed.

    skip_after_activation: also leave the feed-forward down-projections (a MatMul fed by GELU/ReLU) in float:
    their inputs have a long-tailed range that static calibration cannot cover with 256 levels (measured on
    all-MiniLM-L6-v2: mean cosine 0.924 with them quantized, 0.991 without).
    """
    initializers = {t.name for t in model.graph.initializer}
    constants = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    producers = {o: n for n in model.graph.node for o in n.output}

    def after_activation(node: onnx.NodeProto, depth: int = 6) -> bool:
        """An activation feeds `node` through elementwise ops only (GELU is x * 0.5 * (1 + erf(x / sqrt 2)))."""
        for name in node.input:
            parent = producers.get(name)
            if parent is None:
                continue
            if parent.op_type in _ACTIVATIONS:
                return True
            if parent.op_type in _ELEMENTWISE and depth > 1 and after_activation(parent, depth - 1):
                return True
        return False

    return [n.name for n in model.graph.node
            if n.op_type in op_types and any(i in initializers or i in constants for i in n.input)
            and not (skip_after_activation and n.op_type == "MatMul" and after_activation(n))]


def weight_only_int8(model: onnx.ModelProto, node_names: list[str]) -> int:
    """Store the weight of each named MatMul as symmetric per-column int8 behind a DequantizeLinear; the
    product itself stays in float. Returns the number of weights converted.

        W (float, K x N)   ->   W_q (int8, K x N), scale (N,)  -> DequantizeLinear(axis=1) -> MatMul
    """
    initializers = {t.name: t for t in model.graph.initializer}
    wanted = set(node_names)
    converted = 0
    for node in model.graph.node:
        if node.name not in wanted or node.op_type != "MatMul":
            continue
        for slot, name in enumerate(node.input):
            tensor = initializers.get(name)
            if tensor is None or tensor.data_type != onnx.TensorProto.FLOAT or len(tensor.dims) != 2:
                continue
            weight = numpy_helper.to_array(tensor)
            scale = np.maximum(np.abs(weight).max(axis=0), 1e-12) / 127.0
            quantized = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
            base = f"{name}_weight_int8"
            model.graph.initializer.remove(tensor)
            model.graph.initializer.extend([
                numpy_helper.from_array(quantized, base),
                numpy_helper.from_array(scale.astype(np.float32), f"{base}_scale"),
                numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{base}_zero_point"),
            ])
            model.graph.node.append(onnx.helper.make_node(
                "DequantizeLinear", [base, f"{base}_scale", f"{base}_zero_point"], [f"{base}_dequantized"], axis=1,
                name=f"{node.name}_weight_dequantize"))
            node.input[slot] = f"{base}_dequantized"
            converted += 1
            break
    _sort_topologically(model.graph)
    return converted


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder nodes so each comes after the producers of its inputs (ONNX requires it)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError("The graph has a cycle or an input without producer.")
        for n in ready:
            ordered.append(n)
            available.update(n.output)
        pending = [n for n in pending if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)
