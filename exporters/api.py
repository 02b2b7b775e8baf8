"""`export()`: a sentence-transformers model in, a verified self-contained folder out."""

from __future__ import annotations

import logging
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from tokenizers import Tokenizer

from exporters.folder import check_output_dir, staged_output_dir
from exporters.graphs import PROMPT_LENGTH, BiEncoderGraph
from exporters.onnx_export import DEFAULT_OPSET, export_onnx
from exporters.parity import check_bi_encoder_parity
from exporters.source import graph_input_names, load_source
from st_runtime.manifest import Manifest, TokenizerSpec, Variant, hash_folder

logger = logging.getLogger(__name__)

ONNX_FILE = "onnx/model.onnx"
TOKENIZER_FILE = "tokenizer.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
VERSIONED_PACKAGES = ("st-runtime", "sentence-transformers", "transformers", "torch", "onnx", "onnxruntime", "tokenizers")
DEFAULT_ATOL = 1e-4


def export(
    model: str | Path | SentenceTransformer,
    output_dir: str | Path,
    *,
    overwrite: bool = False,
    opset: int = DEFAULT_OPSET,
    atol: float = DEFAULT_ATOL,
    external_data: bool | None = None,
) -> Manifest:
    """Export a sentence-transformers bi-encoder, its whole module chain in one ONNX graph, into `output_dir`.

    The folder is built beside `output_dir`, checked against sentence-transformers on probe texts, and only
    then renamed into place; on any error nothing is left behind.

    Args:
        model: a local sentence-transformers folder, a Hub id (when online), or a loaded SentenceTransformer.
        output_dir: folder to create.
        overwrite: replace `output_dir` if it is an earlier st-export folder.
        opset: ONNX opset.
        atol: largest absolute difference to sentence-transformers allowed on the probe texts.
        external_data: weights in onnx/model.onnx_data (True), inline (False), or only when over 2 GiB (None).

    Returns:
        The manifest written to `output_dir/st_runtime.json`.

    Raises:
        OutputExistsError, ModelLoadError, UnsupportedModelError, ParityError.
    """
    check_output_dir(output_dir, overwrite=overwrite)  # fail before the slow work
    source = load_source(model)
    st_model = source.model
    with staged_output_dir(output_dir, overwrite=overwrite) as staging:
        _save_sentence_transformers_files(st_model, staging)
        tokenizer = _write_tokenizer(st_model, staging / TOKENIZER_FILE)
        input_names = graph_input_names(st_model)
        excludes_prompt = any(m["type"] == "Pooling" and not m["config"].get("include_prompt", True)
                              for m in source.modules)
        _export_graph(st_model, staging / ONNX_FILE, input_names, excludes_prompt, opset, external_data)
        if excludes_prompt:
            input_names.append(PROMPT_LENGTH)
        manifest = Manifest(
            task=source.task,
            inputs=tuple(input_names),
            outputs=("token_embeddings", "sentence_embedding"),
            tokenizer=tokenizer,
            variants=(Variant(name="fp32", file=ONNX_FILE, precision="fp32"),),
            embedding_dimension=st_model.get_embedding_dimension(),
            similarity_fn_name=st_model.similarity_fn_name,
            prompts=dict(st_model.prompts),
            default_prompt_name=st_model.default_prompt_name,
            modules=tuple(source.modules),
            files=hash_folder(staging),
            source=source.source,
            versions=_versions(),
        )
        manifest.save(staging)
        parity = check_bi_encoder_parity(st_model, staging, atol=atol)
        manifest = Manifest(**{**manifest.__dict__, "parity": parity})
        manifest.save(staging)
    return manifest


def _save_sentence_transformers_files(model: SentenceTransformer, folder: Path) -> None:
    """Keep modules.json, module configs and small module weights (so sentence-transformers' own
    backend="onnx" loads the folder), but drop the transformer's torch weights: the graph holds them."""
    model.save(str(folder), create_model_card=False)
    for name in WEIGHT_FILES:
        (folder / name).unlink(missing_ok=True)
    for shard in folder.glob("model-*-of-*.safetensors"):
        shard.unlink()


def _write_tokenizer(model: SentenceTransformer, path: Path) -> TokenizerSpec:
    """Write the fast tokenizer as the source model configures it (lower-casing, max_seq_length truncation,
    pad to longest), and return the settings the runtime applies."""
    hf_tokenizer = model[0].tokenizer
    max_seq_length = int(model.max_seq_length)
    spec = TokenizerSpec(
        file=path.name,
        max_seq_length=max_seq_length,
        pad_token=str(hf_tokenizer.pad_token),
        pad_token_id=int(hf_tokenizer.pad_token_id),
        padding_side=hf_tokenizer.padding_side,
        truncation_side=hf_tokenizer.truncation_side,
    )
    backend = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())  # a copy: the source model is untouched
    backend.no_padding()
    backend.enable_truncation(max_length=max_seq_length, strategy="longest_first", direction=spec.truncation_side)
    backend.enable_padding(direction=spec.padding_side, pad_id=spec.pad_token_id, pad_token=spec.pad_token)
    backend.save(str(path))
    return spec


def _export_graph(
    model: SentenceTransformer,
    path: Path,
    input_names: list[str],
    excludes_prompt: bool,
    opset: int,
    external_data: bool | None,
) -> None:
    example = model.preprocess(["a short text", "a somewhat longer text for tracing the graph"])
    inputs = {name: example[name] for name in input_names}
    optional = {}
    if excludes_prompt:
        inputs[PROMPT_LENGTH] = torch.tensor([1], dtype=torch.int64)
        optional[PROMPT_LENGTH] = np.array([0], dtype=np.int64)
    graph = BiEncoderGraph(list(model), list(inputs)).eval()
    axes = {name: {0: "batch_size", 1: "sequence_length"} for name in input_names}
    axes |= {"token_embeddings": {0: "batch_size", 1: "sequence_length"}, "sentence_embedding": {0: "batch_size"},
             "last_hidden_state": {0: "batch_size", 1: "sequence_length"}}
    export_onnx(graph, inputs, path, output_names=list(BiEncoderGraph.output_names), dynamic_axes=axes,
                optional_inputs=optional, opset=opset, external_data=external_data)


def _versions() -> dict[str, str]:
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions

