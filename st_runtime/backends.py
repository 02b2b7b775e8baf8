"""The engines that run a graph: onnxruntime for .onnx files, OpenVINO for IR (.xml). Both offer the same
two things: `input_names` and `run(outputs, feeds) -> list[np.ndarray]`; both are thread-safe."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from st_runtime.errors import ModelFileError, ProviderError, one_line
from st_runtime.machine import available_cores
from st_runtime.providers import ProviderSpec, create_session

OPENVINO_DEVICES = ("CPU", "GPU", "NPU", "AUTO")
_ENVIRON = threading.Lock()
OPENVINO_PRECISIONS = {"fp32": "f32", "f32": "f32", "bf16": "bf16", "fp16": "f16", "f16": "f16"}


# onnxruntime on CPU runs a batch fastest when its activations stay in the cores' caches: batches of at most this
# many padded tokens per intra-op thread. On 2 threads of an Intel Xeon (AMX, 2 MB L2 per core) 512-token batches
# against batch 32 alone: MiniLM documents (median 101 tokens) +43% int8 / +52% fp32, its short sentences +3% / +10%,
# all-mpnet-base-v2 documents +25%; 256 per batch was slower again (docs/perf/profile-minilm.md).
CPU_BATCH_TOKENS_PER_THREAD = 256


class Backend(Protocol):
    input_names: tuple[str, ...]
    sequence_bucket: int  # batches are padded to a multiple of this many tokens (1: never; see routes.Graph.run)
    batch_tokens: int | None  # at most this many padded tokens per batch (None: the caller's batch_size alone)

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...

    def output_dimension(self, name: str) -> int | None: ...


class OnnxBackend:
    """An onnxruntime session; inputs with a default value (overridable initializers) count as inputs."""

    sequence_bucket = 1  # onnxruntime runs any shape at no extra cost

    def __init__(self, path: Path, providers: Sequence[ProviderSpec] | str | None = None, *,
                 intra_op_num_threads: int | None = None, fallback_to_cpu: bool = False) -> None:
        from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf, NoSuchFile

        try:
            self.session = create_session(str(path), providers, intra_op_num_threads=intra_op_num_threads,
                                          fallback_to_cpu=fallback_to_cpu)
        except (Fail, InvalidGraph, InvalidProtobuf, NoSuchFile) as exc:
            raise ModelFileError(f"onnxruntime could not load {path}: {exc}. The file is corrupt or was written by "
                                 "another tool; re-export the model.") from exc
        self.input_names = tuple(i.name for i in (*self.session.get_inputs(), *self.session.get_overridable_initializers()))
        on_cpu = self.session.get_providers()[0] == "CPUExecutionProvider"
        threads = self.session.get_session_options().intra_op_num_threads or available_cores()  # 0: onnxruntime's default
        self.batch_tokens = CPU_BATCH_TOKENS_PER_THREAD * threads if on_cpu else None

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(outputs, feeds)

    def output_dimension(self, name: str) -> int | None:
        """Static size of the last axis of output `name`; None when it is dynamic or there is no such output."""
        shape = next((o.shape for o in self.session.get_outputs() if o.name == name), None)
        return shape[-1] if shape and isinstance(shape[-1], int) else None


class OpenVinoBackend:
    """An OpenVINO compiled model with one infer request per thread.

    Args:
        device: "CPU", "GPU", "NPU" or "AUTO".
        inference_precision: "fp32" (default: set explicitly, since OpenVINO picks bf16 by itself on CPUs with
            AVX-512 BF16/AMX), "bf16" or "fp16".
    """

    # OpenVINO's CPU plugin prepares its kernels for each new input shape (tens of ms with int8/AMX, the batch-1 p99
    # of st-bench): rounding the sequence length up to a multiple of 8 keeps the shapes few (docs/perf/minilm.md).
    sequence_bucket = 8
    batch_tokens = None  # smaller batches mean more shapes to prepare; not measured to gain here

    def __init__(self, path: Path, *, device: str = "CPU", inference_precision: str | None = None,
                 num_threads: int | None = None) -> None:
        try:
            ov = import_openvino()
        except ImportError as exc:
            raise ImportError("Running OpenVINO IR needs the openvino extra: pip install 'st-runtime[openvino]'") from exc
        if device.upper().split(":")[0].split(".")[0] not in OPENVINO_DEVICES:
            raise ProviderError(f"OpenVINO device must be one of {OPENVINO_DEVICES}, got {device!r}.")
        precision = OPENVINO_PRECISIONS.get(inference_precision or "fp32")
        if precision is None:
            raise ValueError(f"inference_precision must be one of {sorted(OPENVINO_PRECISIONS)}, got {inference_precision!r}.")
        core = ov.Core()
        if device.upper() != "AUTO" and device.upper().split(".")[0] not in [d.split(".")[0] for d in core.available_devices]:
            raise ProviderError(f"OpenVINO device {device!r} is not available here (available: {core.available_devices}).")
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if device.upper() != "AUTO":
            config["INFERENCE_PRECISION_HINT"] = precision
        if num_threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(num_threads)
        try:
            model = core.read_model(str(path))
            if precision == "bf16" and any(op.get_type_name() == "FakeQuantize" for op in model.get_ops()):
                # OpenVINO 2026.4's fused attention (snippets) computes wrong results for an int8 IR run in bf16 at a
                # sequence length of 32 (min cosine to fp32 0.64; docs/perf/profile-minilm.md): not fused, it is right.
                config["SNIPPETS_MODE"] = "DISABLE"
            self.compiled = core.compile_model(model, device, config)
        except RuntimeError as exc:
            raise ModelFileError(
                f"OpenVINO could not load {path.name}: {one_line(exc)[:300]}. OpenVINO {ov.get_version()} may not run "
                "this architecture: use an onnx variant of the model (st-export without --backend openvino), or "
                "re-export it if the file is damaged.") from exc
        self.input_names = tuple(input_name(port) for port in self.compiled.inputs)
        self._outputs = {name: port for port in self.compiled.outputs for name in port.get_names()}
        if "last_hidden_state" in self._outputs:
            # An IR names the token embeddings only last_hidden_state (quantizers/openvino_passes.py), because
            # optimum-intel refuses an IR that has outputs named both token_embeddings and sentence_embedding.
            self._outputs.setdefault("token_embeddings", self._outputs["last_hidden_state"])
        self._local = threading.local()

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        result = request.infer(feeds)
        # The request reuses its output buffers on the next call: copy out.
        return [np.array(result[self._outputs[name]], copy=True) for name in outputs]

    def output_dimension(self, name: str) -> int | None:
        """Static size of the last axis of output `name`; None when it is dynamic or there is no such output."""
        port = self._outputs.get(name)
        shape = port.get_partial_shape() if port is not None else None
        if shape is None or shape.rank.is_dynamic or len(shape) == 0 or shape[len(shape) - 1].is_dynamic:
            return None
        return shape[len(shape) - 1].get_length()


def input_name(port: Any) -> str:
    """The name an OpenVINO input port is fed by: the graph input's own name among the port's names. When OpenVINO
    folds a no-op Cast of an input into it, the port also carries the Cast's output name ("/Cast_1_output_0"), which
    `get_any_name()` may return instead of "attention_mask"; ONNX node outputs start with "/", graph inputs do not."""
    names = sorted(name for name in port.get_names() if not name.startswith("/"))
    return names[0] if names else port.get_any_name()


@contextlib.contextmanager
def without_telemetry() -> Iterator[None]:
    """Inside this block OpenVINO and NNCF send no usage telemetry. `import openvino` (its converter, ovc), every
    `convert_model` call and `import nncf` start openvino-telemetry (Google Analytics events; offline, its attempts
    cost 7-11 s a conversion) unless they think they run in CI, and CI=true is the only off switch they read: it is
    set for the block and restored after, under a lock."""
    with _ENVIRON:
        previous = os.environ.get("CI")
        os.environ["CI"] = "true"
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("CI", None)
            else:
                os.environ["CI"] = previous


def import_openvino() -> ModuleType:
    """`import openvino` inside `without_telemetry` (its converter, ovc, starts telemetry when first imported)."""
    with without_telemetry():
        import openvino
    return openvino
