"""Load the source model, find its kind, and describe what will be exported. The only place that may
reach the network (a Hugging Face model id, when online); local folders and loaded models never do."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

from torch import nn

from exporters import router
from exporters.errors import ModelLoadError, UnsupportedModelError
from exporters.kinds import KINDS, UNAVAILABLE, KindExporter, SourceModel
from exporters.preflight import PYLATE_ALIASES, check_source_folder, read_json
from exporters.tokenizer_match import check_tokenizer_matches

GRAPH_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Saved model_type values of other libraries that sentence-transformers >= 6 loads as one of its kinds: PyLate v3
# writes "ColBERT" (MultiVectorEncoder._get_model_type maps it, and loads the folder's PyLate settings).
LEGACY_MODEL_TYPES = {"ColBERT": "MultiVectorEncoder"}
# The saved model_type a folder whose modules.json names a PyLate class may have: PyLate before v3 wrote none or
# "SentenceTransformer" (MultiVectorEncoder converts those, keeping the PyLate settings); only a MultiVectorEncoder
# maps PyLate classes to its own, any other class would import pylate.
PYLATE_MODEL_TYPES = (None, "SentenceTransformer", "ColBERT", "MultiVectorEncoder")
# The transformers task a kind's Transformer module must have (sentence-transformers' `transformer_task`);
# kinds not listed take "feature-extraction".
# A CrossEncoder's Transformer may also be a causal LM (an LLM reranker, scored by LogitScore).
TRANSFORMER_TASKS: dict[str, tuple[str, ...]] = {
    "CrossEncoder": ("sequence-classification", "text-generation"), "SparseEncoder": ("fill-mask",)}
# Why sentence-transformers modules that no kind exports are refused (docs/modules.md lists them).
UNSUPPORTED_REASONS = {
    "LSTM": "it reads features['sentence_lengths'], which only WordEmbeddings produces (a Transformer does not, so "
            "sentence-transformers itself cannot run Transformer -> LSTM), and WordEmbeddings is not exportable",
    "WordEmbeddings": "it tokenizes with sentence-transformers' Python word tokenizer (stop words, punctuation "
                      "stripping), which no tokenizer.json reproduces",
    "WordWeights": "it weights WordEmbeddings' word ids, and WordEmbeddings is not exportable",
    "BoW": "it is a Python bag-of-words tokenizer with no tokenizer.json equivalent",
    "CLIPModel": "it is an image/text model; only text models are exported",
}


def load_source(model: str | Path | nn.Module) -> tuple[SourceModel, KindExporter]:
    """Load `model` (a local folder, a Hub id, or a loaded sentence-transformers model) on CPU.

    Raises:
        ModelLoadError: the folder does not exist / is not a model, or the Hub cannot be reached.
        UnsupportedModelError: the model kind, or one of its modules, has no in-graph export.
    """
    if isinstance(model, (str, Path)):
        folder, source, load_options = _locate(str(model))
        check_source_folder(folder)  # before anything from the folder is imported or its weights are read
        kind = _kind_of(model_type_of_folder(folder))
        loaded, source = _load_path(str(model), source, load_options, kind)
    else:
        kind = _kind_of(type(model).__name__)
        loaded, source = model, {"kind": "in-memory", "name_or_path": None}
    loaded = loaded.to("cpu").eval()
    return SourceModel(model=loaded, task=kind.task, source=source, modules=describe_modules(loaded, kind)), kind


def _kind_of(model_type: str) -> KindExporter:
    if model_type in UNAVAILABLE:
        raise UnsupportedModelError(UNAVAILABLE[model_type])
    if model_type not in KINDS:
        raise UnsupportedModelError(f"{model_type} models cannot be exported; supported: {', '.join(sorted(KINDS))}.")
    return KINDS[model_type]


def model_type_of_folder(folder: str | Path) -> str:
    """The sentence-transformers class a folder was saved from (config_sentence_transformers.json
    "model_type", a PyLate "ColBERT" read as MultiVectorEncoder), else a guess from the transformers architecture, else
    SentenceTransformer; a folder whose modules.json names a PyLate class is a MultiVectorEncoder. The one kind
    detection: st-export loads the folder with that class, and the zoo compares it with a recipe's kind.

    Raises:
        ModelLoadError: one of those JSON files is not a JSON object.
        UnsupportedModelError: modules.json names a PyLate class but the saved model_type is another kind's.
    """
    path = Path(folder)
    st_config = path / "config_sentence_transformers.json"
    model_type = (_json_object(st_config).get("model_type") or None) if st_config.is_file() else None
    pylate = pylate_module_types(path)
    if pylate:
        return _pylate_model_type(st_config, model_type, pylate)
    if model_type:
        return LEGACY_MODEL_TYPES.get(model_type, model_type)
    hf_config = path / "config.json"
    if hf_config.is_file() and not (path / "modules.json").is_file():
        architectures = _json_object(hf_config).get("architectures") or []
        if any(a.endswith("ForSequenceClassification") for a in architectures):
            return "CrossEncoder"
        if any(a.endswith("ForMaskedLM") for a in architectures):
            return "SparseEncoder"
        if architectures and architectures[0].endswith("ForCausalLM"):  # as CrossEncoder loads it: an LLM reranker
            return "CrossEncoder"
    return "SentenceTransformer"


def pylate_module_types(folder: Path) -> list[str]:
    """The PyLate classes (of `PYLATE_ALIASES`) that the folder's modules.json names, in order."""
    modules_json = folder / "modules.json"
    modules = read_json(modules_json) if modules_json.is_file() else []
    if not isinstance(modules, list):
        return []
    return [m["type"] for m in modules if isinstance(m, dict) and isinstance(m.get("type"), str)
            and m["type"] in PYLATE_ALIASES]


def _pylate_model_type(st_config: Path, model_type: Any, pylate: list[str]) -> str:
    """MultiVectorEncoder, the only class that loads a PyLate folder without importing pylate.

    Raises:
        UnsupportedModelError: the saved model_type is another kind's.
    """
    if model_type not in PYLATE_MODEL_TYPES:
        raise UnsupportedModelError(
            f"modules.json names PyLate's {', '.join(sorted(set(pylate)))}, which only a MultiVectorEncoder loads as "
            f"sentence-transformers' own class, but {st_config} says model_type {model_type!r}; st-export exports "
            "such a folder only as a MultiVectorEncoder (nothing was imported)."
        )
    return "MultiVectorEncoder"


def _json_object(path: Path) -> dict[str, Any]:
    value = read_json(path)
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path} is not a JSON object; fix the file, or download or save the model again.")
    return value


def _locate(name: str) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The local folder that holds `name`'s configuration (the model folder, or the Hub snapshot of its JSON
    files), the source record for the manifest, and the options to load it with."""
    path = Path(name)
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{name!r} is a file; pass the sentence-transformers model folder that contains it.")
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise ModelLoadError(f"{name!r} is not a model folder: it has neither modules.json nor config.json.")
        return path, {"kind": "local", "name_or_path": str(path.resolve())}, {"local_files_only": True}
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"Model folder {name!r} does not exist. Pass an existing sentence-transformers folder.")
    offline = hub_offline_reason()
    snapshot = _hub_snapshot(name, offline)
    # Load the very commit whose configuration was checked, from the cache when offline.
    return snapshot, {"kind": "hub", "name_or_path": name, "revision": snapshot.name}, {
        "revision": snapshot.name, "local_files_only": offline is not None}


def _hub_snapshot(name: str, offline: str | None) -> Path:
    """Download (online) or find in the Hugging Face cache (offline) the JSON files of Hub model `name`."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=["*.json"], local_files_only=offline is not None))
    except Exception as exc:  # the Hub client's many errors (not found, gated, cache miss, bad id) all end here
        if offline is not None:
            raise ModelLoadError(
                f"{name!r} is not a local folder, and it is not in the Hugging Face cache while {offline}. Pass the "
                "path of a downloaded sentence-transformers folder, or a models_zoo recipe name (st-zoo list)."
            ) from exc
        raise ModelLoadError(
            f"{name!r} is not a local folder and could not be fetched from the Hugging Face Hub "
            f"({type(exc).__name__}: {exc}). Pass the path of a downloaded sentence-transformers folder instead."
        ) from exc


def hub_offline_reason() -> str | None:
    """Why the Hub cannot be used now (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set, or no connection), or None."""
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(variable, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{variable} is set"
    return hub_unreachable()


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Try a TCP connection to the Hub (HF_ENDPOINT, or the HTTPS proxy in front of it) for `timeout` seconds,
    name resolution included; return why it failed, or None when it answered. Without this an offline machine
    spends over a minute in the Hub client's retries before it gives up."""
    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    proxy = getproxies().get(url.scheme)
    if proxy and not proxy_bypass(host):
        proxy_url = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_url.hostname or host, proxy_url.port or 80
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc.strerror or type(exc).__name__)

    probe = threading.Thread(target=connect, daemon=True)  # a thread: getaddrinfo itself has no timeout
    probe.start()
    probe.join(timeout + 0.5)
    if outcome and outcome[0] is None:
        return None
    return f"the Hugging Face Hub cannot be reached ({host}:{port}: {outcome[0] if outcome else 'no answer'})"


@contextmanager
def _weights_only_torch_load() -> Iterator[None]:
    """While the source model loads, torch.load unpickles tensors only (weights_only=True), whatever the caller
    asks: a pickled pytorch_model.bin can then build no arbitrary object."""
    import torch

    original = torch.load

    def load(*args: Any, weights_only: bool | None = True, **kwargs: Any) -> Any:
        if weights_only is False:
            raise ModelLoadError("Loading the model asked torch.load to unpickle arbitrary objects (weights_only="
                                 "False); st-export refuses. Convert the weights to safetensors.")
        return original(*args, weights_only=True, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def _load_path(name: str, source: dict[str, Any], options: dict[str, Any],
               kind: KindExporter) -> tuple[nn.Module, dict[str, Any]]:
    try:
        with _weights_only_torch_load():
            loaded = kind.load(name, device="cpu", **options)
    except ModelLoadError:
        raise
    except Exception as exc:  # sentence-transformers / transformers / safetensors raise many kinds; name the model
        raise ModelLoadError(f"sentence-transformers could not load {name!r} as a {kind.model_type}: "
                             f"{type(exc).__name__}: {exc}") from exc
    return loaded, {**source, "model_type": kind.model_type}


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def describe_modules(model: nn.Sequential, kind: KindExporter) -> list[dict[str, Any]]:
    """List the model's modules (index, class, config), refusing any that cannot run in the graph.

    Raises:
        UnsupportedModelError: naming the module, its class and what is supported.
    """
    described = []
    for index, module in enumerate(model):
        check_module(str(index), module, kind)
        if type(module).__name__ == router.ROUTER:  # its routes' modules are checked and listed inside its entry
            described.append(router.describe_router(index, module, model, lambda where, m: {
                "type": type(m).__name__, "config": _module_config(check_module(where, m, kind))}))
            continue
        described.append({"index": index, "type": type(module).__name__, "config": _module_config(module)})
    if not described:
        raise UnsupportedModelError("The model has no modules.")
    return described


def _module_config(module: nn.Module) -> dict[str, Any]:
    return _json_safe(module.get_config_dict() if hasattr(module, "get_config_dict") else {})


def check_module(where: str, module: nn.Module, kind: KindExporter) -> nn.Module:
    """Refuse a module that cannot run in the graph (`where` names it in the message, e.g. "2"); return it.

    Raises:
        UnsupportedModelError: naming the module, its class, why (for modules known not to export) and what is supported.
    """
    cls = type(module)
    supported = kind.supported_modules
    if cls.__name__ not in supported or not cls.__module__.startswith("sentence_transformers."):
        reason = UNSUPPORTED_REASONS.get(cls.__name__, "") if cls.__module__.startswith("sentence_transformers.") else ""
        raise UnsupportedModelError(
            f"Module {where} of the model is {cls.__name__} ({cls.__module__}.{cls.__qualname__}), which has no "
            f"in-graph export for a {kind.model_type}{f': {reason}' if reason else ''}. "
            f"Supported modules: {', '.join(sorted(supported))}."
        )
    if cls.__name__ in ("Transformer", "MLMTransformer"):  # MLMTransformer: legacy SPLADE class, a Transformer
        check_text_transformer(where, module, TRANSFORMER_TASKS.get(kind.model_type, ("feature-extraction",)))
    return module


def check_text_transformer(index: int | str, module: nn.Module,
                           tasks: str | tuple[str, ...] = "feature-extraction") -> None:
    """Refuse a Transformer module that is not a text model of one of `tasks` with a fast tokenizer that matches the
    model (`exporters.tokenizer_match`). A causal LM may also take chat messages (its pairs go through its chat
    template, which exporters.llm_reranker resolves)."""
    tasks = (tasks,) if isinstance(tasks, str) else tasks
    modalities = list(getattr(module, "modality_config", {"text": None}))
    module_task = getattr(module, "transformer_task", "feature-extraction")
    text = ["text", "message"] if module_task == "text-generation" else ["text"]
    if modalities not in (["text"], text) or module_task not in tasks:
        raise UnsupportedModelError(
            f"Module {index} (Transformer, {type(module.auto_model).__name__}) handles modalities {modalities} "
            f"with task {module_task!r}; only text {' or '.join(tasks)} transformers are exported here."
        )
    if getattr(module, "tokenizer", None) is None or not module.tokenizer.is_fast:
        raise UnsupportedModelError(f"Module {index} (Transformer) has no fast tokenizer, so no tokenizer.json can be "
                                    "written for the runtime. Convert the tokenizer to a fast one first.")
    check_tokenizer_matches(f"Module {index} (Transformer)", module)


def graph_input_names(model: nn.Sequential) -> list[str]:
    """Inputs the graph takes: those the tokenizer produces and the first module's forward accepts.

    sentence-transformers 6 sets `model_forward_params` to None when the model's forward takes **kwargs (every
    transformers 5 model): it then passes the model every feature the tokenizer produced, and so does the graph.
    """
    transformer = model[0]
    tokenizer_inputs = set(transformer.tokenizer.model_input_names)
    forward_params = transformer.model_forward_params
    return [n for n in GRAPH_INPUTS if n in tokenizer_inputs and (forward_params is None or n in forward_params)]
