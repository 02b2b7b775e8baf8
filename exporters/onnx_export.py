"""Trace a graph module to an ONNX file with dynamic batch and sequence axes."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import Tensor, nn

DEFAULT_OPSET = 17
EAGER = "eager"
PROTOBUF_LIMIT = 2 * 1024**3  # a single .onnx protobuf cannot exceed 2 GiB
EXTERNAL_DATA_SUFFIX = "_data"


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Trace every transformers model inside `model` with eager attention, and restore its own afterwards.

    transformers 5 defaults to SDPA, which the TorchScript exporter decomposes into a graph onnxruntime runs about
    40% slower than the eager attention pattern it recognises and fuses (all-MiniLM-L6-v2, 1 thread: 11.2 s vs 7.1 s
    for the same 100 texts); both give the same numbers, and the parity gate checks the result against the model as
    loaded. Models that cannot switch at runtime (transformers 4.57 BERT) keep their own attention, and so do models
    with sliding-window layers (`has_sliding_window`).
    """
    switched = []
    for module in model.modules():
        config = getattr(module, "config", None)
        current = getattr(config, "_attn_implementation", None)
        if current in (None, EAGER) or not hasattr(module, "set_attn_implementation") or has_sliding_window(config):
            continue
        try:
            module.set_attn_implementation(EAGER)
        except (ValueError, NotImplementedError, AttributeError, TypeError):
            continue
        if config._attn_implementation == EAGER:
            switched.append((module, current))
    try:
        yield
    finally:
        for module, implementation in switched:
            module.set_attn_implementation(implementation)


def has_sliding_window(config: object) -> bool:
    """Whether some layer of the model attends through a local (sliding) window (ModernBERT's local attention).

    Such a model keeps its own attention (SDPA) when traced: a query row whose every key in its window is masked (a
    query expansion [MASK] token that attends to nothing, more than half a window from the text) gets zeros from SDPA
    but, in eager attention, the mean of every value of the sequence (a softmax over equal minimum scores); that row is
    scored, so eager missed sentence-transformers by 4e-3. SDPA's exported graph computes what SDPA computes, and
    costs about 5% on ModernBERT (docs/models.md).
    """
    return "sliding_attention" in (getattr(config, "layer_types", None) or ())


def export_onnx(
    graph: nn.Module,
    example_inputs: dict[str, Tensor],
    path: Path,
    *,
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    optional_inputs: dict[str, np.ndarray] | None = None,
    opset: int = DEFAULT_OPSET,
    external_data: bool | None = None,
) -> list[Path]:
    """Export `graph` traced on `example_inputs` to `path`.

    Args:
        optional_inputs: inputs that get a default value (stored as an initializer the caller may override),
            so consumers that do not know them, like sentence-transformers' ONNX backend, can run the graph.
        external_data: store weights in `<path>_data` (True), inline (False), or only above 2 GiB (None).

    Returns:
        The files written (the .onnx file, and its external data file when used).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="trace-", dir=path.parent))
    try:
        traced_path = scratch / "model.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about python control flow are checked by parity
            torch.onnx.export(
                graph,
                tuple(example_inputs.values()),
                str(traced_path),
                input_names=list(example_inputs),
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(str(traced_path), load_external_data=True)
        for name, default in (optional_inputs or {}).items():
            _give_default(proto, name, default)
        weights = sum(len(t.raw_data) for t in proto.graph.initializer)
        use_external = external_data if external_data is not None else weights > PROTOBUF_LIMIT * 0.9
        location = path.name + EXTERNAL_DATA_SUFFIX
        onnx.save_model(
            proto,
            str(path),
            save_as_external_data=use_external,
            all_tensors_to_one_file=True,
            location=location,
            size_threshold=1024,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return [path, path.with_name(location)] if use_external else [path]


def _give_default(proto: onnx.ModelProto, name: str, default: np.ndarray) -> None:
    """Turn graph input `name` into an overridable initializer holding `default` (it stays a graph input)."""
    if not any(i.name == name for i in proto.graph.input):
        raise ValueError(f"The traced graph has no input {name!r}.")
    proto.graph.initializer.append(numpy_helper.from_array(default, name))
