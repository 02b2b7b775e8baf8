"""Router / Asym models: a different module chain per task (e.g. a cheap query encoder, a full document encoder).

Each route reachable by text input is flattened into its own chain (modules before the Router + the route's
modules + modules after it) and exported by the kind's own pipeline writer as its own graph, with its own
inputs and tokenizer: `onnx/model_<route>.onnx`, `tokenizer.json` (or `tokenizer_<route>.json` when the route's
tokenizer differs from the primary route's). Which task runs which route is resolved here, once, with
sentence-transformers' own resolution rules for text, and written to the manifest's `routing`; the runtime
only looks it up. Kind-agnostic: the sparse encoder reuses it with its own pipeline writer.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from exporters.artifacts import TOKENIZER_FILE, WEIGHT_FILES
from exporters.errors import UnsupportedModelError
from exporters.kinds import ExportOptions, SourceModel
from st_runtime.manifest import Route, Routing, TokenizerSpec

ROUTER = "Router"  # sentence-transformers' Router; Asym is an alias of the same class
TEXT = "text"
_UNKNOWN_TASK = "\x00any-other-task"  # a task name no Router maps, standing for "every task not listed"

# Writes one module chain as one graph + its tokenizer, and returns the graph described as a Route (inputs, outputs,
# tokenizer, variants, embedding_dimension, task_config).
PipelineWriter = Callable[..., Route]


def find_router(model: nn.Sequential) -> tuple[int, nn.Module] | None:
    """(index, module) of the model's Router, or None.

    Raises:
        UnsupportedModelError: more than one Router.
    """
    found = [(index, module) for index, module in enumerate(model) if type(module).__name__ == ROUTER]
    if len(found) > 1:
        raise UnsupportedModelError(f"The model has {len(found)} Router modules (at {[i for i, _ in found]}); only "
                                    "models with one Router are exported.")
    return found[0] if found else None


def _text_modality(model: nn.Sequential, index: int) -> str | None:
    """The modality the Router sees for text input: a first-module Router infers "text" in preprocess, a later
    one reads features["modality"], which a Transformer sets to "text" and other input modules leave unset."""
    return TEXT if index == 0 or type(model[0]).__name__ == "Transformer" else None


def _resolve(router: nn.Module, task: str | None, modality: str | None) -> str | None:
    try:
        return router._resolve_route(task=task, modality=modality)  # sentence-transformers' own rules
    except ValueError:
        return None


def routing_table(model: nn.Sequential) -> dict[str, Any]:
    """Which route serves which task for text input: {"tasks", "default_route", "other_tasks_route"}.

    Only tasks the Router names (as a route or in route_mappings) can differ from "any other task", so
    resolving those, None, and one stand-in unknown task covers every call.
    """
    index, router = find_router(model)
    modality = _text_modality(model, index)
    named = set(router.sub_modules) | {task for task, _ in router.route_mappings if task is not None}
    tasks = {task: route for task in sorted(named) if (route := _resolve(router, task, modality)) is not None}
    return {
        "tasks": tasks,
        "default_route": _resolve(router, None, modality),
        "other_tasks_route": _resolve(router, _UNKNOWN_TASK, modality),
    }


def reachable_routes(model: nn.Sequential) -> list[str]:
    """The Router's routes that text input can reach, in the Router's order (image-only routes are left out).

    Raises:
        UnsupportedModelError: no route serves text.
    """
    table = routing_table(model)
    used = {*table["tasks"].values(), table["default_route"], table["other_tasks_route"]} - {None}
    _, router = find_router(model)
    if not used:
        raise UnsupportedModelError(f"No route of the Router serves text input (routes: {list(router.sub_modules)}).")
    return [name for name in router.sub_modules if name in used]


def route_pipelines(model: nn.Sequential) -> dict[str, list[nn.Module]]:
    """Each reachable route's whole module chain: modules before the Router, the route's, modules after it."""
    index, router = find_router(model)
    before, after = list(model)[:index], list(model)[index + 1 :]
    return {name: [*before, *router.sub_modules[name], *after] for name in reachable_routes(model)}


def describe_router(index: int, router: nn.Module, model: nn.Sequential,
                    describe_module: Callable[[str, nn.Module], dict[str, Any]]) -> dict[str, Any]:
    """The manifest entry of a Router: its config and, per reachable route, its modules (each checked by
    `describe_module(where, module)`, which raises for what cannot be exported; `where` reads e.g.
    "0 (Router route 'query', item 1)").

    Raises:
        UnsupportedModelError: a nested Router, an empty route, or an unsupported module in a route.
    """
    routes = {}
    for name in reachable_routes(model):
        modules = list(router.sub_modules[name])
        if not modules:
            raise UnsupportedModelError(f"Route {name!r} of the Router (module {index}) has no modules.")
        described = []
        for position, module in enumerate(modules):
            where = f"{index} (Router route {name!r}, item {position})"
            if type(module).__name__ == ROUTER:
                raise UnsupportedModelError(f"Module {where} is a nested Router; only one level of routing is exported.")
            described.append(describe_module(where, module))
        routes[name] = described
    config = {
        "default_route": router.default_route,
        "allow_empty_key": router.allow_empty_key,
        "route_mappings": {str(key): value for key, value in router.route_mappings.items()},  # as Router.save writes
    }
    return {"index": index, "type": ROUTER, "config": config, "routes": routes}


def route_file_stems(names: list[str]) -> dict[str, str]:
    """A file-name-safe, unique stem per route name ("query" -> "query", "a/b" -> "a_b")."""
    stems: dict[str, str] = {}
    for name in names:
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".") or "route"
        while stem in stems.values():
            stem += "_"
        stems[name] = stem
    return stems


def write_routed(source: SourceModel, staging: Path, options: ExportOptions,
                 write_pipeline: PipelineWriter) -> Routing:
    """Export every reachable route of a Router model with `write_pipeline` and return the routing (the model's
    top-level graph mirrors `routing.routes[routing.primary]`).

    `write_pipeline(modules, staging, *, graph_file, tokenizer_file, options)` writes one chain.
    """
    model = source.model
    index, router = find_router(model)
    table = routing_table(model)
    pipelines = route_pipelines(model)
    primary = table["default_route"] or next(iter(pipelines))
    order = [primary, *(name for name in pipelines if name != primary)]  # primary first: it owns tokenizer.json
    stems = route_file_stems(order)
    described = _route_module_descriptions(source.modules, index)
    routes: dict[str, Route] = {}
    for name in order:
        tokenizer_file = TOKENIZER_FILE if name == primary else f"tokenizer_{stems[name]}.json"
        route = write_pipeline(pipelines[name], staging, graph_file=f"onnx/model_{stems[name]}.onnx",
                               tokenizer_file=tokenizer_file, options=options)
        routes[name] = dataclasses.replace(route, modules=tuple(described[name]),
                                           tokenizer=_share_identical_tokenizer(staging, route.tokenizer))
    _drop_route_input_weights(staging, model, index, router, list(pipelines))
    return Routing(routes=routes, primary=primary, **table)


def _route_module_descriptions(modules: list[dict[str, Any]], index: int) -> dict[str, list[dict[str, Any]]]:
    """Per route, the flattened chain's descriptions (from the top-level module list, whose Router entry holds
    its routes' modules)."""
    entry = modules[index]
    before, after = modules[:index], modules[index + 1 :]
    return {name: [*before, *route, *after] for name, route in entry["routes"].items()}


def _share_identical_tokenizer(staging: Path, spec: TokenizerSpec) -> TokenizerSpec:
    """Point a route at tokenizer.json when its own tokenizer file is byte-identical, and drop the copy."""
    own = staging / spec.file
    shared = staging / TOKENIZER_FILE
    if spec.file != TOKENIZER_FILE and shared.is_file() and own.read_bytes() == shared.read_bytes():
        own.unlink()
        return dataclasses.replace(spec, file=TOKENIZER_FILE)
    return spec


def _drop_route_input_weights(staging: Path, model: nn.Sequential, index: int, router: nn.Module,
                              exported: list[str]) -> None:
    """Remove the torch weights of each exported route's input module (its transformer or static embedding),
    which the graphs hold, as the top-level export does for a model without routes; small heads stay."""
    if index != 0:
        return  # the routes hold no input module: the shared one at the top level was handled already
    entries = json.loads((staging / "modules.json").read_text())
    router_dir = staging / entries[index]["path"]
    for name in exported:
        first = router.sub_modules[name][0]
        folder = router_dir / f"{name}_0_{type(first).__name__}"  # Router.save's naming
        for weight_file in WEIGHT_FILES:
            (folder / weight_file).unlink(missing_ok=True)
        for shard in folder.glob("model-*-of-*.safetensors"):
            shard.unlink()
