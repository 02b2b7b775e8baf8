"""Texts to graph inputs with the `tokenizers` library, configured from the manifest (never from the
padding/truncation settings stored in tokenizer.json, which often differ from what the model used)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from st_runtime.errors import ModelFileError
from st_runtime.long_texts import LongTextCutter
from st_runtime.manifest import TokenizerSpec, folder_file

Feeds = dict[str, np.ndarray]


class TextTokenizer:
    """Pads to the longest text of a batch and truncates at `max_seq_length` (when set), as sentence-transformers does.

    Thread-safe: `encode` only reads the configuration; `set_max_seq_length` swaps in a reconfigured copy, so a call
    already running keeps the settings it started with.
    """

    def __init__(self, folder: str | Path, spec: TokenizerSpec) -> None:
        self.spec = spec
        path = folder_file(folder, spec.file, entry="tokenizer.file")  # inside the folder, a regular file
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for a file it cannot parse
            raise ModelFileError(f"tokenizers could not load {spec.file} ({exc}): the file is corrupt or not a "
                                 "tokenizer.json. Re-export the model.") from exc
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        if spec.max_seq_length is not None:  # None: the source model never truncates (StaticEmbedding)
            self._tokenizer.enable_truncation(
                max_length=spec.max_seq_length, strategy="longest_first", direction=spec.truncation_side
            )
        self._tokenizer.enable_padding(
            direction=spec.padding_side, pad_id=spec.pad_token_id, pad_token=spec.pad_token, pad_type_id=0
        )
        self._prompt_lengths: dict[str, int] = {}
        self._cutter = LongTextCutter(self._tokenizer)  # long texts cut before tokenizing, same tokens

    @property
    def max_seq_length(self) -> int | None:
        """Texts are truncated to this many tokens (None: never truncated)."""
        truncation = self._tokenizer.truncation
        return None if truncation is None else int(truncation["max_length"])

    def set_max_seq_length(self, max_seq_length: int) -> None:
        """Truncate the texts of later `encode` calls at `max_seq_length` tokens (callers check the value against
        the graph's limit)."""
        tokenizer = Tokenizer.from_str(self._tokenizer.to_str())
        tokenizer.enable_truncation(max_length=max_seq_length, strategy="longest_first",
                                    direction=self.spec.truncation_side)
        self._tokenizer, self._prompt_lengths = tokenizer, {}

    def encode(self, texts: list[str] | list[tuple[str, str]]) -> Feeds:
        """Tokenize a batch of texts (or text pairs) into int64 arrays of shape (batch, longest)."""
        tokenizer = self._tokenizer  # one configuration for the whole call, even if set_max_seq_length runs meanwhile
        truncation = tokenizer.truncation
        if truncation is not None and not truncation["stride"]:
            texts = self._cutter.cut(texts, truncation["max_length"], truncation["direction"])
        encodings = tokenizer.encode_batch(texts, add_special_tokens=True)
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }

    def prompt_length(self, prompt: str) -> int:
        """Number of leading tokens a prompt occupies, as sentence-transformers counts them.

        The prompt is tokenized with special tokens; a trailing special token (SEP/EOS) is not counted.
        """
        if prompt not in self._prompt_lengths:
            encoding = self._tokenizer.encode(prompt, add_special_tokens=True)
            length = len(encoding.ids)
            if length and encoding.special_tokens_mask[-1]:
                length -= 1
            self._prompt_lengths[prompt] = length
        return self._prompt_lengths[prompt]
