"""The model kinds st_runtime runs: manifest task -> runtime class, the one registry of that fact.

bench, quantizers and the zoo look a folder's class up here (or call `load`), and so do their child processes that
run sentence-transformers itself: every runtime class has the name of the sentence-transformers class it mirrors.
Adding a kind is one runtime module (a subclass of `st_runtime.base.ExportedModel` whose `task` is the key) plus a
line here; see docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from st_runtime.errors import ManifestError
from st_runtime.manifest import Manifest, load_manifest

if TYPE_CHECKING:
    from st_runtime.base import ExportedModel
    from st_runtime.task_configs import Task

# Manifest task (the tasks st_runtime.task_configs.Task accepts, each with its typed task_config) -> name of the
# runtime class (in `st_runtime`) and of the sentence-transformers class it mirrors.
TASK_CLASSES: dict[Task, str] = {
    "sentence-embedding": "SentenceTransformer",
    "text-ranking": "CrossEncoder",
    "sparse-embedding": "SparseEncoder",
    "multi-vector-embedding": "MultiVectorEncoder",
}
# The other direction: sentence-transformers class name (what config_sentence_transformers.json calls
# "model_type") -> manifest task.
CLASS_TASKS: dict[str, str] = {name: task for task, name in TASK_CLASSES.items()}


def class_name(task: str) -> str:
    """The runtime (and sentence-transformers) class name of manifest task `task`.

    Raises:
        ManifestError: a task st_runtime has no class for.
    """
    try:
        return TASK_CLASSES[task]
    except KeyError:
        raise ManifestError(f"st_runtime has no model class for task {task!r}; known tasks: "
                            f"{', '.join(sorted(TASK_CLASSES))}. Upgrade st-runtime, or re-export the model.") from None


def model_class(task: str) -> type[ExportedModel]:
    """The runtime class that runs folders of manifest task `task` (SentenceTransformer, CrossEncoder, ...).

    Raises:
        ManifestError: a task st_runtime has no class for.
    """
    import st_runtime

    return getattr(st_runtime, class_name(task))


def load(model_name_or_path: str | Path, *, manifest: Manifest | None = None, **kwargs: Any) -> ExportedModel:
    """Open an exported folder with the class its manifest names: SentenceTransformer, CrossEncoder, SparseEncoder or
    MultiVectorEncoder.

    Args:
        model_name_or_path: folder written by `st-export`.
        manifest: use this manifest instead of the folder's st_runtime.json (as the classes accept it).
        **kwargs: the class's constructor arguments (variant, providers, truncate_dim, ...).

    Raises:
        ManifestError: the folder's st_runtime.json is missing or invalid, or names a task st_runtime has no class for;
        and whatever the class raises (ModelFileError, ProviderError, ...).
    """
    if manifest is None:
        manifest = load_manifest(Path(model_name_or_path))
    return model_class(manifest.task)(model_name_or_path, manifest=manifest, **kwargs)
