"""The registry of model kinds the exporter handles. Each kind module (bi_encoder, ...) registers one
`KindExporter`; `api.export` looks the loaded model's kind up here and stays kind-agnostic."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn


@dataclass(frozen=True)
class ExportOptions:
    """Settings every kind's graph export honours."""

    opset: int
    external_data: bool | None


@dataclass
class SourceModel:
    """A loaded sentence-transformers model and the facts about it that the export needs."""

    model: nn.Module  # SentenceTransformer, CrossEncoder or SparseEncoder
    task: str
    source: dict[str, Any]
    modules: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class KindExporter:
    """How one model kind is exported.

    write: writes the graph file(s) into the staging folder and returns the kind's Manifest fields
        (inputs, outputs, variants, embedding_dimension, task_config, ...).
    check_parity: compares sentence-transformers with st_runtime on the staged folder; returns the report
        for the manifest or raises ParityError.
    """

    task: str  # manifest task name, e.g. "sentence-embedding"
    model_type: str  # sentence-transformers class name, e.g. "SentenceTransformer"
    load: Callable[..., nn.Module]  # the sentence-transformers class, called as load(path, device="cpu", ...)
    supported_modules: frozenset[str]
    write: Callable[[SourceModel, Path, ExportOptions], dict[str, Any]]
    check_parity: Callable[..., dict[str, Any]]  # (reference model, folder, *, atol) -> report


KINDS: dict[str, KindExporter] = {}


def register(kind: KindExporter) -> KindExporter:
    """Add a kind to the registry (keyed by its sentence-transformers model_type)."""
    KINDS[kind.model_type] = kind
    return kind


# Kinds this environment knows but cannot export (model_type -> why and what to install), e.g. MultiVectorEncoder
# under sentence-transformers 5.x; source.py refuses them with that one line.
UNAVAILABLE: dict[str, str] = {}


def register_unavailable(model_type: str, reason: str) -> None:
    """Record a kind whose exporter cannot load here (a missing dependency), with the message to refuse it with."""
    UNAVAILABLE[model_type] = reason
