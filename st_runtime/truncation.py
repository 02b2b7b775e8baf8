"""Truncation and special tokens done on token ids, so that a long text (or pair) costs time and memory linear in its
length.

`tokenizers` truncates by splitting the rest of a text into "overflowing" encodings, and for a pair it merges every
overflowing part of one side with every part of the other: a pair of two long texts costs time and memory quadratic
in their length (two 20 000-character texts without a safe cut: 1.9 GB; 40 000: 6.8 GB and an abort). Here each side is
tokenized alone without truncation or special tokens, cut to the lengths `tokenizers`' longest-first strategy keeps,
and wrapped in the special tokens of the tokenizer's own post-processor, read once from a probe and checked against
`tokenizers` on probe texts. The result is the same ids and type ids, without building the overflowing parts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

# Probes the template is read from and checked on: different lengths on each side, so a template that depends on them
# (none of the post-processors `tokenizers` has does) is caught.
_PROBES = (("a", "b"), ("hello world", "x"), ("one", "two three four five"))


@dataclass(frozen=True)
class Segment:
    """One part of a template: a special token (`token` set) or the tokens of text `sequence` (0 or 1)."""

    type_id: int
    token: int | None = None
    sequence: int | None = None


@dataclass(frozen=True)
class Encoded:
    """Ids and type ids of one text or pair, special tokens included (what the runtime reads of an encoding)."""

    ids: Sequence[int]
    type_ids: Sequence[int]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Templates:
    """Where a tokenizer's post-processor puts special tokens, for a single text and for a pair."""

    single: tuple[Segment, ...]
    pair: tuple[Segment, ...]

    @classmethod
    def of(cls, counter: Tokenizer) -> Templates | None:
        """The templates of `counter`, a tokenizer without truncation or padding (None when its post-processor cannot
        be written as one, which is then left to `tokenizers`)."""
        try:
            templates = cls(_template(counter.encode("a", add_special_tokens=True)),
                            _template(counter.encode(*_PROBES[0], add_special_tokens=True)))
        except ValueError:
            return None
        for a, b in _PROBES:
            for probe in ((a,), (a, b)):
                expected = counter.encode(*probe, add_special_tokens=True)
                sides = [counter.encode(text, add_special_tokens=False) for text in probe]
                got = templates.apply([side.ids for side in sides])
                if (got.ids, got.type_ids) != (expected.ids, expected.type_ids):
                    return None
        return templates

    def apply(self, ids: list[list[int]]) -> Encoded:
        """One or two token sequences wrapped in special tokens, with the type ids the template gives them."""
        out_ids: list[int] = []
        out_types: list[int] = []
        for segment in self.single if len(ids) == 1 else self.pair:
            if segment.token is not None:
                out_ids.append(segment.token)
                out_types.append(segment.type_id)
            else:
                tokens = ids[segment.sequence or 0]
                out_ids += tokens
                out_types += [segment.type_id] * len(tokens)
        return Encoded(out_ids, out_types)

    @property
    def added(self) -> tuple[int, int]:
        """Special tokens added to a single text and to a pair."""
        return (sum(s.token is not None for s in self.single), sum(s.token is not None for s in self.pair))


def truncated_lengths(lengths: list[int], room: int) -> list[int]:
    """How many tokens of each text `tokenizers`' longest-first truncation keeps, `room` being max_length less the
    special tokens (its `truncate_encodings`, utils/truncation.rs)."""
    if len(lengths) == 1:
        return [min(lengths[0], room)]
    n1, n2 = lengths
    if n1 + n2 <= room:
        return [n1, n2]
    swap = n1 > n2
    if swap:
        n1, n2 = n2, n1
    n2 = n1 if n1 > room else max(n1, room - n1)
    if n1 + n2 > room:
        n1 = room // 2
        n2 = n1 + room % 2
    return [n2, n1] if swap else [n1, n2]


def encode_truncated(counter: Tokenizer, templates: Templates, texts: list[str] | list[tuple[str, str]],
                     max_length: int, direction: str) -> list[Encoded]:
    """Each text (or pair) tokenized and truncated to `max_length` tokens as `tokenizers` would (longest first, on the
    `direction` side), special tokens added; `counter` tokenizes without truncation or padding."""
    pairs = bool(texts) and not isinstance(texts[0], str)
    sides = [list(item) if pairs else [item] for item in texts]
    unique = list(dict.fromkeys(text for item in sides for text in item))  # one long query in many pairs: once
    ids_of = {text: encoding.ids for text, encoding in zip(unique, counter.encode_batch_fast(
        unique, add_special_tokens=False), strict=True)}
    room = max_length - templates.added[1 if pairs else 0]
    out = []
    for item in sides:
        ids = [ids_of[text] for text in item]
        keep = truncated_lengths([len(i) for i in ids], max(room, 0))
        if direction == "right":
            ids = [i[:n] for i, n in zip(ids, keep, strict=True)]
        else:
            ids = [i[len(i) - n :] for i, n in zip(ids, keep, strict=True)]
        out.append(templates.apply(ids))
    return out


def _template(encoding: object) -> tuple[Segment, ...]:
    """The segments of a probe encoding: its special tokens, and one segment per run of a text's tokens."""
    segments: list[Segment] = []
    ids, type_ids = encoding.ids, encoding.type_ids  # type: ignore[attr-defined]
    sequence_ids = encoding.sequence_ids  # type: ignore[attr-defined]
    for token, type_id, sequence in zip(ids, type_ids, sequence_ids, strict=True):
        if sequence is None:
            segments.append(Segment(type_id, token=token))
        elif segments and segments[-1].sequence == sequence:
            if segments[-1].type_id != type_id:
                raise ValueError("a text's tokens have different type ids")
        else:
            segments.append(Segment(type_id, sequence=sequence))
    if sorted(s.sequence for s in segments if s.sequence is not None) != sorted(set(
            s for s in sequence_ids if s is not None)):
        raise ValueError("a text's tokens are not in one run")
    return tuple(segments)
