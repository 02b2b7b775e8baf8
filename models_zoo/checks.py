"""Checks a model folder passes before use: pinned sha256s, Hugging Face cache blobs against their names,
completeness (the files its format needs, no dangling links, no truncated safetensors) and architecture."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from exporters.errors import ModelLoadError
from exporters.preflight import safetensors_extent
from models_zoo.errors import ModelMismatchError, SourceIntegrityError
from models_zoo.recipe import Recipe
from st_runtime.manifest import sha256_file

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# Folders and files of a model repository that no exported kind reads (not hashed, not required).
_UNUSED_DIRS = {"onnx", "openvino", ".git"}
_UNUSED_FILES = {"flax_model.msgpack", "tf_model.h5", "rust_model.ot", "model.onnx", ".gitattributes"}
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def check_digests(folder: Path, digests: dict[str, str], what: str, memo: dict[Path, str] | None = None) -> list[str]:
    """Check that each listed file exists below `folder` with its sha256; return the files checked.

    Raises:
        SourceIntegrityError: a file is missing (partial source) or differs (corrupt or another version).
    """
    memo = {} if memo is None else memo
    for rel, expected in sorted(digests.items()):
        path = folder / rel
        if not path.is_file():
            raise SourceIntegrityError(f"{what}: {rel} is missing from {folder} (a partial copy?); refusing to use it.")
        actual = memo.get(path) or memo.setdefault(path, sha256_file(path))
        if actual != expected:
            raise SourceIntegrityError(f"{what}: {path} has sha256 {actual}, the recipe expects {expected} (corrupt, "
                                       "truncated or another version); refusing to use it. Replace the file.")
    return sorted(digests)


def check_safetensors(path: Path) -> None:
    """Refuse a truncated safetensors file: its size must be what its header declares (the header read only when its
    claimed length is sane: `exporters.preflight.safetensors_extent`).

    Raises:
        SourceIntegrityError
    """
    try:
        needed, size, problem = safetensors_extent(path)
    except ModelLoadError as exc:  # not a regular file
        raise SourceIntegrityError(f"{exc} Refusing to use it.") from exc
    if problem is not None:
        raise SourceIntegrityError(f"{path} is not a readable safetensors file ({problem}); refusing to use it.")
    if needed != size:
        raise SourceIntegrityError(f"{path} is {size} bytes, its header says {needed} (truncated or "
                                   "corrupt); refusing to use it. Replace the file.")


def used_files(folder: Path) -> list[Path]:
    """Files below `folder` that loading the model may read (not onnx/, openvino/, other frameworks' weights)."""
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if set(rel.parts[:-1]) & _UNUSED_DIRS or path.name in _UNUSED_FILES or path.suffix == ".md":
            continue
        if path.is_symlink() or path.is_file():
            files.append(path)
    return files


def check_complete(folder: Path, fmt: str) -> None:
    """Refuse a folder that misses what its format needs, or that holds a truncated safetensors file.

    Raises:
        SourceIntegrityError
    """
    if not folder.is_dir():
        raise SourceIntegrityError(f"{folder} is not a folder.")
    required = {"sentence-transformers": ["modules.json"], "transformers": ["config.json"],
                "model2vec": ["config.json", "model.safetensors", "tokenizer.json"]}[fmt]
    missing = [name for name in required if not (folder / name).is_file()]
    weight_dirs = [folder]
    if fmt == "sentence-transformers" and not missing:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        for module in modules:
            sub = folder / module.get("path", "")
            if not sub.is_dir() and not module.get("type", "").endswith("Normalize"):  # Normalize saves no files
                missing.append(f"{module.get('path')}/ (module {module.get('type')})")
            elif (sub / "config.json").is_file() and module.get("type", "").endswith("Transformer"):
                weight_dirs.append(sub)
    if fmt != "model2vec":
        for d in dict.fromkeys(weight_dirs):
            if (d / "config.json").is_file() and not any((d / w).is_file() for w in _WEIGHTS):
                missing.append(f"{d.relative_to(folder) / 'model.safetensors'} (or pytorch_model.bin)")
            for index in (d / "model.safetensors.index.json", d / "pytorch_model.bin.index.json"):
                if index.is_file():
                    shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
                    missing += [str((d / s).relative_to(folder)) for s in sorted(shards) if not (d / s).is_file()]
    dangling = [str(p.relative_to(folder)) for p in used_files(folder) if not p.exists()]
    missing += [f"{d} (a link to a missing blob)" for d in dangling]
    if missing:
        raise SourceIntegrityError(f"{folder} is incomplete: missing {', '.join(missing)}; refusing to use it.")
    for path in used_files(folder):
        if path.suffix == ".safetensors":
            check_safetensors(path)


def check_hf_blobs(snapshot: Path, memo: dict[Path, str] | None = None) -> list[str]:
    """Check each file of a Hugging Face cache snapshot against the name of the blob it links to (sha256 for
    LFS files, the git blob sha1 for the others); return the files checked.

    Raises:
        SourceIntegrityError: a blob's content differs from its name (corrupt or partly written).
    """
    memo = {} if memo is None else memo
    checked = []
    for path in used_files(snapshot):
        if not path.is_symlink():
            continue
        blob = path.resolve()
        if _HEX64.match(blob.name):
            actual = memo.get(blob) or memo.setdefault(blob, sha256_file(blob))
        elif _HEX40.match(blob.name):
            digest = hashlib.sha1(f"blob {blob.stat().st_size}\0".encode(), usedforsecurity=False)
            with open(blob, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(chunk)
            actual = digest.hexdigest()
        else:
            continue
        if actual != blob.name:
            raise SourceIntegrityError(f"HF cache file {path} (blob {blob.name}) has hash {actual}: the download is "
                                       "corrupt or partial; delete the blob and download it again.")
        checked.append(path.relative_to(snapshot).as_posix())
    return checked


def config_of(folder: Path) -> dict:
    """The transformers config.json of a model folder (its root, or the Transformer module's folder)."""
    candidates = [folder / "config.json"]
    if (folder / "modules.json").is_file():
        for module in json.loads((folder / "modules.json").read_text(encoding="utf-8")):
            candidates.append(folder / module.get("path", "") / "config.json")
    for path in candidates:
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            if "model_type" in data or "architectures" in data:
                return data
    return {}


def check_architecture(folder: Path, recipe: Recipe) -> str:
    """Refuse a folder whose transformers model_type is not the recipe's architecture; return the one found.

    Raises:
        ModelMismatchError
    """
    found = "static" if recipe.format == "model2vec" else str(config_of(folder).get("model_type", "unknown"))
    if found.lower() != recipe.architecture.lower():
        raise ModelMismatchError(f"{folder} holds a {found!r} model, but recipe {recipe.name} expects "
                                 f"{recipe.architecture!r}; is it the right model?")
    return found
