"""`build()`: a recipe's model exported offline with all its variants, each checked against its accuracy floor,
timed with st_runtime, and recorded (zoo.json in the folder, a line per variant in the results file).

The export and the variants are built in a staging folder that is renamed into place only when every check
passes; a variant under its floor, or a model that is not the recipe's, leaves nothing behind.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models_zoo.errors import FloorError, ModelMismatchError, SourceNotFoundError
from models_zoo.recipe import Recipe, VariantSpec, find_recipe, get_recipe
from models_zoo.results import append_results, machine, metric_name, now
from models_zoo.sources import Resolved, describe, resolve
from models_zoo.variants import quantizer_config, select

ZOO_FILE = "zoo.json"
RECORDED_PACKAGES = ("onnxruntime", "openvino")  # the engines whose version a result line records


@dataclass(frozen=True)
class BuildReport:
    """What `build` wrote: the folder, the source used, and one result record per variant (fp32 first)."""

    recipe: Recipe
    output: Path
    resolved: Resolved
    records: tuple[dict[str, Any], ...]
    results_file: Path | None


def detect_kind(folder: Path) -> str:
    """The sentence-transformers class st-export would load `folder` with (exporters.source decides it)."""
    from exporters.source import model_type_of_folder

    return model_type_of_folder(folder)


def export_target(resolved: Resolved) -> Any:
    """What to hand to exporters.export: the folder, or (when st-export would pick another class than the
    recipe's kind for it) the model loaded with the recipe's sentence-transformers class."""
    if detect_kind(resolved.folder) == resolved.recipe.kind:
        return resolved.folder
    import sentence_transformers

    return getattr(sentence_transformers, resolved.recipe.kind)(str(resolved.folder), device="cpu",
                                                                local_files_only=True)


def resolve_for_export(name: str) -> Any:
    """For st-export: the local folder (or loaded model) of the zoo recipe named `name`, or None when `name` is
    no recipe, or is a recipe's Hub id with no local source (st-export then tries the Hub).

    Raises:
        SourceNotFoundError: a recipe's short name with no local source (the message says where to put it).
        SourceIntegrityError, ModelMismatchError: the source found is corrupt, partial or another model.
    """
    recipe = find_recipe(name)
    if recipe is None:
        return None
    try:
        resolved = resolve(recipe)
    except SourceNotFoundError:
        if "/" in name:
            return None
        raise
    return export_target(resolved)


def check_model(manifest: Any, recipe: Recipe) -> None:
    """Refuse an export whose task or dimension is not the recipe's.

    Raises:
        ModelMismatchError
    """
    from st_runtime.kinds import CLASS_TASKS

    if manifest.task != CLASS_TASKS[recipe.kind]:
        raise ModelMismatchError(f"{recipe.name} exported as a {manifest.task!r} model, the recipe expects a "
                                 f"{recipe.kind} ({CLASS_TASKS[recipe.kind]!r}).")
    dimension = manifest.task_config.num_labels if recipe.kind == "CrossEncoder" else manifest.embedding_dimension
    if dimension != recipe.dimension:
        raise ModelMismatchError(f"{recipe.name} exported with dimension {dimension}, the recipe expects "
                                 f"{recipe.dimension}; is it the right model?")


def check_floors(manifest: Any, floors: dict[str, VariantSpec]) -> None:
    """Raise FloorError naming every variant whose accuracy score is below its recipe floor."""
    failed = []
    for variant in manifest.variants:
        spec = floors.get(variant.name)
        if spec is not None and variant.accuracy["score"] < spec.min_score:
            failed.append(f"{spec.variant} ({variant.name}): score {variant.accuracy['score']:.5f} < floor "
                          f"{spec.min_score}")
    if failed:
        raise FloorError("Variants below their accuracy floor, nothing was written: " + "; ".join(failed) + ".")


def speed_items(task: str, texts: Sequence[str]) -> list:
    """What one timed run processes: the texts, or for a reranker one (text, next text) pair per text."""
    texts = list(texts)
    if task == "text-ranking":
        return [(t, texts[(i + 1) % len(texts)]) for i, t in enumerate(texts)]
    return texts


def measure_speed(folder: Path, manifest: Any, names: Sequence[str], texts: Sequence[str], *, repeats: int = 3,
                  threads: int | None = None, batch_size: int = 32) -> dict[str, float]:
    """Texts (pairs, for a reranker) per second of each variant with st_runtime; the best of `repeats` runs,
    the variants taking turns in each round so that they share the machine's slow and fast moments alike."""
    import st_runtime

    items = speed_items(manifest.task, texts)
    models = {n: st_runtime.load(folder, variant=n, intra_op_num_threads=threads) for n in names}

    def run(model: Any, batch: list) -> None:
        if manifest.task == "text-ranking":
            model.predict(batch, batch_size=batch_size, show_progress_bar=False)
        else:
            model.encode(batch, batch_size=batch_size, show_progress_bar=False)

    for model in models.values():
        run(model, items[:batch_size])  # warm-up: sessions, allocations
    best = dict.fromkeys(names, float("inf"))
    for _ in range(max(1, repeats)):
        for name, model in models.items():
            start = time.perf_counter()
            run(model, items)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: len(items) / seconds for name, seconds in best.items()}


def variant_size_mb(folder: Path, file: str) -> float:
    """Size of a variant's graph with its weights (onnx + .onnx_data; OpenVINO .xml + .bin), in MB."""
    path = folder / file
    siblings = [p for p in path.parent.iterdir() if p.name == path.name or p.name.startswith(path.stem + ".")]
    return sum(p.stat().st_size for p in siblings if p.is_file()) / 1e6


def build(
    name: str | Recipe,
    output_dir: str | Path | None = None,
    *,
    variants: Sequence[str] | None = None,
    overwrite: bool = False,
    results_file: str | Path | None = None,
    record_results: bool = True,
    repeats: int = 3,
    threads: int | None = None,
    heldout: Sequence[str] | None = None,
) -> BuildReport:
    """Export recipe `name` offline into `output_dir` (default exported/NAME) with its variants.

    Args:
        name: a recipe name or Hub id, or a Recipe.
        output_dir: folder to create.
        variants: recipe variant keys to build (default: all of the recipe's).
        overwrite: replace `output_dir` if it is an earlier st-export folder.
        results_file: where the result lines are appended (default <cache>/zoo/results.jsonl).
        record_results: append to the results file (zoo.json is always written into the folder).
        repeats: timed runs per variant (the best counts).
        threads: onnxruntime / OpenVINO threads for the timing (default: theirs).
        heldout: texts for accuracy and speed (default: quantizers.texts.heldout_texts()).

    Returns:
        The BuildReport.

    Raises:
        UnknownRecipeError, UnknownVariantError, SourceNotFoundError, SourceIntegrityError, ModelMismatchError,
        FloorError, and the exporter's errors (ParityError, OutputExistsError, ...).
    """
    recipe = name if isinstance(name, Recipe) else get_recipe(name)
    specs = select(recipe.variants, variants, recipe.name)
    output = Path(output_dir) if output_dir is not None else Path("exported") / recipe.name
    from exporters import export
    from exporters.folder import check_output_dir
    from quantizers.texts import heldout_texts, read_texts

    check_output_dir(output, overwrite=overwrite)  # before the slow work
    resolved = resolve(recipe)
    texts = tuple(heldout) if heldout is not None else heldout_texts()
    calibration = read_texts(recipe.calibration_file()) if recipe.calibration_file() else None
    configs = [(spec, quantizer_config(spec, calibration)) for spec in specs]
    floors = {config.name: spec for spec, config in configs}
    keys = {config.name: spec.variant for spec, config in configs}
    stamp, host = now(), machine()
    records: list[dict[str, Any]] = []

    def post_process(staging: Path):
        from quantizers import quantize
        from st_runtime.machine import package_versions
        from st_runtime.manifest import load_manifest

        manifest = load_manifest(staging)
        check_model(manifest, recipe)
        if configs:
            manifest = quantize(staging, [c for _, c in configs], heldout=texts)
            check_floors(manifest, floors)
        names = [v.name for v in manifest.variants]
        speeds = measure_speed(staging, manifest, names, texts, repeats=repeats, threads=threads)
        for v in manifest.variants:
            spec = floors.get(v.name)
            records.append({
                "model": recipe.name, "kind": recipe.kind, "variant": v.name, "key": keys.get(v.name, "fp32"),
                "file": v.file, "precision": v.precision, "backend": v.backend, "isa": v.isa,
                "size_mb": round(variant_size_mb(staging, v.file), 2),
                "texts_per_s": round(speeds[v.name], 2), "speedup": round(speeds[v.name] / speeds["fp32"], 3),
                "score": None if v.accuracy is None else v.accuracy["score"], "accuracy": v.accuracy,
                "metric": metric_name(manifest.task), "floor": None if spec is None else spec.min_score,
                "machine": host, "date": stamp, "versions": package_versions(RECORDED_PACKAGES, missing=True),
            })
        zoo = {"format_version": 1, "recipe": recipe.name, "kind": recipe.kind, "hf_id": recipe.hf_id,
               "source": {"type": resolved.source.type, "description": describe(resolved.source),
                          "origin": str(resolved.origin), "checks": list(resolved.checks)},
               "date": stamp, "machine": host,
               "speed": {"texts": len(texts), "batch_size": 32, "repeats": repeats, "threads": threads},
               "variants": [{k: v for k, v in r.items() if k not in ("model", "kind", "machine", "date")} for r in records]}
        (staging / ZOO_FILE).write_text(json.dumps(zoo, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return manifest

    export(export_target(resolved), output, overwrite=overwrite, post_process=post_process)
    written = append_results(records, results_file) if record_results else None
    return BuildReport(recipe=recipe, output=output, resolved=resolved, records=tuple(records), results_file=written)
