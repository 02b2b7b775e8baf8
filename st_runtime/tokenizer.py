"""Texts to graph inputs with the `tokenizers` library, configured from the manifest (never from the
padding/truncation settings stored in tokenizer.json, which often differ from what the model used)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from st_runtime.errors import ModelFileError, UncutTextError
from st_runtime.long_texts import LongTextCutter, first_budget
from st_runtime.manifest import TokenizerSpec, folder_file
from st_runtime.truncation import Templates, encode_truncated

Feeds = dict[str, np.ndarray]
TOKENIZE_PIECE = 4096  # texts per tokenizers call in `TextTokenizer.tokenize`


class TokenizedTexts:
    """Texts tokenized once, without padding, to be cut into padded batches in any order. The ids of all texts are
    kept in one flat int32 array (the type ids in one int8 array), so a large corpus costs 5 bytes per token."""

    def __init__(self, ids: np.ndarray, type_ids: np.ndarray, lengths: np.ndarray, spec: TokenizerSpec) -> None:
        self._ids, self._type_ids, self._spec = ids, type_ids, spec
        self.lengths = lengths
        self._starts = np.concatenate(([0], np.cumsum(lengths)[:-1])) if len(lengths) else lengths

    def batch(self, index: Sequence[int] | np.ndarray) -> Feeds:
        """The texts at `index`, padded to the longest of them as the source model pads (int64 graph inputs)."""
        width = int(self.lengths[index].max()) if len(index) else 0
        ids = np.full((len(index), width), self._spec.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(index), width), dtype=np.int64)
        type_ids = np.zeros((len(index), width), dtype=np.int64)
        left = self._spec.padding_side == "left"
        for row, i in enumerate(index):
            start, length = int(self._starts[i]), int(self.lengths[i])
            span = slice(width - length, width) if left else slice(0, length)
            ids[row, span] = self._ids[start : start + length]
            mask[row, span] = 1
            type_ids[row, span] = self._type_ids[start : start + length]
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": type_ids}


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
        self._prompt_lengths: dict[str, int] = {}
        self._cutter = LongTextCutter(self._tokenizer)  # long texts cut before tokenizing, same tokens
        self._templates: Templates | bool | None = False  # read on the first long text (False: not yet)

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

    def encode(self, texts: Sequence[str] | Sequence[tuple[str, str]]) -> Feeds:
        """Tokenize a batch of texts (or text pairs) into int64 arrays of shape (batch, longest)."""
        return self.tokenize(texts).batch(np.arange(len(texts)))

    def tokenize(self, texts: Sequence[str] | Sequence[tuple[str, str]]) -> TokenizedTexts:
        """Tokenize texts (or text pairs) without padding, in pieces so that only compact int32 ids stay in memory."""
        ids: list[np.ndarray] = []
        type_ids: list[np.ndarray] = []
        lengths: list[np.ndarray] = []
        for encodings in self._encoded_pieces(texts):
            id_lists = [e.ids for e in encodings]  # each `e.ids` builds a new Python list: read it once
            counts = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
            total = int(counts.sum())
            ids.append(np.fromiter(chain.from_iterable(id_lists), dtype=np.int32, count=total))
            type_ids.append(np.fromiter(chain.from_iterable(e.type_ids for e in encodings), dtype=np.int8, count=total))
            lengths.append(counts)
        return TokenizedTexts(_joined(ids, np.int32), _joined(type_ids, np.int8), _joined(lengths, np.int64), self.spec)

    def token_counts(self, texts: Sequence[str] | Sequence[tuple[str, str]], *,
                     max_uncut_chars: int | None = None) -> np.ndarray:
        """Tokens per text (or pair) as `tokenize` counts them (special tokens included, after truncation), without
        keeping the ids.

        Args:
            max_uncut_chars: refuse (`UncutTextError`, naming the first text past it) texts whose sides that must be
                tokenized whole, as no exact cut was found in them (a run without any space or punctuation the
                tokenizer splits at, or a model that is never truncated), hold more characters together than this:
                a bound on a server's cost per request. None: no bound.
        """
        counts = [np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(encodings))
                  for encodings in self._encoded_pieces(texts, max_uncut_chars)]
        return _joined(counts, np.int64)

    def _encoded_pieces(self, texts: Sequence[str] | Sequence[tuple[str, str]],
                        max_uncut_chars: int | None = None) -> Iterator[list[Any]]:
        """Encodings (`.ids`, `.type_ids`, `len`) of TOKENIZE_PIECE texts at a time, truncated. Long texts are cut
        first (same tokens), and those still long after the cut are truncated on their ids (`st_runtime.truncation`:
        linear cost, where `tokenizers` is quadratic on a long pair)."""
        tokenizer = self._tokenizer  # one configuration for the whole call, even if set_max_seq_length runs meanwhile
        truncation = tokenizer.truncation
        uncut = _UncutBound(max_uncut_chars)
        for start in range(0, len(texts), TOKENIZE_PIECE):
            piece = list(texts[start : start + TOKENIZE_PIECE])
            if truncation is None or truncation["stride"]:
                uncut.check(piece, start, 0)
                yield tokenizer.encode_batch_fast(piece, add_special_tokens=True)  # no character offsets
                continue
            max_length, direction = truncation["max_length"], truncation["direction"]
            piece = self._cutter.cut(piece, max_length, direction)
            budget = first_budget(max_length)
            uncut.check(piece, start, budget)
            long = [i for i, item in enumerate(piece) if _longest_side(item) > budget]
            templates = self._long_templates() if long else None
            if templates is None:
                yield tokenizer.encode_batch_fast(piece, add_special_tokens=True)
                continue
            short = [i for i, item in enumerate(piece) if _longest_side(item) <= budget]
            encodings: list[Any] = [None] * len(piece)
            for i, encoding in zip(short, tokenizer.encode_batch_fast([piece[i] for i in short],
                                                                        add_special_tokens=True), strict=True):
                encodings[i] = encoding
            truncated = encode_truncated(self._cutter.counter, templates, [piece[i] for i in long], max_length,
                                         direction)
            for i, encoding in zip(long, truncated, strict=True):
                encodings[i] = encoding
            yield encodings

    def _long_templates(self) -> Templates | None:
        """The special-token templates for truncating long texts on their ids (None: this tokenizer's post-processor
        has none, and `tokenizers` truncates them)."""
        if self._templates is False:  # two threads may both read them: harmless, they are equal
            self._templates = Templates.of(self._cutter.counter)
        return self._templates  # type: ignore[return-value]

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


class _UncutBound:
    """Adds up the characters of texts tokenized whole in one call (sides longer than the cut's budget) and refuses
    them past a bound."""

    def __init__(self, limit: int | None) -> None:
        self.limit, self.total = limit, 0

    def check(self, items: list[Any], offset: int, budget: int) -> None:
        if self.limit is None:
            return
        for i, item in enumerate(items):
            for side in (item,) if isinstance(item, str) else item:
                if len(side) > budget:
                    self.total += len(side)
            if self.total > self.limit:
                raise UncutTextError(
                    f"input {offset + i} holds text that must be tokenized whole (no space or punctuation this model's "
                    f"tokenizer splits at, in {len(max(item, key=len) if not isinstance(item, str) else item)} "
                    f"characters), and the request's such text exceeds {self.limit} characters: split or shorten it",
                    offset + i)


def _longest_side(item: str | tuple[str, str]) -> int:
    return len(item) if isinstance(item, str) else max(len(item[0]), len(item[1]))


def _joined(pieces: list[np.ndarray], dtype: type) -> np.ndarray:
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces) if pieces else np.zeros(0, dtype)
