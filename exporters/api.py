"""`export()`: a sentence-transformers model in, a verified self-contained folder out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

# Each kind module registers itself in exporters.kinds.KINDS when imported.
import exporters.bi_encoder
import exporters.cross_encoder
import exporters.multi_vector
import exporters.sparse_encoder  # noqa: F401
from exporters.artifacts import VERSIONED_PACKAGES, save_sentence_transformers_files
from exporters.folder import check_output_dir, staged_output_dir
from exporters.kinds import ExportOptions
from exporters.onnx_export import DEFAULT_OPSET, eager_attention
from exporters.parity import source_dtype_parity
from exporters.positions import position_limits
from exporters.source import load_source
from exporters.source_dtype import SourcePrecision
from exporters.tracing import VARIANTS_FAILED, broadcast_masks, graph_failures
from st_runtime.machine import package_versions
from st_runtime.manifest import Manifest, hash_folder

DEFAULT_ATOL = 1e-4


def export(
    model: str | Path | nn.Module,
    output_dir: str | Path,
    *,
    overwrite: bool = False,
    opset: int = DEFAULT_OPSET,
    atol: float = DEFAULT_ATOL,
    external_data: bool | None = None,
    post_process: Callable[[Path], Manifest] | None = None,
) -> Manifest:
    """Export a sentence-transformers model, its whole module chain in one ONNX graph, into `output_dir`.

    The folder is built beside `output_dir`, checked against sentence-transformers on probe texts, and only
    then renamed into place; on any error nothing is left behind.

    Args:
        model: a local sentence-transformers folder, a Hub id (when online), or a loaded model.
        output_dir: folder to create.
        overwrite: replace `output_dir` if it is an earlier st-export folder.
        opset: ONNX opset.
        atol: largest absolute difference to sentence-transformers allowed on the probe texts.
        external_data: weights in onnx/model.onnx_data (True), inline (False), or only when over 2 GiB (None).
        post_process: called with the verified staging folder before it is published (st-export adds quantized
            variants here); it returns the updated manifest, and an error from it leaves nothing behind.

    Returns:
        The manifest written to `output_dir/st_runtime.json`.

    Raises:
        OutputExistsError, OutputLocationError (under a file, not writable, disk full), ModelLoadError,
        UnsupportedModelError (also: the folder names code of its own, refused before loading; a max_seq_length
        above the model's positions), ParityError.
    """
    check_output_dir(output_dir, overwrite=overwrite)  # fail before the slow work
    source, kind = load_source(model)
    max_positions = position_limits(source.model)
    precision = SourcePrecision(source.model)
    if not precision.is_fp32:
        source.source = {**source.source, "dtype": precision.dtype}
    with precision.fp32(), staged_output_dir(output_dir, overwrite=overwrite) as staging:
        save_sentence_transformers_files(source.model, staging)
        with eager_attention(source.model), broadcast_masks(), graph_failures(source.model, "tracing the graph"):
            written = kind.write(source, staging, ExportOptions(opset=opset, external_data=external_data))
        manifest = written.manifest(kind.task, source, files=hash_folder(staging), max_positions=max_positions,
                                    versions=package_versions(VERSIONED_PACKAGES))
        manifest.save(staging)
        with graph_failures(source.model, "running the exported graph"):
            parity = kind.check_parity(source.model, staging, atol=atol)
            if not precision.is_fp32:
                with precision.original():
                    parity = {**parity, **source_dtype_parity(kind.check_parity, source.model, staging, precision.dtype)}
        manifest = Manifest(**{**manifest.__dict__, "parity": parity})
        manifest.save(staging)
        if post_process is not None:
            with graph_failures(source.model, "building the variants", VARIANTS_FAILED):
                manifest = post_process(staging)
    return manifest
