"""Trace a graph module to an ONNX file with dynamic batch and sequence axes."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_model

if TYPE_CHECKING:  # torch is imported where a graph is traced: the quantizers use save_onnx without it
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

    Memory stays bounded by the traced model: the traced file is read without its external data (torch writes one
    file per tensor above 2 GiB) and the weights are streamed into `<path>_data` one tensor at a time (`save_onnx`).

    Args:
        optional_inputs: inputs that get a default value (stored as an initializer the caller may override),
            so consumers that do not know them, like sentence-transformers' ONNX backend, can run the graph.
        external_data: store weights in `<path>_data` (True), inline (False), or only above 2 GiB (None).

    Returns:
        The files written (the .onnx file, and its external data file when used).

    Raises:
        ValueError: external_data=False for weights over 2 GiB (a protobuf cannot hold them).
    """
    import torch

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
        proto = onnx.load(str(traced_path), load_external_data=False)
        for name, default in (optional_inputs or {}).items():
            _give_default(proto, name, default)
        if external_data is False and tensor_bytes(proto) > PROTOBUF_LIMIT * 0.9:
            raise ValueError(f"The graph's weights ({tensor_bytes(proto) / 1024**3:.2f} GiB) cannot be stored inside "
                             "one .onnx file (protobuf's 2 GiB limit); export with external data.")
        return save_onnx(proto, path, base_dir=scratch, external_data=external_data)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def external_data_file(path: Path) -> Path:
    """Where the weights of graph `path` go when they are external: `<path>_data` (the runtime looks there too)."""
    return path.with_name(path.name + EXTERNAL_DATA_SUFFIX)


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of `graph` that may hold weights: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                yield attribute.t
            elif attribute.type == onnx.AttributeProto.TENSORS:
                yield from attribute.tensors
            for sub in (attribute.g, *attribute.graphs):
                yield from _tensors(sub)


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _external_span(tensor: onnx.TensorProto, base_dir: Path) -> tuple[Path, int, int]:
    """(file, offset, length) of an external tensor's bytes."""
    info = ExternalDataInfo(tensor)
    file = base_dir / info.location
    offset = info.offset or 0
    length = info.length if info.length is not None else file.stat().st_size - offset
    return file, offset, length


def tensor_bytes(model: onnx.ModelProto, base_dir: Path | None = None) -> int:
    """Bytes of weights in `model`, inline or external (external lengths as recorded; read from files under
    `base_dir` when a tensor has none), without loading any external data."""
    total = 0
    for tensor in _tensors(model.graph):
        if _is_external(tensor):
            length = ExternalDataInfo(tensor).length
            total += (length or 0) if length is not None or base_dir is None else _external_span(tensor, base_dir)[2]
        else:
            total += tensor.ByteSize()
    return total


def uses_external_data(path: Path) -> bool:
    """Whether graph `path` keeps its weights in `<path>_data` (as st-export and the quantizers write it)."""
    return external_data_file(path).is_file()


def save_onnx(model: onnx.ModelProto, path: Path, *, base_dir: Path | None = None,
              external_data: bool | None = None, size_threshold: int = 1024) -> list[Path]:
    """Write `model` to `path`, one tensor at a time, with its weights inline or in `<path>_data`.

    Tensors of `model` that are already external (loaded with load_external_data=False) are read from their files
    under `base_dir` in chunks, so the weights are never all in memory at once; each tensor of at least
    `size_threshold` bytes goes to `<path>_data` at an offset aligned to 4 KiB (pages onnxruntime can map).
    The data file is written under another name and renamed, so `base_dir` may be `path`'s own folder.

    Args:
        external_data: True / False, or None: external when the weights exceed 90% of protobuf's 2 GiB.

    Returns:
        The files written: `path`, and `<path>_data` when external.
    """
    data_path = external_data_file(path)
    if external_data is None:
        external_data = tensor_bytes(model, base_dir) > PROTOBUF_LIMIT * 0.9
    if not external_data:
        if any(_is_external(t) for t in _tensors(model.graph)):
            if base_dir is None:
                raise ValueError("The model has external tensors but no base_dir to read them from.")
            load_external_data_for_model(model, str(base_dir))
        onnx.save_model(model, str(path))
        data_path.unlink(missing_ok=True)  # an earlier external file of `path`, already read into memory
        return [path]
    partial = data_path.with_name(data_path.name + ".partial")
    sources: dict[Path, BinaryIO] = {}
    try:
        with open(partial, "wb") as out:
            for tensor in _tensors(model.graph):
                if _is_external(tensor):
                    if base_dir is None:
                        raise ValueError("The model has external tensors but no base_dir to read them from.")
                    file, offset, length = _external_span(tensor, base_dir)
                    source = sources.get(file) or sources.setdefault(file, open(file, "rb"))  # noqa: SIM115
                    source.seek(offset)
                    start = _align(out)
                    _copy(source, out, length)
                elif tensor.HasField("raw_data") and len(tensor.raw_data) >= size_threshold:
                    start, length = _align(out), len(tensor.raw_data)
                    out.write(tensor.raw_data)
                    tensor.ClearField("raw_data")
                else:
                    continue  # small, or typed fields (float_data, ...): stays inline
                del tensor.external_data[:]
                for key, value in (("location", data_path.name), ("offset", str(start)), ("length", str(length))):
                    tensor.external_data.add(key=key, value=value)
                tensor.data_location = onnx.TensorProto.EXTERNAL
    finally:
        for source in sources.values():
            source.close()
    onnx.save_model(model, str(path))
    partial.replace(data_path)
    return [path, data_path]


def _align(out: BinaryIO, alignment: int = 4096) -> int:
    position = out.tell()
    padding = -position % alignment
    if padding:
        out.write(b"\0" * padding)
    return position + padding


def _copy(source: BinaryIO, out: BinaryIO, length: int, chunk: int = 1 << 24) -> None:
    while length > 0:
        block = source.read(min(chunk, length))
        if not block:
            raise ValueError(f"External data file {source.name} ends before the tensor it holds.")
        out.write(block)
        length -= len(block)


def _give_default(proto: onnx.ModelProto, name: str, default: np.ndarray) -> None:
    """Turn graph input `name` into an overridable initializer holding `default` (it stays a graph input)."""
    if not any(i.name == name for i in proto.graph.input):
        raise ValueError(f"The traced graph has no input {name!r}.")
    proto.graph.initializer.append(numpy_helper.from_array(default, name))
