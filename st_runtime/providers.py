"""Choosing onnxruntime execution providers and session options, in one place."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import onnxruntime as ort

from st_runtime.errors import ProviderError

logger = logging.getLogger(__name__)

ProviderSpec = str | tuple[str, dict[str, Any]]

_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}


def _name(spec: ProviderSpec) -> str:
    return spec[0] if isinstance(spec, tuple) else spec


def resolve_providers(
    requested: Sequence[ProviderSpec] | str | None,
    available: Sequence[str] | None = None,
    *,
    fallback_to_cpu: bool = False,
) -> list[ProviderSpec]:
    """Turn what the caller asked for into a provider list for `ort.InferenceSession`.

    Args:
        requested: None (CPU only: never silently pick a GPU), a provider name or short alias
            ("cpu", "cuda", "tensorrt", "openvino"), or a list of names / (name, options) tuples.
        available: providers this onnxruntime build has (default: `ort.get_available_providers()`).
        fallback_to_cpu: drop unavailable providers with a logged warning instead of raising.

    Returns:
        The providers to use, in priority order; CPU is always appended as the last resort.

    Raises:
        ProviderError: a requested provider is not available and `fallback_to_cpu` is False.
    """
    available = list(ort.get_available_providers() if available is None else available)
    if requested is None:
        requested = ["CPUExecutionProvider"]
    elif isinstance(requested, str):
        requested = [requested]
    resolved: list[ProviderSpec] = []
    for spec in requested:
        name = _ALIASES.get(_name(spec).lower(), _name(spec))
        spec = (name, spec[1]) if isinstance(spec, tuple) else name
        if name not in available:
            message = (
                f"Execution provider {name!r} is not available in this onnxruntime build (available: "
                f"{', '.join(available)}). Install the matching package (onnxruntime-gpu for CUDA/TensorRT, "
                "onnxruntime-openvino for OpenVINO)"
            )
            if not fallback_to_cpu:
                raise ProviderError(message + ", or pass fallback_to_cpu=True to run on CPU instead.")
            logger.warning("%s; falling back to CPUExecutionProvider.", message)
            continue
        resolved.append(spec)
    if "CPUExecutionProvider" not in [_name(s) for s in resolved]:
        resolved.append("CPUExecutionProvider")
    return resolved


def session_options(intra_op_num_threads: int | None = None) -> ort.SessionOptions:
    """Session options for inference: all graph optimizations, sequential execution, no memory patterns.

    A memory pattern is planned and cached per input shape, and text batches change shape with every length: with
    them on, st-bench's MiniLM int8 row peaked 50 MB higher (242 vs 193 MB over 2000 Lee sentences) and ran bulk
    encode 5% slower, batch-1 latency unchanged (docs/perf/profile-minilm.md).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_mem_pattern = False
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if intra_op_num_threads is not None:
        if intra_op_num_threads < 1:
            raise ValueError(f"intra_op_num_threads must be >= 1, got {intra_op_num_threads}.")
        options.intra_op_num_threads = intra_op_num_threads
    return options


def create_session(
    path: str,
    providers: Sequence[ProviderSpec] | str | None = None,
    *,
    intra_op_num_threads: int | None = None,
    fallback_to_cpu: bool = False,
) -> ort.InferenceSession:
    """Open an ONNX file with resolved providers, and check that onnxruntime really uses the first one.

    Raises:
        ProviderError: as `resolve_providers`, or when onnxruntime silently dropped the requested provider
            (for example CUDA libraries missing at run time) and `fallback_to_cpu` is False.
    """
    resolved = resolve_providers(providers, fallback_to_cpu=fallback_to_cpu)
    session = ort.InferenceSession(path, sess_options=session_options(intra_op_num_threads), providers=resolved)
    wanted = _name(resolved[0])
    if wanted not in session.get_providers():
        message = f"onnxruntime could not start {wanted!r} (it runs on {session.get_providers()})"
        if not fallback_to_cpu:
            raise ProviderError(message + "; check the CUDA/cuDNN/TensorRT libraries, or pass fallback_to_cpu=True.")
        logger.warning("%s; falling back to CPU.", message)
    return session
