"""Cut texts far past `max_seq_length` before tokenizing them, without changing a single token the model sees.

The `tokenizers` library normalizes and tokenizes a whole text before it truncates, and truncates a pair of long texts
in time (and memory) quadratic in their length: a pair of two 320 KB texts takes about a minute, a 1 MB pair does not
finish. sentence-transformers tokenizes the same way, so its results are the reference; this module makes long texts
cheap while keeping them.

There is no safe characters-per-token bound to cut at: a WordPiece word longer than `max_input_chars_per_word` is one
`[UNK]` however long it is, and normalizers delete characters (control characters, accents). So a text is cut only at
a *boundary*, a position that no pre-token spans (a space; for BERT's pre-tokenizer also ASCII punctuation and, when the
normalizer isolates them, CJK ideographs), and the cut is checked by tokenizing what is kept:

- Cut at a boundary, the tokens of the kept part are exactly the tokens of the whole text on that side: the normalizers
  accepted here work character by character (or per grapheme, or compose only combining marks), every pre-tokenizer
  accepted here splits at the boundary, and every model tokenizes each pre-token on its own; added tokens that could
  span the boundary rule its character out.
- The kept part must still hold at least `max_length` tokens (special tokens not counted), else the cut moves further
  out, up to keeping the whole text. Truncation then keeps the same tokens: one text keeps its first (or last)
  `max_length - specials` tokens. Longest-first truncation of a pair depends on min(n, max_length) of each side's token
  count n, and on one thing more: when both sides are longer than half the room, the odd token of an odd room goes to
  the longer side (the second on a tie). So when that can matter, the cut also keeps which side is longer: a side that
  was not cut is counted (it is short), and when both were cut, their counts are compared by counting growing parts of
  both only until one of them ends (linear time; two different megabyte texts take a few seconds, still far from the
  quadratic minutes of the uncut pair).

A tokenizer.json with any other normalizer, pre-tokenizer or model (e.g. a Split regex, or no pre-tokenizer, as in
byte-level BPE over the whole text) is never cut: its texts are tokenized whole, as before.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from tokenizers import Tokenizer

ASCII_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
# BertNormalizer's handle_chinese_chars surrounds these with spaces (tokenizers' normalizers/bert.rs).
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
              (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
BERT_WHITESPACE = " \t\n\r"  # whitespace to BertPreTokenizer before and after BertNormalizer's clean_text
# Before a space cut for other pre-tokenizers: a letter, digit or ASCII punctuation, which no normalizer accepted here
# turns into whitespace (so the kept part never ends in a whitespace run that, whole, would be split differently) ...
_WORD_BEFORE = r"(?<=[\w!-/:-@\[-`{-~])"
# ... and that is not a grapheme "Prepend" letter, which a Precompiled normalizer would read together with the space.
_NO_PREPEND_BEFORE = r"(?<![\u0d4e\U000111c2\U000111c3\U0001193f\U00011941\U00011a3a\U00011a84-\U00011a89\U00011d46])"

_CHAR_LOCAL_NORMALIZERS = {"BertNormalizer", "NFD", "NFKD", "NFC", "NFKC", "Lowercase", "StripAccents", "Nmt",
                           "Precompiled"}
_SPLITTING_PRE_TOKENIZERS = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit", "ByteLevel", "Metaspace"}
_PER_SPLIT_PRE_TOKENIZERS = _SPLITTING_PRE_TOKENIZERS | {"Digits", "Punctuation", "UnicodeScripts"}
_PER_WORD_MODELS = {"WordPiece", "BPE", "WordLevel", "Unigram"}

FIRST_BUDGET_CHARS_PER_TOKEN = 8  # a first guess only (English WordPiece: ~5); too small costs one more try
BUDGET_GROWTH = 4


@dataclass(frozen=True)
class CutRule:
    """Where texts of one tokenizer may be cut, per truncation side: a pattern that matches (at position c) the first
    character after a cut at c (the kept part is text[:c] when truncating on the right, text[c:] on the left); None:
    never cut on that side."""

    right: re.Pattern[str] | None
    left: re.Pattern[str] | None


def cut_rule(config: dict[str, Any], tokenizer: Tokenizer | None = None) -> CutRule:
    """The boundaries of a tokenizer.json (parsed), or a rule that never cuts when no boundary is known to be safe.

    Given the `tokenizer` itself, the rule also holds the boundaries that are checked on it: Unicode whitespace and
    punctuation for BERT's pre-tokenizer, punctuation after a letter for the regex pre-tokenizers of byte-level BPE,
    and spaces for SentencePiece-style BPE without a pre-tokenizer (Llama, Mistral) when no token of its vocabulary
    joins a word to the space after it.
    """
    never = CutRule(None, None)
    model = config.get("model") or {}
    if model.get("type") not in _PER_WORD_MODELS or model.get("dropout"):
        return never
    pre_steps = _steps(config.get("pre_tokenizer"), "pretokenizers")
    if _sentencepiece_bpe(config, pre_steps):
        return _sentencepiece_rule(config, tokenizer) if tokenizer is not None else never
    if not pre_steps or not _splits_at_spaces(pre_steps[0]):
        return never
    if any(step.get("type") not in _PER_SPLIT_PRE_TOKENIZERS for step in pre_steps[1:]):
        return never
    excluded: set[str] = set()
    directions = {"right", "left"}
    kinds = set()
    precompiled = chinese_chars = False
    for step in _steps(config.get("normalizer"), "normalizers"):
        kind = step.get("type")
        kinds.add(kind)
        if kind in ("Strip", "Prepend"):  # changes only the ends of the text: the kept start (right cuts) is unchanged
            directions.discard("left")
        elif kind == "Replace":
            pattern = step.get("pattern") or {}
            if "String" in pattern:
                excluded.update(pattern["String"])  # a replaced string could span a cut, or remove a boundary
            elif not (pattern.get("Regex") == " {2,}" and step.get("content") == " "):  # XLM-R's run of spaces
                return never
        elif kind not in _CHAR_LOCAL_NORMALIZERS:
            return never
        precompiled |= kind == "Precompiled"
        chinese_chars |= kind == "BertNormalizer" and bool(step.get("handle_chinese_chars", True))
    added = config.get("added_tokens") or []
    for token in added:
        excluded.update(token.get("content", "")[1:])  # a cut inside an added token would split it
    if any(char.isspace() for char in excluded):
        excluded.update(BERT_WHITESPACE)

    if pre_steps[0].get("type") == "BertPreTokenizer" and not precompiled:
        # BertPreTokenizer drops whitespace and isolates punctuation: a cut before either is a boundary, whatever
        # precedes it; BertNormalizer isolates CJK ideographs too. Unicode whitespace and punctuation count when this
        # tokenizer's normalizer and pre-tokenizer are seen to isolate them (tokenizers' Unicode tables decide).
        unicode = _isolated_chars(tokenizer) if tokenizer is not None else ""
        chars = "".join(sorted({c for c in BERT_WHITESPACE + ASCII_PUNCTUATION + unicode if c not in excluded}))
        ranges = ""
        if chinese_chars and not any(token.get("single_word") for token in added):
            ranges = "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in CJK_RANGES)
        if not chars and not ranges:
            return never
        pattern = re.compile(f"[{re.escape(chars)}{ranges}]")
        return CutRule(right=pattern if "right" in directions else None, left=pattern if "left" in directions else None)
    if " " in excluded:
        return never
    # Other pre-tokenizers: a single space after a word character. Metaspace replaces only " ", and byte-level BPE keeps
    # whitespace runs as tokens, so other whitespace is no boundary for them.
    if any(token.get("rstrip") for token in added):
        directions.discard("left")  # an added token before the cut would swallow the space the kept part starts with
    both = [_WORD_BEFORE + (_NO_PREPEND_BEFORE if precompiled else "") + " "]  # boundaries for both sides
    right_only: list[str] = []
    if tokenizer is not None and _regex_pre_tokenizer(pre_steps[0]) and kinds <= {"NFC", "NFKC"}:
        # A regex pre-tokenizer ends a run of letters at the first character that is no letter: punctuation or a
        # symbol after a letter is a boundary (CJK, Thai or any text without spaces but with punctuation). Only
        # letters and characters that no normalizer changes, and only those this tokenizer is seen to split at.
        chars = "".join(c for c in _split_after_letter_chars(tokenizer) if c not in excluded)
        if chars:
            prefix_space = any(step.get("add_prefix_space") for step in pre_steps)  # a kept end would gain a space
            (right_only if prefix_space else both).append(f"(?<=[{_stable_letters()}])[{re.escape(chars)}]")
    if tokenizer is not None and model.get("type") == "Unigram" and pre_steps[0].get("type") == "Metaspace":
        # Inside a word: punctuation that no piece joins to what precedes it (XLM-R, T5: CJK and Thai text without
        # spaces). Right cuts only: the "▁" a kept end would gain.
        chars = "".join(c for c in _unjoined_punctuation(tokenizer) if c not in excluded)
        if chars:
            right_only.append(f"(?<=\\w){_NO_PREPEND_BEFORE}[{re.escape(chars)}]")
    right = re.compile("|".join(both + right_only)) if "right" in directions else None
    left = re.compile("|".join(both)) if "left" in directions else None
    return CutRule(right=right, left=left)


# The pre-tokenizer regexes of Qwen2/Qwen3 and of Llama 3 (Split, then ByteLevel without its own regex): runs of letters,
# single (or up to three) digits, punctuation runs, whitespace runs, as GPT-2's.
KNOWN_SPLIT_REGEXES = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+",
}


def _regex_pre_tokenizer(step: dict[str, Any]) -> bool:
    kind = step.get("type")
    if kind == "ByteLevel":
        return bool(step.get("use_regex", True))
    if kind == "Split":
        return _known_split(step)
    return kind == "Whitespace"


def _known_split(step: dict[str, Any]) -> bool:
    return (step.get("pattern") or {}).get("Regex") in KNOWN_SPLIT_REGEXES and step.get("behavior") == "Isolated" \
        and not step.get("invert")


def _sentencepiece_bpe(config: dict[str, Any], pre_steps: list[dict[str, Any]]) -> bool:
    """A BPE over whole texts whose spaces become "▁" (Llama, Mistral): no pre-tokenizer and a normalizer that
    replaces " " (or a Metaspace that does not split)."""
    if (config.get("model") or {}).get("type") != "BPE":
        return False
    if not pre_steps:
        steps = _steps(config.get("normalizer"), "normalizers")
        replaces = [s for s in steps if s.get("type") == "Replace"]
        return bool(replaces) and all(s.get("type") in ("Prepend", "Replace") for s in steps) and all(
            (s.get("pattern") or {}).get("String") == " " and s.get("content") == SPIECE for s in replaces)
    return len(pre_steps) == 1 and pre_steps[0].get("type") == "Metaspace" and not pre_steps[0].get("split", True) \
        and pre_steps[0].get("replacement") == SPIECE and config.get("normalizer") is None


SPIECE = "\u2581"  # SentencePiece's word-start mark "▁"


def _sentencepiece_rule(config: dict[str, Any], tokenizer: Tokenizer) -> CutRule:
    """A space after a character that is no space is a cut no merge can cross, when no token of the vocabulary holds
    "▁" after another character (runs of "▁" are allowed): BPE merges only into tokens of its vocabulary. Right cuts
    only: the "▁" prepended to a text's start would join a kept end."""
    for token in config.get("added_tokens") or []:
        if " " in token.get("content", "") or SPIECE in token.get("content", ""):
            return CutRule(None, None)
    for token in tokenizer.get_vocab():
        at = token.find(SPIECE, 1)
        while at > 0:
            if token[at - 1] != SPIECE:
                return CutRule(None, None)
            at = token.find(SPIECE, at + 1)
    return CutRule(right=re.compile(f"(?<=[^ {SPIECE}]) "), left=None)


def _probe_splits(tokenizer: Tokenizer, text: str) -> bool:
    """Whether `tokenizer`'s normalizer and pre-tokenizer make "a" (the start of `text`) a pre-token of its own."""
    normalized = tokenizer.normalizer.normalize_str(text) if tokenizer.normalizer is not None else text
    pieces = tokenizer.pre_tokenizer.pre_tokenize_str(normalized) if tokenizer.pre_tokenizer is not None else []
    return len(pieces) >= 2 and pieces[0][0] == "a"


def _isolated_chars(tokenizer: Tokenizer) -> str:
    """Unicode whitespace and punctuation (of the Basic Multilingual Plane) that this BERT-style tokenizer splits at:
    "a" + c + "a" pre-tokenizes to "a" first, and BertPreTokenizer decides per character."""
    return "".join(c for c in _unicode_candidates("Zs") + _unicode_candidates("P") + "\x1c\x1d\x1e\x1f\x85\u2028\u2029"
                   if _probe_splits(tokenizer, "a" + c + "a"))


def _split_after_letter_chars(tokenizer: Tokenizer) -> str:
    """Punctuation and symbols, unchanged by NFKC, that end a run of letters in this tokenizer's pre-tokenizer."""
    return "".join(c for c in _unicode_candidates("P") + _unicode_candidates("S")
                   if unicodedata.normalize("NFKC", c) == c and _probe_splits(tokenizer, "a" + c + "a"))


def _unjoined_punctuation(tokenizer: Tokenizer) -> str:
    """Punctuation that a Unigram model never joins to a preceding character: it normalizes to one character that is
    a piece of its own, and no piece holds that character after another one than "▁". No piece then spans a cut
    before it (after a word character, which no normalizer turns into a space), so the best segmentation of the whole
    word is the best of each side (Viterbi, ties included)."""
    vocab = tokenizer.get_vocab()
    joined = {piece[i] for piece in vocab for i in range(1, len(piece)) if piece[i - 1] != SPIECE}
    normalize = tokenizer.normalizer.normalize_str if tokenizer.normalizer is not None else (lambda text: text)
    chars = []
    for char in _unicode_candidates("P"):
        normal = normalize(char)
        if len(normal) == 1 and normal in vocab and normal not in joined:
            chars.append(char)
    return "".join(chars)


@functools.lru_cache(maxsize=8)
def _unicode_candidates(category: str) -> str:
    """The characters of the Basic Multilingual Plane whose general category starts with `category`."""
    return "".join(chr(i) for i in range(0x80, 0x10000) if unicodedata.category(chr(i)).startswith(category))


@functools.lru_cache(maxsize=1)
def _stable_letters() -> str:
    """A regex class of the letters of the Basic Multilingual Plane that NFC and NFKC leave as they are (a letter
    that a normalizer turns into a letter and a combining mark would join the punctuation after it)."""
    stable = [i for i in range(0x10000) if chr(i).isalpha() and unicodedata.normalize("NFKC", chr(i)) == chr(i)
              and unicodedata.normalize("NFC", chr(i)) == chr(i)]
    ranges = []
    start = previous = stable[0]
    for i in [*stable[1:], -1]:
        if i != previous + 1:
            ranges.append(re.escape(chr(start)) + ("" if start == previous else "-" + re.escape(chr(previous))))
            start = i
        previous = i
    return "".join(ranges)


def tokenizer_config(tokenizer: Tokenizer) -> dict[str, Any]:
    """What `cut_rule` reads, in tokenizer.json's form, taken from a loaded tokenizer without serializing its
    vocabulary."""

    def state(component: Any) -> dict[str, Any] | None:
        return None if component is None else json.loads(component.__getstate__())

    return {
        "normalizer": state(tokenizer.normalizer),
        "pre_tokenizer": state(tokenizer.pre_tokenizer),
        "model": {"type": type(tokenizer.model).__name__, "dropout": getattr(tokenizer.model, "dropout", None)},
        "added_tokens": [{"content": token.content, "single_word": token.single_word, "lstrip": token.lstrip,
                          "rstrip": token.rstrip} for token in tokenizer.get_added_tokens_decoder().values()],
    }


def _steps(component: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
    if component is None:
        return []
    if component.get("type") == "Sequence":
        return [step for nested in component.get(key, []) for step in _steps(nested, key)]
    return [component]


def _splits_at_spaces(step: dict[str, Any]) -> bool:
    """Whether a pre-tokenizer splits every text at every space (so a cut there splits no pre-token)."""
    kind = step.get("type")
    if kind == "ByteLevel":
        return bool(step.get("use_regex", True))  # the GPT-2 regex: no match has whitespace after a non-space
    if kind == "Metaspace":
        return bool(step.get("split", True))
    if kind == "Split":
        return _known_split(step)
    return kind in _SPLITTING_PRE_TOKENIZERS


class LongTextCutter:
    """Cuts the texts of a batch that are far past `max_length` tokens at a boundary (see the module docstring), so
    that tokenizing them costs about as much as tokenizing `max_length` tokens and gives the same encodings.

    Thread-safe: it only reads its rule and tokenizes with its own copy of the tokenizer.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._rule: CutRule | None = None  # read on the first long text (the Unicode checks take tens of ms)
        self._counter: Tokenizer | None = None  # counts tokens (no truncation, no padding); made on first use
        self._pair_specials = tokenizer.num_special_tokens_to_add(is_pair=True)

    @property
    def rule(self) -> CutRule:
        """Where this tokenizer's texts may be cut."""
        if self._rule is None:  # two threads may both read it: harmless, they are equal
            self._rule = cut_rule(tokenizer_config(self._tokenizer), self._tokenizer)
        return self._rule

    @property
    def counter(self) -> Tokenizer:
        if self._counter is None:  # two threads may both build one: harmless, they are equal
            counter = Tokenizer.from_str(self._tokenizer.to_str())
            counter.no_truncation()
            counter.no_padding()
            self._counter = counter
        return self._counter

    def cut(self, texts: list[str] | list[tuple[str, str]], max_length: int, direction: str = "right"
            ) -> list[str] | list[tuple[str, str]]:
        """The batch with each long text (each side of a pair) cut; texts that need no cut are returned as they are.

        Args:
            texts: texts or (text, text) pairs, as given to the tokenizer.
            max_length: the truncation length in tokens (special tokens included).
            direction: the truncation side, "right" (keep the start) or "left" (keep the end).
        """
        budget = first_budget(max_length)
        if max_length < 1 or not texts:
            return texts
        single = isinstance(texts[0], str)
        if all(len(text) <= budget for text in texts) if single else all(
                len(a) <= budget and len(b) <= budget for a, b in texts):
            return texts
        boundary = self.rule.right if direction == "right" else self.rule.left
        if boundary is None:
            return texts
        cut = _Cut(self.counter, boundary, keep_start=direction == "right", budget=budget)
        if single:
            return [cut.keep(text, max_length) if len(text) > budget else text for text in texts]
        content = max_length - self._pair_specials  # tokens of the two texts together after truncation
        return [cut.pair(a, b, max_length, content) if max(len(a), len(b)) > budget else (a, b) for a, b in texts]


class _Cut:
    """One direction's cutting, for one call."""

    def __init__(self, counter: Tokenizer, boundary: re.Pattern[str], *, keep_start: bool, budget: int) -> None:
        self.counter, self.boundary, self.keep_start, self.budget = counter, boundary, keep_start, budget
        self._kept: dict[tuple[str, int], str] = {}  # one long query in many pairs is cut (and counted) once
        self._counts: dict[str, int] = {}

    def keep(self, text: str, tokens: int) -> str:
        """`text` cut so that it keeps at least `tokens` tokens (or all of it), drawn in to the boundary nearest to
        the last of those tokens."""
        key = (text, tokens)
        if key not in self._kept:
            self._kept[key] = self._keep(text, tokens)
        return self._kept[key]

    def count(self, text: str) -> int:
        if text not in self._counts:
            encode = getattr(self.counter, "encode_batch_fast", self.counter.encode_batch)  # fast: tokenizers >= 0.21
            self._counts[text] = len(encode([text], add_special_tokens=False)[0].ids)
        return self._counts[text]

    def part(self, text: str, size: int) -> str:
        """The kept part: `text` cut at the first boundary `size` characters or more from the kept end (all of
        `text` when there is none)."""
        if size >= len(text):
            return text
        if self.keep_start:
            cut = _boundary_after(text, self.boundary, size)
            return text if cut is None else text[:cut]
        cut = _boundary_before(text, self.boundary, len(text) - size)
        return text if cut is None else text[cut:]

    def _keep(self, text: str, tokens: int) -> str:
        size = self.budget
        while size < len(text):
            part = self.part(text, size)
            if part is text:
                return text
            encoding = self.counter.encode(part, add_special_tokens=False)
            if len(encoding.ids) >= tokens:
                if tokens < 1:
                    return part
                if self.keep_start:
                    inner = _boundary_after(part, self.boundary, encoding.offsets[tokens - 1][1])
                    return part if inner is None else part[:inner]
                inner = _boundary_before(part, self.boundary, encoding.offsets[-tokens][0])
                return part if inner is None else part[inner:]
            size *= BUDGET_GROWTH
        return text

    def pair(self, a: str, b: str, max_length: int, content: int) -> tuple[str, str]:
        """Both texts of a pair cut so that longest-first truncation keeps the same tokens.

        Truncation keeps min(n, ...) of each side's token count n, and, when both sides are longer than half of
        `content`, gives the odd token of an odd `content` to the longer side (the second on a tie): so the cut
        must also keep which side is longer.
        """
        kept_a = self.keep(a, max_length) if len(a) > self.budget else a
        if a == b:  # the same text twice: cut the same way, the tie stays a tie
            return kept_a, kept_a
        kept_b = self.keep(b, max_length) if len(b) > self.budget else b
        if content % 2 == 0 or (kept_a is a and kept_b is b):
            return kept_a, kept_b
        count_a, count_b = self.count(kept_a), self.count(kept_b)
        if min(count_a, count_b) <= content // 2:  # the shorter side is kept whole: which one is longer is clear
            return kept_a, kept_b
        if kept_b is b:  # only `a` was cut, b's count is exact: `a` must keep more tokens than b if it has them
            if count_a <= count_b:
                kept_a = self.keep(a, count_b + 1)
        elif kept_a is a:  # only `b` was cut: b must keep as many tokens as `a` if it has them
            if count_b < count_a:
                kept_b = self.keep(b, count_a)
        else:
            a_longer = self.longer(a, b, count_a, count_b)
            if a_longer and count_a <= count_b:
                kept_a = self.keep(a, count_b + 1)
            elif not a_longer and count_a > count_b:
                kept_b = self.keep(b, count_a)
        return kept_a, kept_b

    def longer(self, a: str, b: str, count_a: int, count_b: int) -> bool:
        """Whether `a` has more tokens than `b`, counting growing parts of both only as far as that is undecided
        (for two long texts of similar length, as far as their ends: linear time)."""
        size_a = size_b = self.budget
        done_a = done_b = False
        while True:
            if done_a and done_b:
                return count_a > count_b
            if done_a and count_b > count_a:
                return False
            if done_b and count_a > count_b:
                return True
            if not done_a and (done_b or count_a <= count_b):
                size_a *= BUDGET_GROWTH
                part = self.part(a, size_a)
                count_a, done_a = self.count(part), part is a
            else:
                size_b *= BUDGET_GROWTH
                part = self.part(b, size_b)
                count_b, done_b = self.count(part), part is b


def first_budget(max_length: int) -> int:
    """Texts up to this many characters are never cut; longer ones are first cut about this far in."""
    return max(64, FIRST_BUDGET_CHARS_PER_TOKEN * max_length)


def _boundary_after(text: str, boundary: re.Pattern[str], start: int) -> int | None:
    """The first cut position >= start (0 < position < len(text)), or None."""
    match = boundary.search(text, max(start, 1))
    return None if match is None else match.start()


def _boundary_before(text: str, boundary: re.Pattern[str], end: int) -> int | None:
    """The last cut position <= end (0 < position < len(text)), or None; searches backwards in growing windows."""
    end = min(end, len(text) - 1)
    window = 256
    high = end + 1
    while high > 1:
        low = max(1, high - window)
        last = None
        for last in boundary.finditer(text, low, high):  # noqa: B007 - only the last match is wanted
            pass
        if last is not None:
            return last.start()
        high, window = low, window * 4
    return None
