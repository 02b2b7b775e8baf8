"""What the sizes in a source model's configuration may ask for, checked before anything is allocated.

transformers builds a model from `config.json` before it reads a weight: `num_hidden_layers: 1e6` grows memory for
minutes before anything fails, and a negative `max_seq_length` in `sentence_bert_config.json` ends in an
OverflowError deep in the tokenizer. So each transformers config's size fields are checked for type and range, and
the parameters they imply (a lower bound: the feed-forward and two attention projections of each distinct layer,
the token and position embeddings) are compared with the bytes of the weights shipped beside it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from exporters.errors import ModelLoadError

CONFIG_FILES = ("config.json", "sentence_bert_config.json", "model.safetensors.index.json")
# Size fields of transformers configs, by meaning (each architecture names them its own way).
LAYERS = ("num_hidden_layers", "n_layers", "num_layers", "n_layer")
DECODER_LAYERS = ("num_decoder_layers",)
HIDDEN = ("hidden_size", "dim", "d_model", "n_embd")
INNER = ("intermediate_size", "hidden_dim", "d_ff", "n_inner", "ffn_dim")
VOCAB = ("vocab_size",)
POSITIONS = ("max_position_embeddings", "n_positions")
EMBEDDING = ("embedding_size",)  # ALBERT's factorized token embedding
GROUPS = ("num_hidden_groups",)  # ALBERT: the layers share this many distinct layers' weights
SIZE_FIELDS = (*LAYERS, *DECODER_LAYERS, *HIDDEN, *INNER, *VOCAB, *POSITIONS, *EMBEDDING, *GROUPS)
MAX_LAYERS = 1024  # far above any released model (a few hundred at most)
MAX_PARAMETERS = 10**12  # what the config may imply when no weights are there to compare with (a Hub id's JSON files)
# Parameters the config may imply per byte of weights shipped: the estimate is a lower bound (fp32: 0.25 per byte),
# so 4 leaves room for 4-bit weights packed two to a byte with a margin of 2.
PARAMETERS_PER_BYTE = 4
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")


def check_configs(folder: Path, configs: dict[Path, Any]) -> None:
    """Check the parsed `configs` (path -> JSON value, of the CONFIG_FILES names) of the source `folder`.

    Raises:
        ModelLoadError: a size field that is not a non-negative integer, more layers than MAX_LAYERS, a config that
            implies far more parameters than the weights beside it hold (or than MAX_PARAMETERS when none are
            there), a `max_seq_length` that is not a positive integer or null; each naming the file and field.
    """
    for path, config in configs.items():
        if path.name == "sentence_bert_config.json":
            check_max_seq_length(config, path)
        elif path.name == "config.json" and isinstance(config, dict):
            implied = parameter_estimate(config, path)
            if implied is not None:
                index = configs.get(path.with_name("model.safetensors.index.json"))
                _check_against_weights(implied, weight_bytes(path.parent, index), path)


def check_max_seq_length(config: Any, path: Path) -> None:
    """`max_seq_length` of a sentence_bert_config.json: absent, null or a positive integer.

    Raises:
        ModelLoadError
    """
    value = config.get("max_seq_length") if isinstance(config, dict) else None
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ModelLoadError(f"{path} sets max_seq_length to {json.dumps(value)[:40]}; expected a positive integer "
                             "(or null for the tokenizer's own limit). Fix the file, or save the model again.")


def parameter_estimate(config: dict[str, Any], path: Path) -> int | None:
    """A lower bound of the parameters a transformers `config` makes transformers allocate, or None when it names
    no layers and width (not a transformers model config: a Pooling or Dense module's config.json).

    Raises:
        ModelLoadError: a size field is not a non-negative integer, or there are more than MAX_LAYERS layers.
    """
    sizes = {key: _size(config, key, path) for key in SIZE_FIELDS if config.get(key) is not None}
    layers = next((sizes[k] for k in LAYERS if k in sizes), None)
    hidden = next((sizes[k] for k in HIDDEN if k in sizes), None)
    if layers is None or hidden is None:
        return None
    layers += next((sizes[k] for k in DECODER_LAYERS if k in sizes), 0)
    if layers > MAX_LAYERS:
        key = next(k for k in (*LAYERS, *DECODER_LAYERS) if k in sizes)
        raise ModelLoadError(f"{path} asks for {layers} layers ({key}), more than the {MAX_LAYERS} any real model "
                             "has; the file is corrupt or not a model's configuration.")
    distinct = min(layers, next((sizes[k] for k in GROUPS if k in sizes), layers))
    inner = next((sizes[k] for k in INNER if k in sizes), 4 * hidden)
    token_width = next((sizes[k] for k in EMBEDDING if k in sizes), hidden)
    vocab = next((sizes[k] for k in VOCAB if k in sizes), 0)
    positions = next((sizes[k] for k in POSITIONS if k in sizes), 0)
    return distinct * (2 * hidden * hidden + 2 * hidden * inner) + vocab * token_width + positions * hidden


def weight_bytes(folder: Path, index: Any = None) -> int:
    """Bytes of the weights stored in `folder` itself (its weight files, or the total a shard index records when
    the shards are not there, as in the JSON-only snapshot of a Hub model)."""
    stored = 0
    for entry in os.scandir(folder):
        if entry.name.endswith(WEIGHT_SUFFIXES) and entry.is_file():
            stored += entry.stat().st_size
    total = index.get("metadata", {}).get("total_size") if isinstance(index, dict) and isinstance(
        index.get("metadata"), dict) else None
    if isinstance(total, int) and not isinstance(total, bool) and total > 0:
        stored = max(stored, total)
    return stored


def _check_against_weights(implied: int, stored: int, path: Path) -> None:
    limit = PARAMETERS_PER_BYTE * stored if stored else MAX_PARAMETERS
    if implied > limit:
        against = (f"the {stored} bytes of weights beside it hold at most {limit}" if stored
                   else f"the most st-export allocates without weights to compare is {MAX_PARAMETERS}")
        raise ModelLoadError(f"{path} implies at least {implied:.3g} parameters (layers x width), but {against}; the "
                             "config does not describe these weights (corrupt or edited). Fix the file, or download "
                             "or save the model again.")


def _size(config: dict[str, Any], key: str, path: Path) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 \
            or value != int(value):
        raise ModelLoadError(f"{path} sets {key} to {json.dumps(value)[:40]}; expected a non-negative integer. Fix "
                             "the file, or download or save the model again.")
    return int(value)
