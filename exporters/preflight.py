"""What st-export checks in a source model folder before anything in it is loaded.

sentence-transformers imports the class that `modules.json` names (5.x imports a repository-local `mymod.MyClass`
from a local folder without `trust_remote_code`), and transformers runs the code that an `auto_map` points to. So
the folder's JSON is read here first, as data, and refused when it would make either library run code that is not
theirs: nothing from the folder is imported, and no weights are read, until these checks pass.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from exporters.config_limits import CONFIG_FILES, check_configs
from exporters.errors import ModelLoadError, UnsupportedModelError

# The only module classes a folder may name: sentence-transformers' own (old `sentence_transformers.models.X` and the
# newer `sentence_transformers.base.modules...` / `sentence_transformer.modules` / `sparse_encoder.modules` paths).
TRUSTED_PREFIX = "sentence_transformers."
# PyLate module classes that sentence-transformers >= 6 itself loads as its own class, without importing pylate:
# `_CLASS_REF_ALIASES` in sentence_transformers/multi_vector_encoder/model.py (private, absent on 5.x, hence mirrored),
# applied by MultiVectorEncoder._load_module_class_from_ref to modules.json entries only. Any other `pylate.` class
# is refused like any class from outside sentence-transformers; test_multi_vector.py checks this table against ST's.
PYLATE_ALIASES = {"pylate.models.Dense.Dense": "sentence_transformers.base.modules.dense.Dense"}
# Activation functions (Dense "activation_function", CrossEncoder "activation_fn") may name these packages only.
TRUSTED_CALLABLE_PREFIXES = ("torch.", "sentence_transformers.")
# Config keys that make transformers (or a pipeline) import code from the repository.
CODE_HOOKS = ("auto_map", "custom_pipelines", "custom_pipeline")
ROUTER_CONFIGS = ("router_config.json", "config.json")  # Router's file, then the legacy Asym one
# The largest JSON file, and safetensors header, read (safetensors' own header limit): the biggest real tokenizer.json
# files are a few tens of MB, and a larger claim would be read and decoded whole.
MAX_JSON_BYTES = 100_000_000
MAX_SAFETENSORS_HEADER = 100_000_000


def check_source_folder(folder: str | Path) -> None:
    """Refuse a model folder that would run code of its own, or whose files are unreadable, before it is loaded.

    Checked: every module `type` in `modules.json` (and in each Router's route config) is a sentence-transformers
    class (in `modules.json` also a PyLate class that sentence-transformers maps to its own, `PYLATE_ALIASES`: such a
    folder loads only as a MultiVectorEncoder, see `exporters.source.model_type_of_folder`); every module `path`
    stays inside the folder; no JSON file holds an `auto_map`, `custom_pipeline(s)` or
    `trust_remote_code: true`, or an activation function outside torch / sentence-transformers; every JSON file
    parses; every `*.safetensors` file is complete (header and data length); every JSON and safetensors file is a
    regular file (never a FIFO, device, folder or dangling link) of bounded size; the sizes a config asks for
    (layers, widths, `max_seq_length`) are sane and fit the weights shipped (`exporters.config_limits`).

    Raises:
        UnsupportedModelError: a module class or config hook that would import code from outside
            sentence-transformers / transformers (named, with the file that asks for it).
        ModelLoadError: a module path that leaves the folder or lies in a hidden folder, an invalid JSON file, a
            truncated safetensors file, a file that is not a regular file or is too large, an absurd config.
    """
    folder = Path(folder)
    modules_json = folder / "modules.json"
    if os.path.lexists(modules_json):
        modules = read_json(modules_json)
        if not isinstance(modules, list):
            raise ModelLoadError(f"{modules_json} is not a list of modules; save the model again.")
        for entry in modules:
            if not isinstance(entry, dict) or "type" not in entry:
                raise ModelLoadError(f"{modules_json} has an entry without a module type: {entry!r}.")
            path = _inside(folder, entry.get("path", ""), modules_json)
            _check_module(folder, path, sentence_transformers_class(entry["type"]), modules_json)
    configs = {}  # the files config_limits reads, kept parsed
    for path in sorted(folder.rglob("*.json")):
        if not _hidden(path, folder):
            value = read_json(path)
            _check_hooks(value, path)
            if path.name in CONFIG_FILES:
                configs[path] = value
    for path in sorted(folder.rglob("*.safetensors")):
        if not _hidden(path, folder):
            check_safetensors(path)
    check_configs(folder, configs)


def sentence_transformers_class(class_ref: Any) -> Any:
    """The class sentence-transformers >= 6 loads for a modules.json `type`: a mapped PyLate name's
    sentence-transformers class, anything else unchanged (still to be checked)."""
    return PYLATE_ALIASES.get(class_ref, class_ref) if isinstance(class_ref, str) else class_ref


def regular_file(path: Path, limit: int | None = None) -> int:
    """The size of `path`, checked without opening it: a regular file (symlinks followed), at most `limit` bytes.

    Raises:
        ModelLoadError: missing, a dangling link, a folder, FIFO, socket or device (which would hang a reader or feed
            it without end), or larger than `limit`.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError as exc:
        what = "a symbolic link to a missing file" if os.path.islink(path) else "missing"
        raise ModelLoadError(f"{path} is {what}; download or save the model again.") from exc
    except OSError as exc:
        raise ModelLoadError(f"{path} cannot be read ({exc.strerror or exc}).") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ModelLoadError(f"{path} is not a regular file (a folder, FIFO, socket or device); st-export reads only "
                             "regular files. Replace it with the model's file.")
    if limit is not None and info.st_size > limit:
        raise ModelLoadError(f"{path} has {info.st_size} bytes, more than the {limit} st-export reads for such a file; "
                             "it is not a file of a sentence-transformers model.")
    return info.st_size


def read_json(path: Path) -> Any:
    """Parse a JSON file of the source model (a regular file of at most MAX_JSON_BYTES), naming the file when it is
    not valid UTF-8 JSON.

    Raises:
        ModelLoadError
    """
    regular_file(path, MAX_JSON_BYTES)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_JSON_BYTES + 1)  # the file may have grown since it was checked
        if len(data) > MAX_JSON_BYTES:
            raise ModelLoadError(f"{path} has more than {MAX_JSON_BYTES} bytes; it is not a file of a "
                                 "sentence-transformers model.")
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"{path} is not a text file (byte {exc.start} is not UTF-8): the file is corrupt; "
                             "download or save the model again.") from exc
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                             "fix the file, or download or save the model again.") from exc
    except RecursionError as exc:
        raise ModelLoadError(f"{path} nests too deeply to be a model configuration; download or save the model "
                             "again.") from exc
    except OSError as exc:
        raise ModelLoadError(f"{path} cannot be read ({exc.strerror or exc}).") from exc


def safetensors_extent(path: Path) -> tuple[int, int, str | None]:
    """The bytes a safetensors file's header accounts for (its length field, header and tensor data), the file's
    size, and what makes the header unreadable (None when it is readable; the first number is then exact).

    The header's claimed length is checked against the file size and MAX_SAFETENSORS_HEADER before it is read, so a
    file that claims gigabytes of header costs nothing. Torch-free: the zoo checks its sources with it too.

    Raises:
        ModelLoadError: the file is not a regular file.
    """
    size = regular_file(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return 0, size, f"it has {size} bytes, fewer than a safetensors header"
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            return 0, size, f"its header claims {length} bytes but the file has {size}"
        if length > MAX_SAFETENSORS_HEADER:
            return 0, size, f"its header claims {length} bytes, more than safetensors' limit of {MAX_SAFETENSORS_HEADER}"
        try:
            header = json.loads(fh.read(length).decode("utf-8"))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError):
            return 0, size, "its header is not valid safetensors JSON"
    if not isinstance(end, int) or isinstance(end, bool):
        return 0, size, "its header is not valid safetensors JSON"
    return 8 + length + end, size, None


def check_safetensors(path: Path) -> None:
    """Refuse a safetensors file whose header or tensor data is cut short (a partial download or copy), whose header
    claims more than MAX_SAFETENSORS_HEADER bytes, or that is not a regular file.

    Raises:
        ModelLoadError
    """
    needed, size, problem = safetensors_extent(path)
    if problem is None and needed > size:
        problem = f"its tensors need {needed} bytes but the file has {size}"
    if problem:
        raise ModelLoadError(f"{path} is truncated or corrupt ({problem}); download or save the model again.")


def _check_module(folder: Path, path: Path, class_ref: Any, config_file: Path) -> None:
    if not isinstance(class_ref, str) or not class_ref.startswith(TRUSTED_PREFIX):
        raise UnsupportedModelError(
            f"{config_file} names the module class {class_ref!r}, which is not part of sentence-transformers; "
            "st-export never imports code shipped with a model (nothing was imported). Only sentence-transformers' "
            f"own modules can be exported{_pylate_hint(class_ref, config_file)}."
        )
    if class_ref.rsplit(".", 1)[-1] not in ("Router", "Asym"):
        return
    config = next((path / name for name in ROUTER_CONFIGS if os.path.lexists(path / name)), None)
    if config is None:
        return  # sentence-transformers reports the missing file when it loads
    routes = read_json(config)
    types = routes.get("types") if isinstance(routes, dict) else None
    if not isinstance(types, dict):
        raise ModelLoadError(f"{config} has no 'types' mapping of route modules; save the model again.")
    for module_id, route_type in types.items():
        _check_module(folder, _inside(folder, f"{path.relative_to(folder).as_posix()}/{module_id}", config),
                      route_type, config)


def _pylate_hint(class_ref: Any, config_file: Path) -> str:
    """For a refused `pylate.` class: which PyLate classes are accepted, and where."""
    if not isinstance(class_ref, str) or not class_ref.startswith("pylate."):
        return ""
    where = "in modules.json" if config_file.name == "modules.json" else "in modules.json only, not in a Router"
    return f", and of PyLate's, those sentence-transformers maps to its own ({', '.join(sorted(PYLATE_ALIASES))}) {where}"


def _inside(folder: Path, relative: Any, config_file: Path) -> Path:
    """`folder / relative`, refusing a path that is absolute, climbs out with '..' or lies in a hidden folder."""
    if not isinstance(relative, str):
        raise ModelLoadError(f"{config_file} has a module path that is not a string: {relative!r}.")
    pure = PurePosixPath(relative.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or PureWindowsPath(relative).drive:
        raise ModelLoadError(f"{config_file} has the module path {relative!r}, which leaves the model folder; "
                             "module paths must be relative and inside it.")
    if any(part.startswith(".") for part in pure.parts):
        raise ModelLoadError(f"{config_file} has the module path {relative!r}, in a hidden folder (a .git or .cache "
                             "is no part of a model, and the checks of the folder skip it); move the module to a "
                             "folder whose name does not start with '.'.")
    return folder.joinpath(*pure.parts)


def _check_hooks(value: Any, path: Path, where: str = "") -> None:
    """Walk a JSON value for keys that would make transformers import code from the repository."""
    if isinstance(value, list):
        for item in value:
            _check_hooks(item, path, where)
        return
    if not isinstance(value, dict):
        return
    for key, item in value.items():
        name = f"{where}.{key}" if where else key
        hook = (key in CODE_HOOKS and isinstance(item, (dict, list, str)) and item) or (
            key == "trust_remote_code" and item is True)
        if hook:
            raise UnsupportedModelError(
                f"{path} sets {name!r} ({json.dumps(item)[:120]}), which makes transformers run code shipped with "
                "the model; st-export never runs such code (nothing was imported). Only models whose architecture "
                "transformers itself implements can be exported."
            )
        if key in ("activation_function", "activation_fn") and isinstance(item, str) and "." in item \
                and not item.startswith(TRUSTED_CALLABLE_PREFIXES):
            raise UnsupportedModelError(
                f"{path} sets {name!r} to {item!r}, a function outside torch and sentence-transformers; st-export "
                "never imports code named by a model's configuration."
            )
        _check_hooks(item, path, name)


def _hidden(path: Path, folder: Path) -> bool:
    """Files under a hidden folder (.git, .cache of a Hub download) are no part of the model."""
    return any(part.startswith(".") for part in path.relative_to(folder).parts[:-1])
