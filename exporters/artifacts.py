"""Files every kind writes besides the graph: the sentence-transformers files, tokenizer.json, versions."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

from tokenizers import Tokenizer
from torch import nn

from st_runtime.manifest import TokenizerSpec

TOKENIZER_FILE = "tokenizer.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
LARGE_LIMIT = 10**9  # transformers writes model_max_length = 1e30 for "no limit"
VERSIONED_PACKAGES = ("st-runtime", "sentence-transformers", "transformers", "torch", "onnx", "onnxruntime", "tokenizers")


def save_sentence_transformers_files(model: nn.Module, folder: Path) -> None:
    """Keep modules.json, module configs and small module weights (so sentence-transformers' own
    backend="onnx" loads the folder), but drop the transformer's torch weights: the graph holds them."""
    model.save(str(folder), create_model_card=False)
    for name in WEIGHT_FILES:
        (folder / name).unlink(missing_ok=True)
    for shard in folder.glob("model-*-of-*.safetensors"):
        shard.unlink()
    for config in folder.rglob("tokenizer_config.json"):
        align_tokenizer_config(config)


def align_tokenizer_config(path: Path) -> None:
    """Make a Transformer module's tokenizer_config.json truncate where the module truncates.

    The module's max_seq_length is sentence_bert_config.json's `max_seq_length` (sentence-transformers 5) or, when that
    has none, the tokenizer's `model_max_length` (sentence-transformers 6 stores it there). transformers 5 also saves
    the source tokenizer.json truncation (all-MiniLM-L6-v2: 128) as `max_length`, and loaders that read only these
    files (fastembed takes the smaller of the two) would truncate long texts earlier than sentence-transformers (256):
    both keys are set to max_seq_length. A folder without sentence_bert_config.json, or without a limit, is left as is.
    """
    st_config = path.with_name("sentence_bert_config.json")
    if not st_config.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    limit = json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length") or config.get("model_max_length")
    if not isinstance(limit, int) or isinstance(limit, bool) or not 0 < limit < LARGE_LIMIT:
        return
    aligned = config | {"model_max_length": limit} | ({"max_length": limit} if "max_length" in config else {})
    if aligned != config:
        path.write_text(json.dumps(aligned, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tokenizer(hf_tokenizer, max_seq_length: int, path: Path) -> TokenizerSpec:
    """Write a transformers fast tokenizer as the source model configures it (lower-casing, truncation at
    max_seq_length, pad to longest) and return the settings the runtime applies."""
    spec = TokenizerSpec(
        file=path.name,
        max_seq_length=int(max_seq_length),
        pad_token=str(hf_tokenizer.pad_token),
        pad_token_id=int(hf_tokenizer.pad_token_id),
        padding_side=hf_tokenizer.padding_side,
        truncation_side=hf_tokenizer.truncation_side,
    )
    backend = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())  # a copy: the source model is untouched
    backend.no_padding()
    backend.enable_truncation(max_length=spec.max_seq_length, strategy="longest_first", direction=spec.truncation_side)
    backend.enable_padding(direction=spec.padding_side, pad_id=spec.pad_token_id, pad_token=spec.pad_token)
    backend.save(str(path))
    return spec


def package_versions() -> dict[str, str]:
    """Versions of the packages that shaped the export, for the manifest."""
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_static_tokenizer(tokenizer: Tokenizer, path: Path) -> TokenizerSpec:
    """Write the `tokenizers` Tokenizer of a StaticEmbedding as sentence-transformers applies it: no special tokens
    (its post-processor is dropped, so the runtime's encode adds none), no padding, and truncated only where the
    tokenizer itself truncates (usually never: max_seq_length None). The runtime pads with a valid id, masked out
    in the graph."""
    # StaticEmbedding encodes with add_special_tokens=False, so its post-processor never runs: serializing without
    # it (restored at once) changes nothing it computes, and is 20x faster than a JSON round trip of a large vocab.
    post_processor = tokenizer.post_processor
    try:
        tokenizer.post_processor = None
        text = tokenizer.to_str()  # StaticEmbedding keeps the file's truncation and drops only its padding
    finally:
        tokenizer.post_processor = post_processor
    path.write_text(text, encoding="utf-8")
    truncation = tokenizer.truncation
    pad_token = next((t for t in ("<pad>", "[PAD]", "<PAD>", "<unk>", "[UNK]") if tokenizer.token_to_id(t) is not None),
                     None)
    return TokenizerSpec(
        file=path.name,
        max_seq_length=int(truncation["max_length"]) if truncation else None,
        pad_token=pad_token or "<pad>",
        pad_token_id=tokenizer.token_to_id(pad_token) if pad_token else 0,
        truncation_side=truncation["direction"] if truncation else "right",
    )
