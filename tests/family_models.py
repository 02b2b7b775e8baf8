"""Tiny random-weight models of each architecture family, built the way the real checkpoints are wrapped: a tokenizer
of the family (WordPiece, byte-level BPE, Unigram, BPE with byte fallback) with its special tokens and template, a
2-layer transformer of the family, and the sentence-transformers modules the real models use."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from conftest import varied_sentences
from test_long_inputs import qwen_style, random_text, sentencepiece_bpe
from tokenizers import Tokenizer, processors
from tokenizers.implementations import BertWordPieceTokenizer, ByteLevelBPETokenizer, SentencePieceUnigramTokenizer

from exporters.parity import PROBE_TEXTS

SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
MAX_POSITIONS = 128
# ModernBERT's local window (tokens in all, half on each side): smaller than the texts and the queries.
LOCAL_WINDOW = 8


def corpus() -> list[str]:
    """What the tokenizers are trained on: random mixed-script texts (without special-token look-alikes, so the
    special tokens keep the ids of the family's real vocabulary) and English sentences (the parity probes among them:
    a real vocabulary holds their words whole, and without them the long probes split into thousands of pieces, which
    sentence-transformers' pair truncation takes seconds over)."""
    texts = [re.sub(r"<[a-z/]*>|\[[A-Z]+\]", " ", random_text(random.Random(i), 400)) for i in range(40)]
    return texts + varied_sentences(200) + list(PROBE_TEXTS) * 5


def wordpiece() -> Tokenizer:
    """BERT's WordPiece (BertNormalizer, BertPreTokenizer, [CLS] A [SEP])."""
    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(corpus(), vocab_size=1000, show_progress=False)
    return Tokenizer.from_str(trainer._tokenizer.to_str())


def byte_level_bpe(add_prefix_space: bool, specials: list[str]) -> Tokenizer:
    """Byte-level BPE (RoBERTa: with a prefix space; ModernBERT: without), its special tokens first as in the real
    vocabulary (RoBERTa's <pad> is 1: it numbers positions after pad_token_id)."""
    trainer = ByteLevelBPETokenizer(add_prefix_space=add_prefix_space)
    trainer.train_from_iterator(corpus(), vocab_size=1000, show_progress=False, special_tokens=specials)
    return Tokenizer.from_str(trainer._tokenizer.to_str())


def qwen_bpe() -> Tokenizer:
    """Qwen's byte-level BPE: test_long_inputs.qwen_style's Split regex, NFC normalizer and "</s>" after each text, on
    a vocabulary trained on `corpus()`."""
    config = json.loads(qwen_style().to_str())
    trained = json.loads(byte_level_bpe(False, ["<|endoftext|>", "</s>"]).to_str())
    eos = trained["added_tokens"][1]["id"]
    config["model"], config["added_tokens"] = trained["model"], trained["added_tokens"]
    config["post_processor"]["special_tokens"]["</s>"]["ids"] = [eos]
    return Tokenizer.from_str(json.dumps(config))


def unigram_with(specials: list[str]) -> Tokenizer:
    """A SentencePiece Unigram (Metaspace) tokenizer whose special tokens come first, in the order of the family's real
    vocabulary (XLM-R: <s> <pad> </s> <unk>; ALBERT: <pad> <unk> [CLS] [SEP]; T5: <pad> </s> <unk>)."""
    trainer = SentencePieceUnigramTokenizer()
    trainer.train_from_iterator(corpus(), vocab_size=600,
                                show_progress=False, special_tokens=specials, unk_token="<unk>")
    return Tokenizer.from_str(trainer._tokenizer.to_str())


def with_template(tokenizer: Tokenizer, specials: list[str], single: str, pair: str) -> Tokenizer:
    """`tokenizer` with `specials` added and a TemplateProcessing post-processor ("[CLS] $A [SEP]" style)."""
    tokenizer.add_special_tokens(specials)
    used = {token for token in (single + " " + pair).split() if not token.startswith("$")}
    ids = [(token.split(":")[0], tokenizer.token_to_id(token.split(":")[0])) for token in sorted(used)]
    tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=ids)
    return tokenizer


@dataclass(frozen=True)
class TokenizerRecipe:
    """How a family's tokenizer is made: the raw tokenizer, its special tokens (role -> token), the padding side and
    the vocabulary size it must reach (asserted: a tokenizer that lost its vocabulary would make the tests vacuous;
    WordPiece training breaks ties differently from run to run, by a token or two)."""

    build: Callable[[], Tokenizer]
    roles: dict[str, str]
    vocab_size: int
    padding_side: str = "right"


def roberta_style(tokenizer: Tokenizer) -> Tokenizer:
    return with_template(tokenizer, ["<s>", "</s>", "<pad>", "<unk>", "<mask>"], "<s> $A </s>",
                         "<s> $A </s> </s> $B:1 </s>:1")


def bert_style(tokenizer: Tokenizer) -> Tokenizer:
    return with_template(tokenizer, ["[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"], "[CLS] $A [SEP]",
                         "[CLS] $A [SEP] $B:1 [SEP]:1")


BERT_ROLES = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
              "mask_token": "[MASK]"}
ALBERT_ROLES = {**BERT_ROLES, "pad_token": "<pad>", "unk_token": "<unk>"}
ROBERTA_ROLES = {"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "pad_token": "<pad>",
                 "unk_token": "<unk>", "mask_token": "<mask>"}
TOKENIZERS = {
    "wordpiece": TokenizerRecipe(lambda: bert_style(wordpiece()), BERT_ROLES, 790),
    "byte-level-roberta": TokenizerRecipe(
        lambda: roberta_style(byte_level_bpe(True, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])), ROBERTA_ROLES, 1000),
    "byte-level-modernbert": TokenizerRecipe(
        lambda: bert_style(byte_level_bpe(False, ["[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"])), BERT_ROLES, 1000),
    "unigram-xlmr": TokenizerRecipe(lambda: roberta_style(unigram_with(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])),
                                    ROBERTA_ROLES, 598),
    "unigram-bert": TokenizerRecipe(
        lambda: with_template(unigram_with(["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]), [], "[CLS] $A [SEP]",
                              "[CLS] $A [SEP] $B:1 [SEP]:1"), ALBERT_ROLES, 598),
    "unigram-t5": TokenizerRecipe(
        lambda: with_template(unigram_with(["<pad>", "</s>", "<unk>"]), ["</s>"], "$A </s>", "$A </s> $B:1 </s>:1"),
        {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}, 596),
    "qwen": TokenizerRecipe(qwen_bpe, {"eos_token": "</s>", "pad_token": "<|endoftext|>"}, 1000, "left"),
    "byte-fallback-bpe": TokenizerRecipe(lambda: with_template(sentencepiece_bpe(), [], "<s> $A </s>",
                                                               "<s> $A </s> <s>:1 $B:1 </s>:1"),
                                         {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>",
                                          "unk_token": "<unk>"}, 902, "left"),
}


def family_tokenizer(name: str, max_length: int, input_names: tuple[str, ...] = ("input_ids", "attention_mask")):
    """The transformers tokenizer of recipe `name`, its vocabulary size asserted and a mixed-script text checked to
    tokenize to more than unknown tokens."""
    from transformers import PreTrainedTokenizerFast

    recipe = TOKENIZERS[name]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=recipe.build(), model_max_length=max_length,
                                        padding_side=recipe.padding_side, model_input_names=list(input_names),
                                        **recipe.roles)
    assert recipe.vocab_size <= len(tokenizer) <= recipe.vocab_size + 10, (name, len(tokenizer))
    ids = tokenizer("Zürich, Москва, 東京 and the cat")["input_ids"]
    assert len(set(ids) - {tokenizer.unk_token_id}) > 5, (name, ids)
    return tokenizer


@dataclass(frozen=True)
class Family:
    """One architecture: its tokenizer recipe, config and model classes (transformers names), the config's own
    settings, and how sentence-transformers wraps it as a bi-encoder."""

    tokenizer: str
    config: str
    base: str
    settings: dict = field(default_factory=dict)
    pooling: str = "mean"
    dense: int | None = None  # a Dense layer after pooling (sentence-t5)
    mlm: str | None = None  # the fill-mask class (SPLADE)
    classifier: str | None = None  # the sequence-classification class (cross-encoders)
    input_names: tuple[str, ...] = ("input_ids", "token_type_ids", "attention_mask")  # the tokenizer's


DECODER = {"num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": MAX_POSITIONS}
FAMILIES: dict[str, Family] = {
    "bert": Family("wordpiece", "BertConfig", "BertModel", mlm="BertForMaskedLM",
                   classifier="BertForSequenceClassification"),
    "roberta": Family("byte-level-roberta", "RobertaConfig", "RobertaModel", {"type_vocab_size": 1},
                      input_names=("input_ids", "attention_mask")),
    "xlm-roberta": Family("unigram-xlmr", "XLMRobertaConfig", "XLMRobertaModel", {"type_vocab_size": 1}, pooling="cls",
                          mlm="XLMRobertaForMaskedLM", classifier="XLMRobertaForSequenceClassification",
                          input_names=("input_ids", "attention_mask")),
    "distilbert": Family("wordpiece", "DistilBertConfig", "DistilBertModel",
                         {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64},
                         input_names=("input_ids", "attention_mask")),
    "mpnet": Family("wordpiece", "MPNetConfig", "MPNetModel", input_names=("input_ids", "attention_mask")),
    "deberta-v2": Family("unigram-bert", "DebertaV2Config", "DebertaV2Model",
                         {"relative_attention": True, "position_buckets": 16, "pos_att_type": ["p2c", "c2p"],
                          "position_biased_input": False, "max_relative_positions": -1}),
    "electra": Family("wordpiece", "ElectraConfig", "ElectraModel", {"embedding_size": 16}),
    "albert": Family("unigram-bert", "AlbertConfig", "AlbertModel", {"embedding_size": 16}),
    "modernbert": Family("byte-level-modernbert", "ModernBertConfig", "ModernBertModel",
                         {"local_attention": LOCAL_WINDOW, "global_attn_every_n_layers": 2}, pooling="cls",
                         mlm="ModernBertForMaskedLM", classifier="ModernBertForSequenceClassification",
                         input_names=("input_ids", "attention_mask")),
    "t5": Family("unigram-t5", "T5Config", "T5EncoderModel",
                 {"d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 2, "num_heads": 2}, dense=16,
                 input_names=("input_ids", "attention_mask")),
    "qwen3": Family("qwen", "Qwen3Config", "Qwen3Model", DECODER, pooling="lasttoken",
                    classifier="Qwen3ForSequenceClassification", input_names=("input_ids", "attention_mask")),
    "mistral": Family("byte-fallback-bpe", "MistralConfig", "MistralModel", {**DECODER, "sliding_window": None},
                      pooling="lasttoken", input_names=("input_ids", "attention_mask")),
    "llama": Family("byte-fallback-bpe", "LlamaConfig", "LlamaModel", DECODER, pooling="lasttoken",
                    input_names=("input_ids", "attention_mask")),
}


def build_family(name: str, folder: Path, *, head: str = "base", max_length: int = MAX_POSITIONS, seed: int = 0) -> Path:
    """Save family `name`'s tiny random model (`head`: "base", "mlm" or "classifier") and tokenizer to `folder`."""
    import transformers

    family = FAMILIES[name]
    tokenizer = family_tokenizer(family.tokenizer, max_length, family.input_names)
    torch.manual_seed(seed)
    roles = TOKENIZERS[family.tokenizer].roles
    specials = {f"{role}_id": tokenizer.convert_tokens_to_ids(token) for role, token in roles.items()
                if role in ("pad_token", "bos_token", "eos_token")}
    settings = {**SIZES, "max_position_embeddings": MAX_POSITIONS, **specials, **family.settings}
    if family.config == "RobertaConfig" or family.config == "XLMRobertaConfig":
        settings["max_position_embeddings"] = MAX_POSITIONS + 2  # positions start at pad_token_id + 1
    if head == "classifier":
        settings["num_labels"] = 1
    if head != "base":  # head outputs (pair scores, vocabulary weights) far beyond fp32 and int8 noise
        settings["initializer_range"] = 0.2
    config = getattr(transformers, family.config)(vocab_size=len(tokenizer), **settings)
    model_class = {"base": family.base, "mlm": family.mlm, "classifier": family.classifier}[head]
    model = getattr(transformers, model_class)(config)
    if head == "mlm":  # like a trained SPLADE model, few of the vocabulary weights of a text are non-zero
        with torch.no_grad():
            model.get_output_embeddings().bias.fill_(-0.4)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    saved = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert saved.get("padding_side", "right") == TOKENIZERS[family.tokenizer].padding_side
    return folder
