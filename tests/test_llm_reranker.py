"""LLM rerankers (Qwen3-Reranker style): a tiny random-weight Qwen3ForCausalLM with a byte-level BPE tokenizer, scored
by sentence-transformers 6 as a CrossEncoder (Transformer(text-generation) -> LogitScore of "yes" - "no"), exported
from the CLI and compared with sentence-transformers run in the same test: the sliced LM head, the chat template and
its restored tail, left and right padding, batch 1 and 4, prompts, OpenVINO and st-serve /rerank."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from sentence_transformers import CrossEncoder
from test_cross_encoder import build_tiny_cross_encoder
from test_long_inputs import qwen_style

import st_runtime
from exporters import UnsupportedModelError, export
from exporters.cli import main as cli_main
from exporters.cross_encoder import PROBE_PAIRS
from st_runtime.errors import ManifestError
from st_runtime.task_configs import CrossEncoderConfig

ATOL = 1e-4  # the bound; fp32 runs land near 1e-6
MAX_SEQ_LENGTH = 192  # the template takes ~100 tokens: short pairs fit whole, long ones are cut (and their tail restored)
HIDDEN, VOCAB = 32, 607  # qwen_style's 603 tokens, "yes", "no", <|im_start|>, <|im_end|>
# Qwen3-Reranker's layout, shortened: the prompt (a system message) is the instruction, with a default.
TEMPLATE = ('<|im_start|>system\nAnswer "yes" or "no".<|im_end|>\n<|im_start|>user\n<Instruct>: '
            '{{ messages | selectattr("role", "eq", "system") | map(attribute="content") | first | default("Find it") }}'
            '\n<Query>: {{ messages | selectattr("role", "eq", "query") | map(attribute="content") | first }}\n'
            '<Document>: {{ messages | selectattr("role", "eq", "document") | map(attribute="content") | first }}'
            '<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n')
PAIRS = [*PROBE_PAIRS, ("yes or no?", "no"), ("Ελληνικά και русский", "日本語のテキスト " * 20)]


def build_llm_reranker(folder: Path, *, tie: bool, chat_template: bool) -> None:
    """Save a 2-layer random-weight Qwen3ForCausalLM with a byte-level BPE tokenizer holding "yes" and "no", left
    padding and a pad token (and, optionally, a Qwen3-Reranker-style chat template) as a plain transformers folder."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    backend = qwen_style()
    backend.add_tokens([AddedToken(word, single_word=True) for word in ("yes", "no")])
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<|im_start|>", "<|im_end|>")])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="</s>", padding_side="left",
                                        model_max_length=MAX_SEQ_LENGTH)
    assert len(tokenizer) == VOCAB
    if chat_template:
        tokenizer.chat_template = TEMPLATE
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                         tie_word_embeddings=tie, pad_token_id=tokenizer.pad_token_id, initializer_range=0.2)
    Qwen3ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.fixture(scope="module")
def rerankers(tmp_path_factory) -> dict[str, tuple[CrossEncoder, Path]]:
    """name -> (sentence-transformers CrossEncoder, folder exported by the CLI): "chat", a CrossEncoder folder
    (saved by sentence-transformers, modules.json naming LogitScore) whose pairs go through its chat template, exported
    with an OpenVINO variant; "tied", a plain transformers folder with tied embeddings and no chat template (the
    tokenizer pairs the texts)."""
    root = tmp_path_factory.mktemp("llm-reranker")
    build_llm_reranker(root / "chat-plain", tie=False, chat_template=True)
    build_llm_reranker(root / "tied", tie=True, chat_template=False)
    CrossEncoder(str(root / "chat-plain"), device="cpu").save(str(root / "chat"))
    modules = json.loads((root / "chat/modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "LogitScore"]
    found = {}
    for name, flags in (("chat", ["--backend", "onnx", "openvino"]), ("tied", [])):
        assert cli_main([str(root / name), "-o", str(root / f"out-{name}"), "-q", *flags]) == 0
        found[name] = CrossEncoder(str(root / name), device="cpu"), root / f"out-{name}"
    return found


def reference_scores(model: CrossEncoder, pairs, batch_size: int, raw: bool, prompt: str | None = None) -> np.ndarray:
    return model.predict(pairs, batch_size=batch_size, show_progress_bar=False, prompt=prompt,
                         activation_fn=torch.nn.Identity() if raw else None)


@pytest.fixture(scope="module")
def expected(rerankers):
    """(name, batch_size, raw) -> sentence-transformers' scores of PAIRS, one predict per (name, batch_size): with
    the activation, its own activation_fn applied to the raw scores, as predict applies it."""
    cache: dict[tuple[str, int], np.ndarray] = {}

    def get(name: str, batch_size: int, raw: bool) -> np.ndarray:
        if (name, batch_size) not in cache:
            cache[name, batch_size] = reference_scores(rerankers[name][0], PAIRS, batch_size, raw=True)
        scores = cache[name, batch_size]
        return scores if raw else rerankers[name][0].activation_fn(torch.from_numpy(scores)).numpy()

    return get


def initializer_shapes(folder: Path) -> list[tuple[int, ...]]:
    return [tuple(t.dims) for t in onnx.load(str(folder / "onnx/model.onnx")).graph.initializer]


@pytest.mark.parametrize("name", ["chat", "tied"])
def test_graph_holds_the_label_rows_not_the_vocabulary_projection(rerankers, name):
    reference, folder = rerankers[name]
    config = st_runtime.load_manifest(folder).task_config
    assert config.label_token_ids == tuple(reference[0].tokenizer.convert_tokens_to_ids(["yes", "no"]))
    assert (config.activation, config.num_labels) == ("sigmoid", 1)  # sentence-transformers' default for one label
    shapes = initializer_shapes(folder)
    assert shapes.count((VOCAB, HIDDEN)) + shapes.count((HIDDEN, VOCAB)) == 1  # the input embedding only
    assert (2, HIDDEN) in shapes or (HIDDEN, 2) in shapes  # the rows of "yes" and "no"
    # Every matrix is the decoder's or the label rows: the (untied) LM head's VOCAB x HIDDEN weights are not there.
    decoder = reference[0].auto_model.get_decoder()
    matrices = sum(int(np.prod(s)) for s in shapes if len(s) > 1)
    assert matrices == sum(p.numel() for p in decoder.parameters() if p.dim() > 1) + 2 * HIDDEN


def test_the_chat_template_is_recorded_and_older_configs_still_load(rerankers):
    reference, folder = rerankers["chat"]
    template = st_runtime.load_manifest(folder).task_config.pair_template
    assert "<Query>: {query}\n<Document>: {document}<|im_end|>" in template.text and "Find it" in template.text
    assert "<Instruct>: {prompt}\n" in template.prompted
    assert reference[0].tokenizer.decode(list(template.suffix_ids)).startswith("<|im_end|>\n<|im_start|>assistant")
    assert st_runtime.load_manifest(rerankers["tied"][1]).task_config.pair_template is None
    older = {"num_labels": 1, "activation": "sigmoid", "activation_fn": "torch.nn.modules.activation.Sigmoid"}
    config = CrossEncoderConfig.from_dict(older, "task_config")
    assert (config.label_token_ids, config.pair_template) == (None, None) and config.to_dict() == older
    # A template is filled in, never evaluated: anything but a bare {query} / {document} / {prompt} is refused.
    recorded = st_runtime.load_manifest(folder).task_config.to_dict()
    for text in ("{query.__class__}{document}", "{query!r}{document}", "{query}{document}{0}", "{document}{query}",
                 "{query}{document", "{query}"):
        with pytest.raises(ManifestError, match=r"pair_template\.text"):
            CrossEncoderConfig.from_dict(recorded | {"pair_template": {**recorded["pair_template"], "text": text}},
                                         "task_config")


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("name", ["chat", "tied"])
def test_scores_match_sentence_transformers(rerankers, expected, name, padding_side):
    """Pairs short and long on either side (past max_seq_length), batch 1 and 4, with and without the activation; the
    runtime pads on the left as sentence-transformers does, or on the right (the graph reads the last real token)."""
    model = st_runtime.CrossEncoder(rerankers[name][1])
    graph = model.routes.graph(None)
    graph.tokenizer.spec = dataclasses.replace(graph.tokenizer.spec, padding_side=padding_side)
    lengths = graph.tokenizer.token_counts(model.tokenizer_inputs(PAIRS, None))
    assert lengths.max() == MAX_SEQ_LENGTH and lengths.min() < MAX_SEQ_LENGTH - 80  # cut pairs and short ones
    for batch_size in (1, 4):
        for raw in (False, True):
            reference = expected(name, batch_size, raw)
            actual = model.predict(PAIRS, batch_size=batch_size, activation_fn="identity" if raw else None)
            assert actual.shape == reference.shape == (len(PAIRS),)
            assert np.abs(actual - reference).max() <= ATOL, (batch_size, raw)
            assert np.ptp(reference) > 100 * ATOL  # the pairs' scores differ: the check can fail


def test_prompts_and_rank_match_sentence_transformers(rerankers, expected):
    reference, folder = rerankers["chat"]
    model = st_runtime.CrossEncoder(folder)
    for prompt in ("Зачем? 为什么? Judge relevance",):
        prompted = reference_scores(reference, PAIRS, 4, False, prompt=prompt)
        assert np.abs(model.predict(PAIRS, prompt=prompt, batch_size=4) - prompted).max() <= ATOL
        assert np.abs(prompted - expected("chat", 4, False)).max() > 100 * ATOL  # the prompt changes the scores
    documents = [document for _, document in PAIRS[:6]]
    ranked = reference.rank("How many people live in Berlin?", documents, show_progress_bar=False)
    assert [r["corpus_id"] for r in model.rank("How many people live in Berlin?", documents)] == [
        r["corpus_id"] for r in ranked]


def test_openvino_variant_matches_sentence_transformers(rerankers, expected):
    model = st_runtime.CrossEncoder(rerankers["chat"][1], backend="openvino")
    assert model.variant.backend == "openvino"
    for batch_size in (1, 4):
        assert np.abs(model.predict(PAIRS, batch_size=batch_size) - expected("chat", batch_size, False)).max() <= ATOL


def test_st_serve_reranks_with_the_llm_reranker(rerankers):
    from test_serve import ServerProcess, _metric, httpx  # skips this test alone where the serve extra is missing

    reference, folder = rerankers["chat"]
    query, documents = "Which cities are mentioned?", [document for _, document in PAIRS]
    expected = reference.rank(query, documents, show_progress_bar=False)
    server = ServerProcess([str(folder), "--name", "llm"])
    try:
        answer = httpx.post(server.url + "/rerank", json={"query": query, "texts": documents}, timeout=60)
        assert answer.status_code == 200, answer.text
        ranked = answer.json()
        assert [r["index"] for r in ranked] == [r["corpus_id"] for r in expected]
        assert max(abs(r["score"] - e["score"]) for r, e in zip(ranked, expected, strict=True)) <= ATOL
        before = _metric(server, "st_serve_input_tokens", "/rerank")
        assert httpx.post(server.url + "/rerank", json={"query": "ok", "texts": ["ok"]}, timeout=60).status_code == 200
        counted = _metric(server, "st_serve_input_tokens", "/rerank") - before
        assert counted == len(reference[0].preprocess([("ok", "ok")])["input_ids"][0])  # the template's tokens too
    finally:
        assert server.stop() == 0


def test_other_module_chains_with_a_causal_lm_are_refused(rerankers, tmp_path, bert_vocab):
    reference, _ = rerankers["tied"]
    causal_only = CrossEncoder(modules=[reference[0]], device="cpu")  # no LogitScore
    build_tiny_cross_encoder(tmp_path / "bert", bert_vocab, arch="bert", num_labels=1)
    classifier = CrossEncoder(str(tmp_path / "bert"), device="cpu")
    classifier[0].transformer_task = "text-generation"  # claims to be causal, with no LogitScore
    for model in (causal_only, classifier):
        with pytest.raises(UnsupportedModelError, match=r"Transformer\(text-generation\) -> LogitScore"):
            export(model, tmp_path / "out")
        assert not (tmp_path / "out").exists()
