"""Files every kind writes besides the graph: the sentence-transformers files, the tokenizer (`write_tokenizer`, the
one writer of every kind's tokenizer.json), versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def write_tokenizer(tokenizer: Any, path: Path, *, max_seq_length: int | None = None,
                    special_tokens: bool = True) -> TokenizerSpec:
    """Write a tokenizer as the source module applies it, and return the settings the runtime applies.

    Args:
        tokenizer: a transformers fast tokenizer (Transformer modules, SparseStaticEmbedding): written with its
            lower-casing etc., truncation (longest first) at `max_seq_length` (None: never), and padding to the longest
            text as it pads; or the `tokenizers.Tokenizer` of a StaticEmbedding, written as sentence-transformers
            applies it: no special tokens, no padding (the runtime pads with a valid id, masked out in the graph), and
            truncated only where the tokenizer itself truncates (usually never).
        path: the file to write (its name is the spec's `file`).
        max_seq_length: truncation length of a transformers tokenizer.
        special_tokens: False drops the post-processor, so the runtime's encode adds no special tokens (as
            `tokenizer(texts, add_special_tokens=False)`).
    """
    if isinstance(tokenizer, Tokenizer):
        return _write_static_tokenizer(tokenizer, path)
    spec = TokenizerSpec(
        file=path.name,
        max_seq_length=None if max_seq_length is None else int(max_seq_length),
        pad_token=str(tokenizer.pad_token),
        pad_token_id=int(tokenizer.pad_token_id),
        padding_side=tokenizer.padding_side,
        truncation_side=tokenizer.truncation_side,
    )
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # a copy: the source model is untouched
    if not special_tokens:
        backend.post_processor = None
    backend.no_padding()
    backend.no_truncation()
    if spec.max_seq_length is not None:
        backend.enable_truncation(max_length=spec.max_seq_length, strategy="longest_first", direction=spec.truncation_side)
    backend.enable_padding(direction=spec.padding_side, pad_id=spec.pad_token_id, pad_token=spec.pad_token)
    backend.save(str(path))
    return spec


def _write_static_tokenizer(tokenizer: Tokenizer, path: Path) -> TokenizerSpec:
    """`write_tokenizer` for a StaticEmbedding's `tokenizers.Tokenizer` (its post-processor dropped, its truncation
    kept, a pad token found in its vocabulary)."""
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
