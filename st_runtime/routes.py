"""The graphs of one exported folder, and which task runs which.

A model without a Router has one graph. A Router/Asym model has one graph per route, each with its own inputs,
tokenizer and variants (manifest `routing`); the task of a call (encode_query -> "query", ...) picks the route
with the rules sentence-transformers applies to text, resolved at export time. Routes other than the primary
one are opened on first use, so a process that only encodes queries never loads or runs the document graph.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from st_runtime.backends import Backend, OnnxBackend, OpenVinoBackend
from st_runtime.errors import ManifestError
from st_runtime.manifest import Manifest, Route, Variant, folder_file, verify_files
from st_runtime.providers import ProviderSpec
from st_runtime.tokenizer import Feeds, TextTokenizer

EXTERNAL_DATA_SUFFIX = "_data"  # onnx/model.onnx -> onnx/model.onnx_data, as exporters/onnx_export.py writes it


@dataclass(frozen=True)
class Graph:
    """One opened graph: its route's description, the chosen variant, its tokenizer and the engine running it."""

    route_name: str | None  # None: the top-level graph (the only one of a model without routes)
    route: Route
    variant: Variant
    tokenizer: TextTokenizer
    backend: Backend

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.route.outputs

    @property
    def input_names(self) -> tuple[str, ...]:
        """Inputs the graph declares, optional ones with a default (prompt_length) included."""
        return self.backend.input_names

    def run(self, feeds: Feeds, outputs: list[str]) -> list[np.ndarray]:
        """Run the graph, feeding only the inputs it declares.

        For a backend with a `sequence_bucket` above 1 (OpenVINO), the batch is padded further to a multiple of it
        (masked positions, which change no output of a graph that is not `padding_sensitive`) and the sequence axis
        of the outputs is cut back, so that a few input shapes serve every batch.
        """
        feeds = {name: feeds[name] for name in self.backend.input_names if name in feeds}
        spec, mask = self.tokenizer.spec, feeds.get("attention_mask")
        if mask is None or mask.ndim != 2 or spec.padding_sensitive:
            return self.backend.run(outputs, feeds)
        length = mask.shape[1]
        padded = -(-length // self.backend.sequence_bucket) * self.backend.sequence_bucket
        if padded == length or (spec.max_seq_length is not None and padded > spec.max_seq_length):
            return self.backend.run(outputs, feeds)
        left = spec.padding_side == "left"
        width = ((0, 0), (padded - length, 0) if left else (0, padded - length))
        feeds = {name: np.pad(value, width, constant_values=spec.pad_token_id if name == "input_ids" else 0)
                 if value.shape == mask.shape else value for name, value in feeds.items()}
        cut = slice(padded - length, padded) if left else slice(0, length)
        return [out[:, cut] if out.ndim >= 3 and out.shape[1] == padded else out
                for out in self.backend.run(outputs, feeds)]


def open_graph(
    folder: Path,
    manifest: Manifest,
    route_name: str | None,
    *,
    variant: str | None = None,
    file_name: str | None = None,
    providers: Sequence[ProviderSpec] | str | None = None,
    intra_op_num_threads: int | None = None,
    fallback_to_cpu: bool = False,
    verify: bool = True,
    device: str = "CPU",
) -> Graph:
    """Open route `route_name` (None: the top-level graph) of an exported folder, with onnxruntime or, for an
    OpenVINO IR variant, OpenVINO on `device`.

    Every file is checked with `folder_file` (inside the folder, a regular file) before anything is read or hashed,
    with or without `verify`.

    Raises:
        ManifestError: no such route or variant, the manifest's embedding_dimension disagrees with the graph, or its
            pad id is outside the tokenizer's vocabulary.
        ModelFileError: a file is missing, outside the folder, not a regular file, does not match its sha256 (when
            `verify`; external data included), or the engine cannot load it.
        ProviderError: a requested provider / device is unavailable.
    """
    route = manifest.route(route_name)
    chosen = route.variant(name=variant, file_name=file_name)
    files = graph_files(folder, manifest, route_name, chosen)
    if verify:
        verify_files(folder, manifest, files)
    tokenizer = TextTokenizer(folder, route.tokenizer)
    prefix = f"routing.routes[{route_name!r}]." if route_name is not None else ""
    check_pad_id(tokenizer, prefix)
    if chosen.backend == "openvino":
        backend: Backend = OpenVinoBackend(folder / chosen.file, device=device,
                                           inference_precision=chosen.inference_precision, num_threads=intra_op_num_threads)
    else:
        backend = OnnxBackend(folder / chosen.file, providers, intra_op_num_threads=intra_op_num_threads,
                              fallback_to_cpu=fallback_to_cpu)
    declared = backend.output_dimension("sentence_embedding") if route.embedding_dimension is not None else None
    if declared is not None and declared != route.embedding_dimension:
        raise ManifestError(f"{prefix}embedding_dimension in st_runtime.json is {route.embedding_dimension}, but the "
                            f"graph {chosen.file} outputs {declared} dimensions. Re-export the model.")
    return Graph(route_name, route, chosen, tokenizer, backend)


def check_pad_id(tokenizer: TextTokenizer, prefix: str = "") -> None:
    """Refuse a pad id outside the tokenizer's vocabulary (the graph's embedding has no row for it: every padded
    batch would fail in the engine). `prefix` names the route in the message ("routing.routes['query'].").

    Raises:
        ManifestError: naming the field, its value and the vocabulary size.
    """
    size = tokenizer.vocab_size
    spec = tokenizer.spec
    if spec.pad_token_id >= size:
        raise ManifestError(f"{prefix}tokenizer.pad_token_id in st_runtime.json is {spec.pad_token_id}, outside the "
                            f"{size} tokens of {spec.file}, so padding a batch would fail in the graph. Re-export the "
                            "model.")


def graph_files(folder: Path, manifest: Manifest, route_name: str | None, chosen: Variant) -> list[str]:
    """The files one graph reads, each checked with `folder_file` before anything opens it: the variant's file, the
    route's tokenizer, an OpenVINO IR's .bin weights and the ONNX external data (the files listed as `<file>_data*`,
    and the file st-export writes, `<file>_data`, whenever it is there, so that an unlisted one fails verification).

    Raises:
        ModelFileError: a file is missing, outside the folder or not a regular file; the message names its entry.
    """
    route = manifest.route(route_name)
    prefix = f"routing.routes[{route_name!r}]." if route_name is not None else ""
    files = {chosen.file: f"{prefix}variants[{chosen.name!r}].file", route.tokenizer.file: f"{prefix}tokenizer.file"}
    if chosen.backend == "openvino":
        files[Path(chosen.file).with_suffix(".bin").as_posix()] = f"{prefix}variants[{chosen.name!r}].file (its .bin)"
    external = chosen.file + EXTERNAL_DATA_SUFFIX
    for rel in manifest.files:
        if rel.startswith(external):
            files.setdefault(rel, f"files[{rel!r}] (external data of {chosen.file})")
    for rel, entry in files.items():
        folder_file(folder, rel, entry=entry)
    # Checked above: chosen.file resolves inside the folder, so its sibling path is inside it too.
    if chosen.backend != "openvino" and external not in files and os.path.lexists(folder / external):
        folder_file(folder, external, entry=f"external data of {chosen.file}")
        files[external] = ""
    return list(files)


class Routes:
    """Task -> graph for one exported folder. Thread-safe; each route is opened at most once.

    Args:
        manifest: the folder's manifest.
        primary: the already opened top-level graph (for a routed model, route `manifest.routing.primary`).
        open_route: opens a route by name, with the same variant and session settings as `primary`.

    Raises:
        ManifestError: a route lacks the variant `primary` runs.
    """

    def __init__(self, manifest: Manifest, primary: Graph, open_route: Callable[[str], Graph]) -> None:
        self._routing = manifest.routing
        self._open_route = open_route
        self._graphs: dict[str, Graph] = {}
        if self._routing is not None:
            self._graphs[self._routing.primary] = primary
            for route in self._routing.routes.values():  # a variant missing from a route fails now, not at first use
                route.variant(name=primary.variant.name)
        self._primary = primary
        self._lock = threading.Lock()

    @property
    def names(self) -> tuple[str, ...]:
        """Route names (empty for a model without routes)."""
        return tuple(self._routing.routes) if self._routing else ()

    @property
    def opened(self) -> tuple[str, ...]:
        """Routes whose graph is loaded so far (the primary one from the start, the others on first use)."""
        return tuple(self._graphs)

    def opened_graphs(self) -> tuple[Graph, ...]:
        """The graphs loaded so far, the primary one first."""
        with self._lock:
            return (self._primary, *(g for g in self._graphs.values() if g is not self._primary))

    def resolve(self, task: str | None) -> str | None:
        """Route name for `task`; None for a model without routes (which ignores the task, as sentence-transformers does).

        Raises:
            ValueError: a routed model has no route for `task` (or no default route and task is None).
        """
        return None if self._routing is None else self._routing.resolve(task)

    def graph(self, task: str | None) -> Graph:
        """The graph that serves `task`, opened on first use.

        Raises:
            ValueError: no route serves `task`.
        """
        name = self.resolve(task)
        if name is None:
            return self._primary
        graph = self._graphs.get(name)
        if graph is None:
            with self._lock:
                graph = self._graphs.get(name)
                if graph is None:
                    graph = self._graphs[name] = self._open_route(name)
        return graph
