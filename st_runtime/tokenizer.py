"""Texts to graph inputs with the `tokenizers` library, configured from the manifest (never from the
padding/truncation settings stored in tokenizer.json, which often differ from what the model used)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from st_runtime.errors import ModelFileError, UncutTextError
from st_runtime.long_texts import LongTextCutter, first_budget
from st_runtime.manifest import TokenizerSpec, folder_file
from st_runtime.truncation import Encoded, Templates, encode_truncated

Feeds = dict[str, np.ndarray]
TOKENIZE_PIECE = 4096  # texts per tokenizers call in `TextTokenizer.tokenize`
KEEP_TEXTS = 8192  # encodings `TextTokenizer.token_counts(keep=True)` holds for the next `tokenize` of the same texts


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
        self._kept = _KeptEncodings()

    @property
    def vocab_size(self) -> int:
        """Tokens of the vocabulary, added tokens included (ids run from 0 to vocab_size - 1)."""
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

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
            if encodings and all(isinstance(e, Encoded) and isinstance(e.ids, np.ndarray) for e in encodings):
                # held by token_counts(keep=True): already compact arrays
                lengths.append(np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings)))
                ids.append(np.concatenate([e.ids for e in encodings]).astype(np.int32, copy=False))
                type_ids.append(np.concatenate([e.type_ids for e in encodings]).astype(np.int8, copy=False))
                continue
            id_lists = [e.ids for e in encodings]  # each `e.ids` builds a new Python list: read it once
            counts = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
            total = int(counts.sum())
            ids.append(np.fromiter(chain.from_iterable(id_lists), dtype=np.int32, count=total))
            type_ids.append(np.fromiter(chain.from_iterable(e.type_ids for e in encodings), dtype=np.int8, count=total))
            lengths.append(counts)
        return TokenizedTexts(_joined(ids, np.int32), _joined(type_ids, np.int8), _joined(lengths, np.int64), self.spec)

    def token_counts(self, texts: Sequence[str] | Sequence[tuple[str, str]], *,
                     max_uncut_chars: int | None = None, keep: bool = False) -> np.ndarray:
        """Tokens per text (or pair) as `tokenize` counts them (special tokens included, after truncation).

        Args:
            max_uncut_chars: refuse (`UncutTextError`, naming the first text past it) texts whose sides that must be
                tokenized whole, as no exact cut was found in them (a run without any space or punctuation the
                tokenizer splits at, or a model that is never truncated), hold more characters together than this:
                a bound on a server's cost per request. None: no bound.
            keep: hold the ids for the next `tokenize` of the same texts, so that a server that counts a request
                when it arrives and encodes it later tokenizes it once (at most KEEP_TEXTS texts, oldest dropped).
        """
        counts = [np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(encodings))
                  for encodings in self._encoded_pieces(texts, max_uncut_chars, keep=keep)]
        return _joined(counts, np.int64)

    def _encoded_pieces(self, texts: Sequence[str] | Sequence[tuple[str, str]], max_uncut_chars: int | None = None,
                        keep: bool = False) -> Iterator[list[Any]]:
        """Encodings (`.ids`, `.type_ids`, `len`) of TOKENIZE_PIECE texts at a time, truncated. With `keep` they are
        held for the next call without it, which takes them instead of tokenizing again. Long texts are cut first
        (same tokens), and those still long after the cut are truncated on their ids (`st_runtime.truncation`: linear
        cost, where `tokenizers` is quadratic on a long pair)."""
        tokenizer = self._tokenizer  # one configuration for the whole call, even if set_max_seq_length runs meanwhile
        truncation = tokenizer.truncation
        setting = None if truncation is None else (truncation["max_length"], truncation["direction"])
        uncut = _UncutBound(max_uncut_chars)
        for start in range(0, len(texts), TOKENIZE_PIECE):
            piece = list(texts[start : start + TOKENIZE_PIECE])
            if keep:
                encodings = self._encode(piece, tokenizer, uncut, start)
                self._kept.put([(setting, item) for item in piece], encodings)
                yield encodings
                continue
            held = self._kept.take([(setting, item) for item in piece]) if self._kept else None
            if held is None:
                yield self._encode(piece, tokenizer, uncut, start)
                continue
            missing = [i for i, encoding in enumerate(held) if encoding is None]
            if missing:
                for i, encoding in zip(missing, self._encode([piece[i] for i in missing], tokenizer, uncut, start),
                                       strict=True):
                    held[i] = encoding
            yield held

    def _encode(self, piece: list[Any], tokenizer: Tokenizer, uncut: _UncutBound, start: int) -> list[Any]:
        """Encodings of `piece` (its first text being text `start` of the call, for error messages)."""
        truncation = tokenizer.truncation
        if truncation is None or truncation["stride"]:
            uncut.check(piece, start, 0)
            return tokenizer.encode_batch_fast(piece, add_special_tokens=True)  # no character offsets
        max_length, direction = truncation["max_length"], truncation["direction"]
        piece = self._cutter.cut(piece, max_length, direction)
        budget = first_budget(max_length)
        uncut.check(piece, start, budget)
        long = [_longest_side(item) > budget for item in piece]
        templates = self._long_templates() if any(long) else None
        if templates is None:
            return tokenizer.encode_batch_fast(piece, add_special_tokens=True)
        encodings = iter(tokenizer.encode_batch_fast([t for t, is_long in zip(piece, long, strict=True) if not is_long],
                                                     add_special_tokens=True))
        truncated = iter(encode_truncated(self._cutter.counter, templates,
                                          [t for t, is_long in zip(piece, long, strict=True) if is_long], max_length,
                                          direction))
        return [next(truncated) if is_long else next(encodings) for is_long in long]

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


class _KeptEncodings:
    """Encodings `token_counts(keep=True)` counted, held for the next `tokenize` of the same text under the same
    truncation (as compact arrays; at most KEEP_TEXTS, the oldest dropped first). Thread-safe."""

    def __init__(self) -> None:
        self._entries: OrderedDict[Hashable, Encoded] = OrderedDict()
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._entries)

    def put(self, keys: list[Hashable], encodings: list[Any]) -> None:
        held = [Encoded(np.asarray(e.ids, dtype=np.int32), np.asarray(e.type_ids, dtype=np.int8)) for e in encodings]
        with self._lock:
            for key, encoding in zip(keys, held, strict=True):
                self._entries[key] = encoding
                self._entries.move_to_end(key)
            while len(self._entries) > KEEP_TEXTS:
                self._entries.popitem(last=False)

    def take(self, keys: list[Hashable]) -> list[Any]:
        """The held encoding of each key (None where there is none), no longer held."""
        with self._lock:
            return [self._entries.pop(key, None) for key in keys]


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
