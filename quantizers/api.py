"""`quantize()`: add optimized / quantized variants to an exported folder, each with its accuracy measured
against the fp32 graph; the fp32 graph is never changed, and a variant under `min_accuracy` writes nothing."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from quantizers import accuracy
from quantizers.configs import DynamicInt8, PassJob, QuantizationConfig
from quantizers.errors import AccuracyError, QuantizationError
from quantizers.texts import heldout_texts
from quantizers.variants import variant_config
from st_runtime.manifest import Manifest, Variant, load_manifest, sha256_file

logger = logging.getLogger(__name__)

# A dynamic int8 variant under this accuracy score is rebuilt with the feed-forward down-projections in float, and
# the rebuild is kept only when it takes away at least this share of the accuracy lost (all-mpnet-base-v2: 0.869 ->
# 0.989): those products are a third of the model's multiply-adds, too many to give up for a small gain.
DYNAMIC_RETRY_BELOW = 0.99
DYNAMIC_RETRY_MIN_GAIN = 0.5


def quantize(
    folder: str | Path,
    configs: Sequence[QuantizationConfig | str],
    *,
    min_accuracy: float | None = None,
    heldout: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Manifest:
    """Write each configured variant into `folder` and record it (file, precision, ISA, sha256, accuracy, and the
    pass's report, e.g. an optimization's fusions) in the manifest.

    Args:
        folder: a folder written by st-export.
        configs: passes to run (Optimize, DynamicInt8, StaticInt8, Fp16, OpenVino, OpenVinoInt8Weights,
            OpenVinoStaticInt8), or variant names ("O3", "int8", "openvino-int8": quantizers.variants).
        min_accuracy: the lowest accepted accuracy score (mean cosine for embeddings, Spearman for rerankers,
            top-k overlap for sparse); below it, nothing at all is written and AccuracyError is raised.
        heldout: texts for the accuracy report (default: the held-out set shipped in quantizers/data).
        overwrite: replace variants of the same name that the folder already has.

    Returns:
        The updated manifest.

    Raises:
        AccuracyError, QuantizationError (a variant exists without overwrite; a model with routes; an O2-O4
        optimization that fuses nothing), ValueError (an unknown variant name).
    """
    configs = [variant_config(c) if isinstance(c, str) else c for c in configs]
    folder = Path(folder)
    manifest = load_manifest(folder)
    if getattr(manifest, "routing", None) is not None:
        raise QuantizationError("Quantizing models with a Router (one graph per route) is not supported yet; "
                                "the fp32 folder is unchanged.")
    existing = {v.name for v in manifest.variants}
    clashes = sorted(existing & {c.name for c in configs})
    if "fp32" in clashes or (clashes and not overwrite):
        raise QuantizationError(f"The folder already has variant(s) {clashes}; pass overwrite=True (--overwrite) to "
                                "replace them (the fp32 graph is never replaced).")
    texts = tuple(heldout) if heldout is not None else heldout_texts()
    fp32 = manifest.variant(name="fp32")
    reference = accuracy.outputs_of(folder, manifest, fp32, list(texts))

    staged: list[tuple[Variant, list[Path]]] = []
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=folder) as scratch:
        scratch_dir = Path(scratch)
        for config in configs:
            target = scratch_dir / config.file
            target.parent.mkdir(parents=True, exist_ok=True)
            # An IR that another variant wrote (OpenVINO fp32 and bf16 share one), in this run or before; a variant
            # that replaces its own earlier file (overwrite) writes it anew.
            others = {v.file for v in manifest.variants if v.name != config.name}
            shared = [p for p in (folder / config.file, target) if p.exists() and (p == target or config.file in others)]
            job = PassJob(folder=folder, manifest=manifest, src=folder / fp32.file, dst=target, reuse=bool(shared))
            variant = replace(config.variant(), report=config.apply(job) or None)
            trial = replace(variant, file=(shared[0] if shared else target).relative_to(folder).as_posix())
            report = accuracy.measure(folder, replace(manifest, variants=(*manifest.variants, trial)), trial, texts,
                                      reference=reference)
            if isinstance(config, DynamicInt8) and not config.float_ffn_output and report["score"] < DYNAMIC_RETRY_BELOW:
                # Activation outliers in the feed-forward down-projections: keep those products in float.
                logger.info("%s reaches %.5f; retrying with the feed-forward outputs in float.", config.name, report["score"])
                retried = replace(variant, report=replace(config, float_ffn_output=True).apply(job) or None)
                retry = accuracy.measure(folder, replace(manifest, variants=(*manifest.variants, trial)), trial, texts,
                                         reference=reference)
                if 1 - retry["score"] <= (1 - DYNAMIC_RETRY_MIN_GAIN) * (1 - report["score"]):
                    variant, report = retried, {**retry, "ffn_output_in_float": 1.0}
                else:
                    logger.info("%s with the feed-forward outputs in float reaches %.5f, too little gain for their "
                                "speed; keeping every product in int8.", config.name, retry["score"])
                    config.apply(job)  # the file as it was measured first
            if min_accuracy is not None and report["score"] < min_accuracy:
                raise AccuracyError(f"Variant {variant.name} reaches accuracy {report['score']:.5f} "
                                    f"({_describe(report)}), below --min-accuracy {min_accuracy}; nothing was written.")
            written = [] if shared else sorted(p for p in target.parent.iterdir() if p.stem == target.stem)
            staged.append((replace(variant, accuracy=report), written))

        files = dict(manifest.files)
        for _, written in staged:
            for path in written:
                rel = path.relative_to(scratch_dir)
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, folder / rel)
                files[rel.as_posix()] = sha256_file(folder / rel)
    new_names = {v.name for v, _ in staged}
    variants = tuple(v for v in manifest.variants if v.name not in new_names) + tuple(v for v, _ in staged)
    manifest = replace(manifest, variants=variants, files=files)
    manifest.save(folder)
    return manifest


def _describe(report: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.5f}" for k, v in report.items() if k not in ("score", "texts"))


__all__ = ["quantize"]
