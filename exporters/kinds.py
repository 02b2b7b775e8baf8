"""The registry of model kinds the exporter handles. Each kind module (bi_encoder, ...) registers one
`KindExporter`; `api.export` looks the loaded model's kind up here and stays kind-agnostic."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from st_runtime.manifest import Manifest, Route, Routing
from st_runtime.task_configs import Task


@dataclass(frozen=True)
class ExportOptions:
    """Settings every kind's graph export honours."""

    opset: int
    external_data: bool | None


@dataclass
class SourceModel:
    """A loaded sentence-transformers model and the facts about it that the export needs."""

    model: nn.Module  # SentenceTransformer, CrossEncoder or SparseEncoder
    task: Task
    source: dict[str, Any]
    modules: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class WrittenModel:
    """What a kind's writer returns: the model's top-level graph, and the manifest fields only the model knows."""

    graph: Route  # inputs, outputs, tokenizer, variants, embedding_dimension, task_config (modules: set by export)
    routing: Routing | None = None  # a Router model's graphs, one per route (`graph` mirrors the primary route's)
    similarity_fn_name: str | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None

    def manifest(self, task: Task, source: SourceModel, **others: Any) -> Manifest:
        """The manifest of the written model; `others` sets the remaining fields (files, versions, ...)."""
        return Manifest.from_graph(task, dataclasses.replace(self.graph, modules=tuple(source.modules)),
                                   routing=self.routing, similarity_fn_name=self.similarity_fn_name,
                                   prompts=self.prompts, default_prompt_name=self.default_prompt_name,
                                   source=source.source, **others)


@dataclass(frozen=True)
class KindExporter:
    """How one model kind is exported.

    write: writes the graph file(s) into the staging folder and returns them described (`WrittenModel`).
    check_parity: compares sentence-transformers with st_runtime on the staged folder; returns the report
        for the manifest or raises ParityError.
    """

    task: Task  # manifest task name, e.g. "sentence-embedding"
    model_type: str  # sentence-transformers class name, e.g. "SentenceTransformer"
    load: Callable[..., nn.Module]  # the sentence-transformers class, called as load(path, device="cpu", ...)
    supported_modules: frozenset[str]
    write: Callable[[SourceModel, Path, ExportOptions], WrittenModel]
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
