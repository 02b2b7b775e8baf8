"""OpenVINO IR from the fp32 ONNX graph, and NNCF int8 (weight compression and static quantization)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from st_runtime.backends import import_without_telemetry, without_telemetry


def _openvino():
    try:
        ov = import_without_telemetry("openvino")
    except ImportError as exc:
        raise ImportError("OpenVINO export needs the openvino extra: pip install 'st-runtime[openvino]'") from exc
    return ov


def _nncf():
    try:
        nncf = import_without_telemetry("nncf")  # NNCF decides on its telemetry once, when it is imported
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


def static_int8(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    """NNCF post-training static int8 with the transformer preset, calibrated on `feeds`."""
    ov, nncf = _openvino(), _nncf()
    model = read_onnx(src)
    quantized = nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(feeds), preset=nncf.QuantizationPreset.MIXED)
    ov.save_model(quantized, str(dst), compress_to_fp16=False)
