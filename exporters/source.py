"""Load the source model and describe what will be exported. The only place that may reach the network
(a Hugging Face model id, when online); local folders and loaded models never do."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentence_transformers import SentenceTransformer
from torch import nn

from exporters.errors import ModelLoadError, UnsupportedModelError

logger = logging.getLogger(__name__)

# Module classes whose forward traces into ONNX unchanged, per model kind.
SUPPORTED_MODULES: dict[str, frozenset[str]] = {
    "sentence-embedding": frozenset({"Transformer", "Pooling", "Dense", "Normalize", "Dropout", "LayerNorm"}),
}
GRAPH_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class SourceModel:
    """A loaded model and the facts about it that the export needs."""

    model: SentenceTransformer
    task: str
    source: dict[str, Any]
    modules: list[dict[str, Any]] = field(default_factory=list)


def load_source(model: str | Path | SentenceTransformer) -> SourceModel:
    """Load `model` (a local sentence-transformers folder, a Hub id, or a loaded SentenceTransformer) on CPU.

    Raises:
        ModelLoadError: the folder does not exist / is not a model, or the Hub cannot be reached.
        UnsupportedModelError: a module of the model has no in-graph export.
    """
    if isinstance(model, SentenceTransformer):
        st_model, source = model, {"kind": "in-memory", "name_or_path": getattr(model, "model_card_data", None)
                                   and model.model_card_data.base_model}
    else:
        st_model, source = _load_path(str(model))
    st_model = st_model.to("cpu").eval()
    task = "sentence-embedding"
    return SourceModel(model=st_model, task=task, source=source, modules=describe_modules(st_model, task))


def _load_path(name: str) -> tuple[SentenceTransformer, dict[str, Any]]:
    path = Path(name)
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{name!r} is a file; pass the sentence-transformers model folder that contains it.")
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise ModelLoadError(f"{name!r} is not a model folder: it has neither modules.json nor config.json.")
        try:
            return SentenceTransformer(str(path), device="cpu", local_files_only=True), {
                "kind": "local", "name_or_path": str(path.resolve())}
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"sentence-transformers could not load {name!r}: {exc}") from exc
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"Model folder {name!r} does not exist. Pass an existing sentence-transformers folder.")
    try:
        return SentenceTransformer(name, device="cpu"), {"kind": "hub", "name_or_path": name}
    except OSError as exc:
        raise ModelLoadError(
            f"{name!r} is not a local folder and could not be loaded from the Hugging Face Hub ({exc}). "
            "When offline, pass the path of a downloaded sentence-transformers folder instead."
        ) from exc


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def describe_modules(model: nn.Sequential, task: str) -> list[dict[str, Any]]:
    """List the model's modules (index, class, config), refusing any that cannot run in the graph.

    Raises:
        UnsupportedModelError: naming the module, its class and what is supported.
    """
    supported = SUPPORTED_MODULES[task]
    described = []
    for index, module in enumerate(model):
        cls = type(module)
        if cls.__name__ not in supported or not cls.__module__.startswith("sentence_transformers."):
            raise UnsupportedModelError(
                f"Module {index} of the model is {cls.__name__} ({cls.__module__}.{cls.__qualname__}), which has no "
                f"in-graph export for a {task} model. Supported modules: {', '.join(sorted(supported))}."
            )
        if cls.__name__ == "Transformer":
            _check_transformer(index, module)
        config = module.get_config_dict() if hasattr(module, "get_config_dict") else {}
        described.append({"index": index, "type": cls.__name__, "config": _json_safe(config)})
    if not described or described[0]["type"] != "Transformer":
        raise UnsupportedModelError("The first module must be a text Transformer; this model starts with "
                                    f"{described[0]['type'] if described else 'nothing'}.")
    return described


def _check_transformer(index: int, module: nn.Module) -> None:
    modalities = list(getattr(module, "modality_config", {"text": None}))
    task = getattr(module, "transformer_task", "feature-extraction")
    if modalities != ["text"] or task != "feature-extraction":
        raise UnsupportedModelError(
            f"Module {index} (Transformer, {type(module.auto_model).__name__}) handles modalities {modalities} with task "
            f"{task!r}; only text feature-extraction transformers are exported."
        )
    if getattr(module, "tokenizer", None) is None or not module.tokenizer.is_fast:
        raise UnsupportedModelError(f"Module {index} (Transformer) has no fast tokenizer, so no tokenizer.json can be "
                                    "written for the runtime. Convert the tokenizer to a fast one first.")


def graph_input_names(model: SentenceTransformer) -> list[str]:
    """Inputs the graph takes: those the tokenizer produces and the transformer's forward accepts."""
    transformer = model[0]
    tokenizer_inputs = set(transformer.tokenizer.model_input_names)
    forward_params = set(transformer.model_forward_params)
    return [n for n in GRAPH_INPUTS if n in tokenizer_inputs and n in forward_params]
