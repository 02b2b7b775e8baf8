"""Whether a Transformer module's tokenizer belongs to its model, checked before its tokenizer.json is written.

A source without a usable tokenizer.json (missing, a dangling link, a folder) still loads: transformers 5 then builds
a BERT tokenizer of 5 tokens from `vocab_file`, which maps every word to [UNK], and the parity gate passes because
sentence-transformers runs the same broken tokenizer. So the tokenizer is compared with the model and with the
tokenizer files the model folder ships: its vocabulary (added tokens included) must fit the input embedding matrix
and fill at least half of it (padded matrices are common: 151669 tokens for Qwen3's 151936 rows), and the probe
texts may give no more unknown tokens than the folder's own files give, nor more unknown than known tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from exporters.errors import ModelLoadError
from exporters.parity import PROBE_TEXTS
from exporters.preflight import MAX_JSON_BYTES, regular_file

WORDPIECE_VOCAB = "vocab.txt"
FIX = ("Put the model's own tokenizer.json (a regular file) in its folder; transformers 4 writes one with "
       "AutoTokenizer.from_pretrained(folder).save_pretrained(folder). Nothing was written.")


def check_tokenizer_matches(where: str, module: Any) -> None:
    """Refuse a Transformer module (`where` names it: "Module 0 (Transformer)") whose tokenizer does not match its
    model: more tokens than input embedding rows, fewer than half of them, more unknown tokens on the probe texts than
    the tokenizer files of the module's folder give, or more unknown than known tokens.

    Raises:
        ModelLoadError: naming the counts and what to do.
    """
    tokenizer = module.tokenizer
    size, rows = len(tokenizer), embedding_rows(module.auto_model)
    if rows is not None and not rows / 2 <= size <= rows:
        relation = "more than" if size > rows else "fewer than half of"
        raise ModelLoadError(f"{where}: its tokenizer has {size} tokens, {relation} the {rows} rows of the model's "
                             "input embedding, so it is not this model's tokenizer (transformers builds a 5-token "
                             f"vocabulary when tokenizer.json is missing or unreadable). {FIX}")
    unknown, known = unknown_tokens(tokenizer.backend_tokenizer, tokenizer.unk_token_id)
    if unknown > known:
        raise ModelLoadError(f"{where}: its tokenizer maps {unknown} of the {unknown + known} tokens of the probe "
                             f"texts to the unknown token {tokenizer.unk_token!r}, so it is not this model's "
                             f"tokenizer. {FIX}")
    folder = Path(str(tokenizer.name_or_path or ""))
    reference = shipped_tokenizer(folder) if folder.is_dir() else None
    if reference is not None:
        expected = unknown_tokens(reference, reference.token_to_id(str(tokenizer.unk_token)))[0]
        if unknown > expected:
            raise ModelLoadError(f"{where}: its tokenizer maps {unknown} tokens of the probe texts to "
                                 f"{tokenizer.unk_token!r}, but the tokenizer files of {folder} give {expected}: "
                                 f"transformers did not load the tokenizer the model ships. {FIX}")


def embedding_rows(model: Any) -> int | None:
    """Rows of a transformers model's input (token) embedding, or None when it has none that can be read."""
    try:
        embedding = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    weight = getattr(embedding, "weight", None)
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def unknown_tokens(tokenizer: Tokenizer, unk_id: int | None) -> tuple[int, int]:
    """How many tokens of the probe texts (no special tokens, no truncation or padding) are `unk_id`, and how many
    are not."""
    if unk_id is None:
        return 0, 0
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_truncation()
    copy.no_padding()
    ids = [i for encoding in copy.encode_batch(list(PROBE_TEXTS), add_special_tokens=False) for i in encoding.ids]
    unknown = sum(i == unk_id for i in ids)
    return unknown, len(ids) - unknown


def shipped_tokenizer(folder: Path) -> Tokenizer | None:
    """The tokenizer the files of `folder` describe, loaded with `tokenizers` itself: its tokenizer.json, else a
    WordPiece vocab.txt with tokenizer_config.json's lower-casing and accents; None when neither is there (or
    readable: the preflight names broken files)."""
    try:
        if (folder / "tokenizer.json").exists():
            regular_file(folder / "tokenizer.json", MAX_JSON_BYTES)
            return Tokenizer.from_file(str(folder / "tokenizer.json"))
        if (folder / WORDPIECE_VOCAB).exists():
            regular_file(folder / WORDPIECE_VOCAB, MAX_JSON_BYTES)
            return _wordpiece(folder)
    except Exception:  # ModelLoadError, OSError; tokenizers raises bare Exceptions for a corrupt file
        return None
    return None


def _wordpiece(folder: Path) -> Tokenizer:
    from tokenizers.implementations import BertWordPieceTokenizer

    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    config = config if isinstance(config, dict) else {}
    unk = config.get("unk_token") or "[UNK]"
    wordpiece = BertWordPieceTokenizer(
        str(folder / WORDPIECE_VOCAB), unk_token=str(unk.get("content", "[UNK]") if isinstance(unk, dict) else unk),
        lowercase=config.get("do_lower_case", True) is not False, strip_accents=config.get("strip_accents"),
        handle_chinese_chars=config.get("tokenize_chinese_chars", True) is not False)
    return Tokenizer.from_str(wordpiece.to_str())
