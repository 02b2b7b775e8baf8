"""The graphs of one exported folder, and which task runs which.

A model without a Router has one graph. A Router/Asym model has one graph per route, each with its own inputs,
tokenizer and variants (manifest `routing`); the task of a call (encode_query -> "query", ...) picks the route
with the rules sentence-transformers applies to text, resolved at export time. Routes other than the primary
one are opened on first use, so a process that only encodes queries never loads or runs the document graph.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from st_runtime.backends import Backend, OnnxBackend, OpenVinoBackend
from st_runtime.manifest import Manifest, Route, Variant, verify_files
from st_runtime.providers import ProviderSpec
from st_runtime.tokenizer import Feeds, TextTokenizer


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
        """Run the graph, feeding only the inputs it declares."""
        return self.backend.run(outputs, {name: feeds[name] for name in self.backend.input_names if name in feeds})


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

    Raises:
        ManifestError: no such route or variant.
        ModelFileError: a file is missing, does not match its sha256 (when `verify`), or the engine cannot load it.
        ProviderError: a requested provider / device is unavailable.
    """
    route = manifest.route(route_name)
    chosen = route.variant(name=variant, file_name=file_name)
    files = [chosen.file, route.tokenizer.file]
    files += [f for f in manifest.files if f.startswith(chosen.file + "_data")]
    if chosen.backend == "openvino":
        files.append(str(Path(chosen.file).with_suffix(".bin").as_posix()))
    if verify:
        verify_files(folder, manifest, files)
    tokenizer = TextTokenizer(folder, route.tokenizer)
    if chosen.backend == "openvino":
        backend: Backend = OpenVinoBackend(folder / chosen.file, device=device,
                                           inference_precision=chosen.inference_precision, num_threads=intra_op_num_threads)
    else:
        backend = OnnxBackend(folder / chosen.file, providers, intra_op_num_threads=intra_op_num_threads,
                              fallback_to_cpu=fallback_to_cpu)
    return Graph(route_name, route, chosen, tokenizer, backend)


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
