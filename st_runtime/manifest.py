"""The folder contract: `st_runtime.json`, the manifest every exported folder carries.

The runtime reads only this file (and the files it names) to know what the graph computes. Bump
`FORMAT_VERSION` when the meaning of a field changes; the runtime refuses versions it does not know. The task and its
kind-specific task_config are typed in st_runtime/task_configs.py; `from_json` checks every field before use.
"""

from __future__ import annotations

import hashlib
import json
import stat
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from st_runtime.errors import ManifestError, ModelFileError
from st_runtime.manifest_checks import check_manifest_data, fail
from st_runtime.staging import atomic_file
from st_runtime.task_configs import MODEL_CONFIGS, BiEncoderConfig, Task, TaskConfig, config_class

MANIFEST_NAME = "st_runtime.json"
# 2 added two optional keys, a variant's `report` and a multi-vector task_config's `truncate_dim`: a runtime that reads
# only 1 refuses them by version instead of as malformed fields. A format 1 manifest is a format 2 one without them.
FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = (1, 2)
FORMAT_2_KEYS = ("variants[].report", "task_config.truncate_dim")


@dataclass(frozen=True)
class Variant:
    """One runnable graph in the folder (fp32, or a quantized/optimized copy of it)."""

    name: str  # "fp32", "qint8_avx512_vnni", "O3", ...
    file: str  # path relative to the folder, e.g. "onnx/model.onnx"
    precision: str = "fp32"
    isa: str | None = None
    accuracy: dict[str, float] | None = None
    backend: str = "onnxruntime"  # or "openvino" for an IR (.xml)
    inference_precision: str | None = None  # a run-time precision hint, e.g. "bf16" for OpenVINO on AMX/AVX512-BF16
    report: dict[str, Any] | None = None  # what the pass that wrote it reported, e.g. {"fusions": {"Attention": 6}}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (`report` only when there is one, so folders without reports read as they always did)."""
        data = asdict(self)
        if data["report"] is None:
            del data["report"]
        return data


@dataclass(frozen=True)
class TokenizerSpec:
    """How texts are turned into graph inputs, exactly as the source model did it."""

    file: str = "tokenizer.json"
    max_seq_length: int | None = 512  # None: texts are never truncated (e.g. StaticEmbedding)
    pad_token: str = "[PAD]"
    pad_token_id: int = 0
    padding_side: str = "right"
    truncation_side: str = "right"
    # True when a text's output depends on the padding its batch mates add (a CNN that reads padding positions): the
    # runtime then forms sentence-transformers' batches exactly (see st_runtime.base.tokenized_batches).
    padding_sensitive: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (`padding_sensitive` only when true, so other folders read as they always did)."""
        data = asdict(self)
        if not self.padding_sensitive:
            del data["padding_sensitive"]
        return data


@dataclass(frozen=True)
class Route:
    """One graph of a routed model (a Router/Asym module): its own inputs, outputs, tokenizer and variants.

    Variants of the routes share names: variant "fp32" of a routed model is the "fp32" graph of every route.
    """

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    tokenizer: TokenizerSpec
    variants: tuple[Variant, ...]
    embedding_dimension: int | None = None
    modules: tuple[dict[str, Any], ...] = ()  # the route's flattened module chain, as in Manifest.modules
    task_config: TaskConfig = field(default_factory=BiEncoderConfig)  # the class its task's routes take

    def variant(self, *, name: str | None = None, file_name: str | None = None) -> Variant:
        """Return the variant with this name or file (the first, fp32, when neither is given).

        Raises:
            ManifestError: no variant matches; the message lists the ones available.
        """
        return _find_variant(self.variants, name=name, file_name=file_name)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return _graph_dict(self, asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any], task: str = "sentence-embedding", where: str = "route") -> Route:
        """Build from the JSON form of a route of a `task` model, found at `where` (raises KeyError/TypeError on
        malformed data, as Manifest.from_json expects; ManifestError naming the key for a malformed task_config)."""
        data = dict(data)
        data["tokenizer"] = TokenizerSpec(**data["tokenizer"])
        data["variants"] = tuple(Variant(**v) for v in data["variants"])
        for key in ("inputs", "outputs", "modules"):
            data[key] = tuple(data.get(key, ()))
        data["task_config"] = config_class(task, route=True).from_dict(data.get("task_config", {}),
                                                                       f"{where}.task_config")
        return cls(**data)


@dataclass(frozen=True)
class Routing:
    """Which graph serves which task, for models whose module chain differs per task (Router/Asym), resolved at
    export time with sentence-transformers' own rules for text input.

    The manifest's top-level inputs/outputs/tokenizer/variants mirror route `primary` (the default route, else the
    first), so tools that know nothing of routes still find one consistent, runnable graph.
    """

    routes: dict[str, Route]
    tasks: dict[str, str]  # task name -> route name, e.g. {"query": "query", "document": "document"}
    default_route: str | None  # route of encode() without a task; None: a task is required
    other_tasks_route: str | None  # route of any task not in `tasks`; None: such a task is refused
    primary: str  # the route mirrored by the manifest's top-level fields

    def resolve(self, task: str | None) -> str:
        """The route name for `task` (None: no task given).

        Raises:
            ValueError: no route serves `task`; the message lists the tasks that have one.
        """
        route = (self.default_route if task is None else self.tasks.get(task, self.other_tasks_route))
        if route is None:
            known = ", ".join(repr(t) for t in sorted(self.tasks)) or "none"
            if task is None:
                raise ValueError(f"This model has no default route; pass task=... (one of {known}), or use "
                                 "encode_query / encode_document.")
            raise ValueError(f"No route for task {task!r}; tasks with a route: {known}.")
        return route

    @classmethod
    def from_dict(cls, data: dict[str, Any], task: str = "sentence-embedding") -> Routing:
        """Build from the JSON form of a `task` model's routing (raises KeyError/TypeError on malformed data)."""
        routes = {name: Route.from_dict(route, task, f"routing.routes[{name!r}]") for name, route in data["routes"].items()}
        routing = cls(routes=routes, tasks=dict(data["tasks"]), default_route=data["default_route"],
                      other_tasks_route=data["other_tasks_route"], primary=data["primary"])
        named = {*routing.tasks.values(), routing.default_route, routing.other_tasks_route, routing.primary} - {None}
        if not named <= set(routes):
            raise KeyError(f"routes {sorted(named - set(routes))} are named but not described")
        return routing


def _graph_dict(graph: Route | Manifest, data: dict[str, Any]) -> dict[str, Any]:
    """`data` (asdict of a route or manifest) with its variants and task_config in their JSON forms."""
    data["variants"] = [v.to_dict() for v in graph.variants]
    data["tokenizer"] = graph.tokenizer.to_dict()
    data["task_config"] = graph.task_config.to_dict()
    return data


def _find_variant(variants: tuple[Variant, ...], *, name: str | None, file_name: str | None) -> Variant:
    for v in variants:
        if (name is None and file_name is None) or v.name == name or file_name in (v.file, Path(v.file).name):
            return v
    available = ", ".join(f"{v.name} ({v.file})" for v in variants)
    raise ManifestError(f"No variant {name or file_name!r} in this folder. Available: {available}.")


@dataclass(frozen=True)
class Manifest:
    """What an exported folder contains and how to run it."""

    task: Task
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    tokenizer: TokenizerSpec
    variants: tuple[Variant, ...]
    embedding_dimension: int | None = None
    similarity_fn_name: str | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    modules: tuple[dict[str, Any], ...] = ()
    task_config: TaskConfig = field(default_factory=BiEncoderConfig)  # kind-specific facts: MODEL_CONFIGS[task]
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    parity: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    routing: Routing | None = None  # set for Router/Asym models: one graph per route
    # The longest input (tokens) each graph takes, keyed by route name ("" for a model without routes): its position
    # embedding's rows. A graph without an entry has no such limit (rotary positions, StaticEmbedding) or was exported
    # before this key (a top-level key: runtimes that do not know it ignore it). Each graph's max_seq_length is
    # checked against it when the manifest is read.
    max_positions: dict[str, int] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        expected = MODEL_CONFIGS.get(self.task)  # an unknown task is refused when the manifest is read
        if expected is not None and not isinstance(self.task_config, expected):
            raise TypeError(f"A {self.task} manifest's task_config is a {expected.__name__}, got "
                            f"{type(self.task_config).__name__}.")

    @classmethod
    def from_graph(cls, task: Task, graph: Route, **others: Any) -> Manifest:
        """The manifest whose top-level graph (inputs, outputs, tokenizer, variants, embedding_dimension, modules,
        task_config) is `graph`; `others` sets the other fields (routing, prompts, files, ...). The inverse of
        route(None)."""
        return cls(task=task, inputs=graph.inputs, outputs=graph.outputs, tokenizer=graph.tokenizer,
                   variants=graph.variants, embedding_dimension=graph.embedding_dimension, modules=graph.modules,
                   task_config=graph.task_config, **others)

    @property
    def max_seq_length(self) -> int | None:
        """Inputs are truncated to this many tokens (special tokens included); None: never truncated."""
        return self.tokenizer.max_seq_length

    def route(self, name: str | None = None) -> Route:
        """The graph description of route `name`; with name None, the top-level graph (the only one of a model
        without routes, the primary route's of a routed model).

        Raises:
            ManifestError: the model has no route `name`.
        """
        if name is None:
            return Route(inputs=self.inputs, outputs=self.outputs, tokenizer=self.tokenizer, variants=self.variants,
                         embedding_dimension=self.embedding_dimension, modules=self.modules, task_config=self.task_config)
        if self.routing is None or name not in self.routing.routes:
            available = sorted(self.routing.routes) if self.routing else "none (the model has no Router)"
            raise ManifestError(f"No route {name!r} in this folder. Routes: {available}.")
        return self.routing.routes[name]

    def variant(self, *, name: str | None = None, file_name: str | None = None) -> Variant:
        """Return the variant with this name or file (the first variant, fp32, when neither is given).

        Raises:
            ManifestError: no variant matches; the message lists the ones available.
        """
        return _find_variant(self.variants, name=name, file_name=file_name)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in `st_runtime.json` (`max_positions` only when it has an entry, so other folders
        write back as they always did)."""
        data = _graph_dict(self, asdict(self))
        if not self.max_positions:
            del data["max_positions"]
        if self.routing is not None:
            data["routing"]["routes"] = {name: route.to_dict() for name, route in self.routing.routes.items()}
        return data

    def to_json(self) -> str:
        """Serialize to the JSON text stored in `st_runtime.json` (keys sorted, stable across runs)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse manifest JSON text.

        Raises:
            ManifestError: the text is not valid JSON or not an object, has an unknown format_version or task, or a
                field is missing or malformed (a wrong type, a non-positive length or dimension, no variants, a
                task_config key that is unknown, missing or mistyped for the task; the message names the field).
        """
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, an integer of 5000 digits, deep nesting
            raise ManifestError(f"{MANIFEST_NAME} is not valid JSON ({exc}). Re-export the model.") from exc
        if not isinstance(data, dict):
            raise ManifestError(f"{MANIFEST_NAME} holds a JSON {type(data).__name__}, not an object: it is not a "
                                "manifest written by st-export. Re-export the model.")
        version = data.get("format_version")
        if isinstance(version, bool) or version not in SUPPORTED_FORMAT_VERSIONS:
            raise ManifestError(
                f"{MANIFEST_NAME} has format_version {version!r}; this st_runtime reads {SUPPORTED_FORMAT_VERSIONS}. "
                "Upgrade st-runtime or re-export the model with this version."
            )
        if version == 1:
            data = _migrate_format_1(data)
        check_manifest_data(data)
        task = data["task"]
        data["task_config"] = config_class(task).from_dict(data.get("task_config", {}), "task_config")
        try:
            data["tokenizer"] = TokenizerSpec(**data["tokenizer"])
            data["variants"] = tuple(Variant(**v) for v in data["variants"])
            for key in ("inputs", "outputs", "modules"):
                data[key] = tuple(data.get(key, ()))
            if data.get("routing") is not None:
                data["routing"] = Routing.from_dict(data["routing"], task)
            known = {f.name for f in fields(cls)}
            manifest = cls(**{k: v for k, v in data.items() if k in known})
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"{MANIFEST_NAME} is missing or has malformed fields ({exc}). Re-export the model.") from exc
        _check_positions(manifest)
        return manifest

    def save(self, folder: str | Path) -> Path:
        """Write the manifest into `folder` in one step (a complete file, or the one that was there) and return its
        path. The file gets the permissions the umask gives any new file, like every other file of the folder (a
        temporary file's 0600 would hide it from the user a container runs as)."""
        path = Path(folder) / MANIFEST_NAME
        with atomic_file(path) as temporary:
            temporary.write_text(self.to_json(), encoding="utf-8")
        return path


def load_manifest(folder: str | Path) -> Manifest:
    """Read the manifest of an exported folder.

    Raises:
        ManifestError: the folder does not exist or has no `st_runtime.json`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ManifestError(f"{str(folder)!r} is not a folder. Pass the folder that st-export wrote.")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(
            f"{str(folder)!r} has no {MANIFEST_NAME}, so it is not a folder written by st-export. "
            f"Export the model first: st-export MODEL -o {folder}"
        )
    try:
        path = folder_file(folder, MANIFEST_NAME, entry="the manifest")
    except ModelFileError as exc:
        raise ManifestError(str(exc)) from exc
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{MANIFEST_NAME} in {str(folder)!r} is not UTF-8 text ({exc}), so it is not a manifest "
                            "written by st-export. Re-export the model.") from exc
    return Manifest.from_json(text)


def folder_file(folder: str | Path, relative: Any, *, entry: str) -> Path:
    """The file that a manifest entry names, checked before anything opens it: the path resolves (symlinks followed)
    inside `folder`, and is a regular file (never a FIFO, a device or a folder).

    Every path the runtime takes from a manifest goes through here, with or without sha256 verification, so an
    exported folder cannot make the runtime read, hash or wait on anything outside it.

    Args:
        folder: the exported folder.
        relative: the path the manifest gives, relative to the folder ("onnx/model.onnx").
        entry: the manifest entry that names it, for the message ("tokenizer.file", "variants['fp32'].file").

    Returns:
        The resolved path.

    Raises:
        ModelFileError: the path is not a relative path, does not exist, resolves outside the folder, or is not a
            regular file; the message names the entry and the path.
    """
    where = f"{entry} in {MANIFEST_NAME} ({relative!r})"
    if not isinstance(relative, str) or not relative or "\0" in relative:
        raise ModelFileError(f"{where} is not a file name. Re-export the model.")
    if PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).anchor:
        raise ModelFileError(f"{where} is an absolute path; a manifest names files relative to its folder, and the "
                             "runtime reads nothing outside it. Re-export the model.")
    try:
        root = Path(folder).resolve(strict=True)
        path = (root / relative).resolve(strict=True)
    except FileNotFoundError as exc:
        raise ModelFileError(f"{relative} is missing from {str(folder)!r} ({entry} in {MANIFEST_NAME}). Re-export "
                             "the model or copy the whole folder.") from exc
    except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before Python 3.13), a permission error
        raise ModelFileError(f"{where} cannot be resolved in {str(folder)!r}: {exc}.") from exc
    if not path.is_relative_to(root):
        raise ModelFileError(f"{where} resolves to {str(path)!r}, outside the folder {str(root)!r}; the runtime reads "
                             "nothing outside an exported folder. Re-export the model, or copy the file into the "
                             "folder instead of linking to it.")
    if not stat.S_ISREG(path.stat().st_mode):
        raise ModelFileError(f"{where} is not a regular file (a folder, FIFO, socket or device); the runtime opens "
                             "only regular files. Re-export the model.")
    return path


def sha256_file(path: str | Path, chunk_size: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def hash_folder(folder: str | Path) -> dict[str, str]:
    """sha256 of every file below `folder` except the manifest, keyed by POSIX relative path."""
    folder = Path(folder)
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }


def verify_files(folder: str | Path, manifest: Manifest, relative_paths: list[str]) -> None:
    """Check that each listed file exists and matches the sha256 recorded in the manifest.

    Every path is checked with `folder_file` (inside the folder, a regular file) before any file is hashed.

    Raises:
        ModelFileError: a file is missing, outside the folder, not a regular file, unlisted, or its content changed
            (corrupt or truncated).
    """
    paths = [folder_file(folder, rel, entry=f"files[{rel!r}]") for rel in relative_paths]
    for rel, path in zip(relative_paths, paths, strict=True):
        expected = manifest.files.get(rel)
        if expected is None:
            raise ModelFileError(f"{rel} is not listed in {MANIFEST_NAME}, so it cannot be verified. Re-export the model.")
        if sha256_file(path) != expected:
            raise ModelFileError(
                f"{rel} in {str(folder)!r} does not match the sha256 in {MANIFEST_NAME}: the file is corrupt, "
                "truncated or was changed after export. Re-export the model or copy the folder again."
            )


def _check_positions(manifest: Manifest) -> None:
    """Refuse a graph whose max_seq_length exceeds the positions `max_positions` records for it (or that never
    truncates although it has such a limit): the graph would fail on the first long text with an engine error.
    Entries that name no graph of the manifest are ignored (a manifest whose routing was dropped by hand reads as
    one from before routes, which has no limit).

    Raises:
        ManifestError: naming the tokenizer's max_seq_length field and the limit.
    """
    routing = manifest.routing
    graphs = {"": manifest.route(None)} if routing is None else dict(routing.routes)
    if routing is not None:  # the top-level fields mirror the primary route
        graphs = {**graphs, None: manifest.route(None)}
    for name, graph in graphs.items():
        limit = manifest.max_positions.get(routing.primary if name is None else name)
        length = graph.tokenizer.max_seq_length
        if limit is not None and (length is None or length > limit):
            prefix = f"routing.routes[{name!r}]." if name else ""
            key = f"max_positions[{(routing.primary if name is None else name)!r}]"
            raise fail(f"{prefix}tokenizer.max_seq_length", f"is {length}: the graph takes at most {limit} tokens "
                                                            f"({key}), so longer texts would fail in the graph")


def _migrate_format_1(data: dict[str, Any]) -> dict[str, Any]:
    """A format 1 manifest as format 2: the same fields, none of the keys format 2 added."""
    variants = data.get("variants")
    has_report = isinstance(variants, list) and any(isinstance(v, dict) and "report" in v for v in variants)
    config = data.get("task_config")
    if has_report or (isinstance(config, dict) and "truncate_dim" in config):
        raise ManifestError(f"{MANIFEST_NAME} has format_version 1 but uses keys of format 2 ({', '.join(FORMAT_2_KEYS)})"
                            ": it was edited by hand or written by a broken exporter. Re-export the model.")
    return {**data, "format_version": FORMAT_VERSION}

