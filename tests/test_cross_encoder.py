"""Cross-encoders (rerankers): tiny random-weight BERT (token_type_ids) and RoBERTa-like (no token_type_ids)
sequence classifiers with 1 and 3 labels, exported and compared with sentence-transformers' CrossEncoder
run in the same test: predict (default activation, apply_softmax, other activations), rank, long pairs,
input checking, threads, the CLI and sentence-transformers' own ONNX backend."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import FP32_ATOL, requires_st_backend, run_blocking_imports, tiny_tokenizer
from sentence_transformers import CrossEncoder

import st_runtime
from exporters import ParityError, export
from exporters.cli import main as cli_main
from exporters.cross_encoder import check_cross_encoder_parity

ARCHS = ["bert", "roberta"]
# Large enough weights that the scores of different pairs differ far beyond fp32 noise (rank order is stable).
INITIALIZER_RANGE = 0.2


def build_tiny_cross_encoder(folder: Path, vocab: Path, *, arch: str, num_labels: int, seed: int = 0,
                             max_position: int = 64) -> None:
    """Save a 2-layer random-weight BertForSequenceClassification, or a RobertaForSequenceClassification whose
    tokenizer yields no token_type_ids (as XLM-R rerankers), with a real WordPiece tokenizer, to `folder`."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    torch.manual_seed(seed)
    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "num_labels": num_labels, "initializer_range": INITIALIZER_RANGE}
    if arch == "bert":
        tokenizer = tiny_tokenizer(vocab, model_max_length=max_position)
        model = BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=max_position,
                                                         **sizes))
    elif arch == "roberta":
        tokenizer = tiny_tokenizer(vocab, model_max_length=max_position, model_input_names=["input_ids", "attention_mask"])
        # RoBERTa numbers positions from pad_token_id + 1, so it needs two more position embeddings.
        config = RobertaConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=max_position + 2,
                               pad_token_id=tokenizer.pad_token_id, type_vocab_size=1, **sizes)
        model = RobertaForSequenceClassification(config)
    else:
        raise ValueError(arch)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.fixture(scope="module")
def tiny_cross_encoder_dir(tiny_transformers_dir, bert_vocab):
    """Factory: the folder of a tiny transformers sequence classifier, built once per (arch, num_labels, seed)."""

    def make(arch: str = "bert", num_labels: int = 1, seed: int = 0) -> Path:
        folder = tiny_transformers_dir / f"ce-{arch}-{num_labels}-{seed}"
        if not folder.exists():
            build_tiny_cross_encoder(folder, bert_vocab, arch=arch, num_labels=num_labels, seed=seed)
        return folder

    return make


@pytest.fixture(scope="module")
def exported(tiny_cross_encoder_dir, tmp_path_factory):
    """Factory: (sentence-transformers CrossEncoder, exported folder), exported once per (arch, num_labels)."""
    cache: dict[tuple[str, int], tuple[CrossEncoder, Path]] = {}

    def get(arch: str = "bert", num_labels: int = 1) -> tuple[CrossEncoder, Path]:
        if (arch, num_labels) not in cache:
            model = CrossEncoder(str(tiny_cross_encoder_dir(arch, num_labels)), device="cpu")
            out = tmp_path_factory.mktemp(f"ce-{arch}-{num_labels}") / "exported"
            export(model, out)
            cache[arch, num_labels] = model, out
        return cache[arch, num_labels]

    return get


@pytest.fixture(scope="module")
def pairs(sentences) -> list[tuple[str, str]]:
    """120 pairs from the varied sentences: short, empty, unicode, and long (past 64 tokens) on either side."""
    return list(zip(sentences[::2], sentences[1::2], strict=True))


def assert_close(actual, expected, atol: float = FP32_ATOL) -> None:
    expected = np.asarray(expected)
    actual = np.asarray(actual)
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    diff = float(np.abs(actual.astype(np.float64) - expected).max()) if expected.size else 0.0
    assert diff <= atol, f"max abs diff {diff:.3g} > {atol:g}"


def assert_same_ranking(actual: list[dict], expected: list[dict]) -> None:
    assert [r["corpus_id"] for r in actual] == [r["corpus_id"] for r in expected]
    assert [r.keys() for r in actual] == [r.keys() for r in expected]
    assert [r.get("text") for r in actual] == [r.get("text") for r in expected]
    assert_close([r["score"] for r in actual], [r["score"] for r in expected])
    assert all(type(a["score"]) is type(e["score"]) for a, e in zip(actual, expected, strict=True))


@pytest.mark.parametrize("num_labels", [1, 3])
@pytest.mark.parametrize("arch", ARCHS)
def test_predict_parity(exported, pairs, arch, num_labels):
    reference, folder = exported(arch, num_labels)
    manifest = st_runtime.load_manifest(folder)
    assert manifest.task == "text-ranking"
    assert manifest.inputs == (("input_ids", "attention_mask", "token_type_ids") if arch == "bert"
                               else ("input_ids", "attention_mask"))
    assert manifest.outputs == ("scores", "logits")
    activation = "sigmoid" if num_labels == 1 else "identity"  # sentence-transformers' defaults
    path = "torch.nn.modules.activation.Sigmoid" if num_labels == 1 else "torch.nn.modules.linear.Identity"
    assert manifest.task_config == {"num_labels": num_labels, "activation": activation, "activation_fn": path}
    assert manifest.parity["max_abs_diff"] <= FP32_ATOL

    model = st_runtime.CrossEncoder(folder)
    assert model.num_labels == num_labels and model.activation_fn == activation
    assert model.max_seq_length == reference.max_seq_length == 64
    options = {"show_progress_bar": False}
    expected = reference.predict(pairs, **options)
    assert expected.shape == ((len(pairs),) if num_labels == 1 else (len(pairs), num_labels))
    assert_close(model.predict(pairs, **options), expected)
    for batch_size in (1, 7):
        assert_close(model.predict(pairs[:30], batch_size=batch_size, **options), expected[:30])
    assert_close(model.predict(pairs, apply_softmax=True, **options), reference.predict(pairs, apply_softmax=True, **options))
    for name, torch_fn in (("identity", torch.nn.Identity()), ("sigmoid", torch.nn.Sigmoid()), ("Tanh", torch.nn.Tanh())):
        assert_close(model.predict(pairs, activation_fn=name, **options),
                     reference.predict(pairs, activation_fn=torch_fn, **options))
    if num_labels > 1:
        assert_close(model.predict(pairs, activation_fn="softmax", **options),
                     reference.predict(pairs, activation_fn=torch.nn.Softmax(dim=1), **options))
    # A numpy callable stands in for a torch one.
    assert_close(model.predict(pairs[:20], activation_fn=lambda x: x * 2, **options),
                 reference.predict(pairs[:20], activation_fn=lambda x: x * 2, **options))

    # One pair, given as a tuple or a list, gives one score (or one label vector), as in sentence-transformers.
    for single in (pairs[3], list(pairs[3]), np.array(pairs[3])):
        assert_close(model.predict(single, **options), reference.predict(single, **options))
    assert_close(model.predict(np.array(pairs[:10]), **options), expected[:10])
    as_list = model.predict(pairs[:5], convert_to_numpy=False, **options)
    assert isinstance(as_list, list) and len(as_list) == 5
    assert_close(np.stack(as_list), expected[:5])


def test_long_pairs_truncate_longest_first_like_sentence_transformers(tiny_cross_encoder_dir, pairs, tmp_path):
    reference = CrossEncoder(str(tiny_cross_encoder_dir("bert", 1)), device="cpu", max_length=24)
    manifest = export(reference, tmp_path / "out")
    assert manifest.max_seq_length == 24
    model = st_runtime.CrossEncoder(tmp_path / "out")
    long_text = " ".join(["Long inputs must be truncated exactly where sentence-transformers truncates them."] * 5)
    tricky = [(long_text, "short"), ("short", long_text), (long_text, long_text), (long_text[:90], long_text[:60]),
              ("", long_text), (long_text, "")]
    batch = tricky + pairs[:40]
    expected_ids = reference.preprocess(batch)["input_ids"].numpy()
    actual = model.tokenizer.encode(batch)
    assert actual["input_ids"].shape[1] == 24
    np.testing.assert_array_equal(actual["input_ids"], expected_ids)
    np.testing.assert_array_equal(actual["token_type_ids"], reference.preprocess(batch)["token_type_ids"].numpy())
    assert_close(model.predict(batch, show_progress_bar=False), reference.predict(batch, show_progress_bar=False))


@pytest.mark.parametrize("arch", ARCHS)
def test_rank_parity(exported, sentences, arch):
    reference, folder = exported(arch, 1)
    model = st_runtime.CrossEncoder(folder)
    query, documents = "Who benchmarked the ONNX graph?", sentences[20:60]
    for kwargs in ({}, {"top_k": 5}, {"top_k": 0}, {"return_documents": True}, {"top_k": 3, "return_documents": True},
                   {"top_k": 100, "batch_size": 4}, {"activation_fn": "identity"}):
        torch_kwargs = {**kwargs, "activation_fn": torch.nn.Identity()} if "activation_fn" in kwargs else kwargs
        actual = model.rank(query, documents, show_progress_bar=False, **kwargs)
        expected = reference.rank(query, documents, show_progress_bar=False, **torch_kwargs)
        assert_same_ranking(actual, expected)
    assert len(model.rank(query, documents, top_k=5)) == 5
    assert model.rank(query, []) == reference.rank(query, []) == []
    scores = [r["score"] for r in model.rank(query, documents)]
    assert scores == sorted(scores, reverse=True)


def test_load_opens_a_cross_encoder(exported, pairs):
    reference, folder = exported("bert", 3)
    model = st_runtime.load(folder)
    assert type(model) is st_runtime.CrossEncoder and model.num_labels == 3
    assert_close(model.predict(pairs[:10], show_progress_bar=False), reference.predict(pairs[:10], show_progress_bar=False))


def test_rank_needs_one_label(exported):
    reference, folder = exported("bert", 3)
    with pytest.raises(ValueError, match="num_labels=1"):
        reference.rank("q", ["a", "b"])
    with pytest.raises(ValueError, match="num_labels=1"):
        st_runtime.CrossEncoder(folder).rank("q", ["a", "b"])


@pytest.mark.parametrize(("activation", "name"), [(torch.nn.Identity(), "identity"), (torch.nn.Tanh(), "tanh"),
                                                  (torch.nn.Softmax(dim=1), "softmax")])
def test_model_activation_runs_in_the_graph(tiny_cross_encoder_dir, pairs, tmp_path, activation, name):
    num_labels = 3 if name == "softmax" else 1
    reference = CrossEncoder(str(tiny_cross_encoder_dir("roberta", num_labels)), device="cpu", activation_fn=activation)
    manifest = export(reference, tmp_path / "out")
    assert manifest.task_config["activation"] == name
    model = st_runtime.CrossEncoder(tmp_path / "out")
    assert_close(model.predict(pairs, show_progress_bar=False), reference.predict(pairs, show_progress_bar=False))
    # The raw logits stay available: the identity activation reads the graph's logits output.
    assert_close(model.predict(pairs, activation_fn="identity", show_progress_bar=False),
                 reference.predict(pairs, activation_fn=torch.nn.Identity(), show_progress_bar=False))


def test_prompts_prepend_to_the_query(tiny_cross_encoder_dir, pairs, tmp_path):
    prompts = {"query": "query: ", "classify": "Is the document relevant? "}
    reference = CrossEncoder(str(tiny_cross_encoder_dir("bert", 1)), device="cpu", prompts=prompts,
                             default_prompt_name="classify")
    manifest = export(reference, tmp_path / "out")
    assert manifest.prompts == prompts and manifest.default_prompt_name == "classify"
    model = st_runtime.CrossEncoder(tmp_path / "out")
    for kwargs in ({}, {"prompt_name": "query"}, {"prompt": "ad hoc: "}):
        assert_close(model.predict(pairs, show_progress_bar=False, **kwargs),
                     reference.predict(pairs, show_progress_bar=False, **kwargs))
    with pytest.raises(ValueError, match="not found"):
        model.predict(pairs[:2], prompt_name="nope")


def test_invalid_input_is_refused_clearly(exported):
    _, folder = exported("bert", 1)
    model = st_runtime.CrossEncoder(folder)
    bad_inputs = [
        (None, "is None"),
        ("just one string", "single string"),
        (42, "got int"),
        (("a", "b", "c"), "not a pair"),
        ((("a", "b"), ("only one",)), r"inputs\[1\] .* not a pair"),
        ([("a", None)], r"inputs\[0\]\[1\] is NoneType"),
        ([("a", 3)], r"inputs\[0\]\[1\] is int"),
        (["a", 1], r"inputs\[1\] is int"),
        ([["a", "b"], "c"], r"inputs\[1\] is str"),
    ]
    for value, message in bad_inputs:
        with pytest.raises(st_runtime.InvalidInputError, match=message):
            model.predict(value)
    with pytest.raises(TypeError):  # InvalidInputError is a TypeError, as sentence-transformers users catch
        model.predict([(1, 2)])
    empty = model.predict([])
    assert isinstance(empty, np.ndarray) and empty.shape == (0,)
    with pytest.raises(ValueError, match="batch_size"):
        model.predict([("a", "b")], batch_size=0)
    with pytest.raises(ValueError, match="torch"):
        model.predict([("a", "b")], convert_to_tensor=True)
    with pytest.raises(st_runtime.InvalidInputError, match="torch"):
        model.predict([("a", "b")], activation_fn=torch.nn.Sigmoid())
    with pytest.raises(ValueError, match="Unknown activation_fn"):
        model.predict([("a", "b")], activation_fn="swish-ish")
    with pytest.raises(st_runtime.InvalidInputError, match="list of strings"):
        model.rank("q", "a single document")
    with pytest.raises(st_runtime.InvalidInputError, match="query"):
        model.rank(None, ["a"])
    with pytest.raises(st_runtime.InvalidInputError, match=r"documents\[1\]"):
        model.rank("q", ["a", None])
    with pytest.raises(ValueError, match="top_k"):
        model.rank("q", ["a"], top_k=-1)
    with pytest.raises(st_runtime.ManifestError, match=r"st_runtime\.CrossEncoder"):
        st_runtime.SentenceTransformer(folder)


def test_predict_is_thread_safe(exported, pairs):
    _, folder = exported("roberta", 1)
    model = st_runtime.CrossEncoder(folder, intra_op_num_threads=1)
    chunks = [pairs[i::6] for i in range(6)]
    sequential = [model.predict(chunk, batch_size=5, show_progress_bar=False) for chunk in chunks]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda chunk: model.predict(chunk, batch_size=5, show_progress_bar=False), chunks * 2))
    for got, want in zip(threaded, sequential * 2, strict=True):
        np.testing.assert_array_equal(got, want)


def test_graph_has_dynamic_axes_and_both_outputs(exported):
    _, folder = exported("bert", 3)
    graph = onnx.load(str(folder / "onnx/model.onnx")).graph
    for tensor in graph.input:
        assert [d.dim_param or d.dim_value for d in tensor.type.tensor_type.shape.dim] == ["batch_size", "sequence_length"]
    outputs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output}
    assert outputs == {"scores": ["batch_size", 3], "logits": ["batch_size", 3]}


def test_parity_gate_raises_on_a_different_model(exported, tiny_cross_encoder_dir):
    _, folder = exported("bert", 1)
    other = CrossEncoder(str(tiny_cross_encoder_dir("bert", 1, seed=5)), device="cpu")
    with pytest.raises(ParityError, match="differ"):
        check_cross_encoder_parity(other, folder, atol=FP32_ATOL)


def test_cli_exports_saved_and_plain_transformers_folders(tiny_cross_encoder_dir, pairs, tmp_path, capsys):
    source = tiny_cross_encoder_dir("roberta", 1)
    reference = CrossEncoder(str(source), device="cpu")
    reference.save(str(tmp_path / "saved"))
    assert json.loads((tmp_path / "saved/config_sentence_transformers.json").read_text())["model_type"] == "CrossEncoder"
    # A sentence-transformers CrossEncoder folder, and a plain transformers *ForSequenceClassification folder.
    for name, folder in (("saved", tmp_path / "saved"), ("plain", source)):
        assert cli_main([str(folder), "-o", str(tmp_path / f"out-{name}")]) == 0
        assert "text-ranking" in capsys.readouterr().out
        model = st_runtime.CrossEncoder(tmp_path / f"out-{name}")
        assert model.manifest.source["model_type"] == "CrossEncoder"
        assert_close(model.predict(pairs, show_progress_bar=False), reference.predict(pairs, show_progress_bar=False))


@requires_st_backend
def test_sentence_transformers_onnx_backend_loads_the_folder(exported, pairs):
    reference, folder = exported("bert", 1)
    backend = CrossEncoder(str(folder), backend="onnx", device="cpu", model_kwargs={"provider": "CPUExecutionProvider"})
    assert_close(backend.predict(pairs, show_progress_bar=False), reference.predict(pairs, show_progress_bar=False))


CHILD = """
    import st_runtime
    model = st_runtime.CrossEncoder(sys.argv[1])
    pairs = [tuple(p) for p in json.loads(sys.argv[2])]
    ranked = model.rank(pairs[0][0], [d for _, d in pairs], return_documents=True)
    print(json.dumps({"scores": model.predict(pairs).tolist(), "ranked": [r["corpus_id"] for r in ranked]}))
"""


def test_runtime_runs_where_torch_cannot_be_imported(exported, pairs):
    reference, folder = exported("bert", 1)
    chosen = pairs[:12]
    result = run_blocking_imports(CHILD, str(folder), json.dumps(chosen),
                                  blocked=("torch", "transformers", "sentence_transformers", "exporters"))
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert_close(np.array(payload["scores"], dtype=np.float32), reference.predict(chosen, show_progress_bar=False))
    expected = reference.rank(chosen[0][0], [d for _, d in chosen])
    assert payload["ranked"] == [r["corpus_id"] for r in expected]


def test_one_label_softmax_and_rank_scores_follow_the_exporting_line(exported, pairs, tmp_path):
    """sentence-transformers 6 squeezes a one-label model's scores before apply_softmax (a no-op) and returns Python
    floats from rank; 5.x applied the softmax (every score 1.0) and returned numpy floats. The runtime follows the
    line recorded in the manifest, whichever line runs it."""
    import shutil

    reference, folder = exported("bert", 1)
    installed = int(st_runtime.load_manifest(folder).versions["sentence-transformers"].split(".")[0])
    assert installed == int(__import__("sentence_transformers").__version__.split(".")[0])
    expected = reference.predict(pairs[:8], apply_softmax=True, show_progress_bar=False)
    assert_close(st_runtime.CrossEncoder(folder).predict(pairs[:8], apply_softmax=True, show_progress_bar=False), expected)
    plain = reference.predict(pairs[:8], show_progress_bar=False)
    for major, softmax_scores, score_type in ((5, np.ones(8, dtype=np.float32), np.float32), (6, plain, float)):
        copy = tmp_path / f"st{major}"
        shutil.copytree(folder, copy)
        manifest_path = copy / "st_runtime.json"
        data = json.loads(manifest_path.read_text())
        data["versions"]["sentence-transformers"] = f"{major}.1.0"
        manifest_path.write_text(json.dumps(data))
        model = st_runtime.CrossEncoder(copy)
        assert model.sentence_transformers_major == major
        assert_close(model.predict(pairs[:8], apply_softmax=True, show_progress_bar=False), softmax_scores)
        assert {type(r["score"]) for r in model.rank("query", ["a", "b c"])} == {score_type}
