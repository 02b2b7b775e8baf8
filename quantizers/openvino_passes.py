"""OpenVINO IR from the fp32 ONNX graph, and NNCF int8 (weight compression and static quantization)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from st_runtime.backends import import_openvino, without_telemetry


def _openvino():
    try:
        ov = import_openvino()
    except ImportError as exc:
        raise ImportError("OpenVINO export needs the openvino extra: pip install 'st-runtime[openvino]'") from exc
    return ov


def _nncf():
    try:
        with without_telemetry():  # NNCF decides on its telemetry once, when it is imported
            import nncf
    except ImportError as exc:
        raise ImportError("NNCF int8 needs the openvino extra: pip install 'st-runtime[openvino]'") from exc
    return nncf


def read_onnx(src: Path):
    """The ONNX graph as an OpenVINO model, with the token embeddings output named only last_hidden_state.

    The ONNX graph of a bi-encoder outputs the token embeddings twice, as token_embeddings and last_hidden_state.
    optimum-intel's OVModelForFeatureExtraction (sentence-transformers' backend="openvino") refuses an IR with
    outputs named token_embeddings and sentence_embedding ("This model is a Sentence Transformers model") and
    reads last_hidden_state, so the token_embeddings copy is dropped; st_runtime reads last_hidden_state for it.
    """
    ov = _openvino()
    with without_telemetry():
        model = ov.convert_model(str(src))
    if any("last_hidden_state" in output.get_names() for output in model.outputs):
        for result in list(model.get_results()):
            if result.output(0).get_names() == {"token_embeddings"}:
                model.remove_result(result)
    return model


def convert(src: Path, dst: Path, *, fp16: bool = False) -> None:
    """Convert an ONNX graph to IR (`dst` .xml and its .bin); fp16 stores the weights in half precision."""
    ov = _openvino()
    ov.save_model(read_onnx(src), str(dst), compress_to_fp16=fp16)


def int8_weights(src: Path, dst: Path) -> None:
    """NNCF int8 weight compression (asymmetric, per channel); activations stay floating point."""
    ov, nncf = _openvino(), _nncf()
    model = nncf.compress_weights(read_onnx(src), mode=nncf.CompressWeightsMode.INT8_ASYM)
    ov.save_model(model, str(dst), compress_to_fp16=False)


def int4_weights(src: Path, dst: Path, *, group_size: int, symmetric: bool) -> dict[str, int]:
    """NNCF int4 weight compression in groups of `group_size` inputs (a smaller power-of-2 group, down to 32, where it
    does not divide a weight's input size; int8 where none does); activations stay floating point.

    Returns:
        {"int4_weights": n, "int8_weights": m, "group_size": group_size}: the weights stored in each precision.

    Raises:
        QuantizationError: no weight was compressed to int4.
    """
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    from quantizers.errors import QuantizationError

    ov, nncf = _openvino(), _nncf()
    mode = nncf.CompressWeightsMode.INT4_SYM if symmetric else nncf.CompressWeightsMode.INT4_ASYM
    model = nncf.compress_weights(
        read_onnx(src), mode=mode, group_size=group_size, ratio=1.0,
        advanced_parameters=AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST))
    counts = compressed_weights(model)
    if not counts["int4_weights"]:
        raise QuantizationError("OpenVINO int4 weight compression compressed no weight to int4 (NNCF found no "
                                "weight it could group); nothing was written. Use --quantize int8 for this model.")
    ov.save_model(model, str(dst), compress_to_fp16=False)
    return {**counts, "group_size": group_size}


def compressed_weights(model) -> dict[str, int]:
    """How many weights of an OpenVINO model are stored in 4 and in 8 bits: the low-bit constants, less the zero
    points of asymmetric modes (those feed the Subtract of the dequantization: constant -> Convert -> Subtract[1])."""
    counts = {"int4_weights": 0, "int8_weights": 0}
    for op in model.get_ops():
        element = op.get_output_element_type(0).get_type_name() if op.get_type_name() == "Constant" else ""
        if element not in ("u4", "i4", "u8", "i8"):
            continue
        consumers = [target for convert in op.output(0).get_target_inputs()
                     for target in convert.get_node().output(0).get_target_inputs()]
        if any(t.get_node().get_type_name() == "Subtract" and t.get_index() == 1 for t in consumers):
            continue
        counts["int4_weights" if element in ("u4", "i4") else "int8_weights"] += 1
    return counts


def static_int8(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    """NNCF post-training static int8 with the transformer preset, calibrated on `feeds`."""
    ov, nncf = _openvino(), _nncf()
    model = read_onnx(src)
    quantized = nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(feeds), preset=nncf.QuantizationPreset.MIXED)
    ov.save_model(quantized, str(dst), compress_to_fp16=False)
