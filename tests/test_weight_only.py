"""Weight-only variants (quantizers/variants.py: int8-weights, int4-weights on onnxruntime's MatMulNBits; openvino-int4
with NNCF): on a tiny decoder-style bi-encoder (Qwen3, last-token pooling, left padding) each is recorded with its
accuracy against fp32 and honours --min-accuracy; every kind's graph (bi-encoder, cross-encoder, SPLADE, ColBERT)
gets its weight MatMuls quantized, and a graph with none fails in one line instead of writing a copy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_large_models import build_qwen3_bi_encoder

import st_runtime
from exporters import export
from exporters.cli import main as cli_main
from quantizers import AccuracyError, quantize, variant_config
from quantizers.configs import WeightOnly
from st_runtime.manifest import hash_folder, load_manifest


def weight_matmuls(path: Path) -> int:
    """MatMuls of an ONNX graph whose second input is a 2-D initializer (what MatMulNBits can take)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    shapes = {t.name: len(t.dims) for t in graph.initializer}
    return sum(n.op_type == "MatMul" and shapes.get(n.input[1]) == 2 for n in graph.node)


def op_count(path: Path, op_type: str) -> int:
    return sum(n.op_type == op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    """(sentence-transformers model, source folder, exported folder with the three weight-only variants)."""
    root = tmp_path_factory.mktemp("qwen3-weights")
    model = build_qwen3_bi_encoder(root)
    folder = root / "out"
    export(model, folder)
    quantize(folder, ["int8-weights", "int4-weights", "openvino-int4"], heldout=TEXTS)
    return model, root / "model", folder


TEXTS = ["What is the capital of France?", "Paris is the capital of France.", "東京は日本の首都です。",
         "Москва — столица России.", "a", "The orchestra rewrote the rules of chess before dawn. " * 6,
         "القاهرة هي عاصمة مصر", "mIxEd CaSe TeXt 😊", "How do I reset my password?", "12345 67890"]


def test_weight_only_variants_are_recorded_with_their_accuracy(qwen3):
    model, _, folder = qwen3
    manifest = load_manifest(folder)
    assert manifest.files == hash_folder(folder)
    fp32 = folder / "onnx/model.onnx"
    expected_nodes = weight_matmuls(fp32)
    assert expected_nodes == 2 * 7  # q, k, v, o, gate, up, down per layer
    reference = model.encode(TEXTS)
    for name, bits, floor in (("qint8_weights", 8, 0.999), ("qint4_weights", 4, 0.9)):
        variant = manifest.variant(name=name)
        assert variant.precision == f"int{bits}-weights"
        assert variant.report["quantized_nodes"] == expected_nodes == op_count(folder / variant.file, "MatMulNBits")
        assert op_count(folder / variant.file, "MatMul") == op_count(fp32, "MatMul") - expected_nodes
        assert floor < variant.accuracy["score"] < 1.0
        actual = st_runtime.SentenceTransformer(folder, variant=name).encode(TEXTS)
        assert np.sum(actual * reference, axis=1).min() > floor
    int8, int4 = manifest.variant(name="qint8_weights"), manifest.variant(name="qint4_weights")
    assert int4.accuracy["score"] < int8.accuracy["score"]  # 16 levels per block lose more than 256
    openvino = manifest.variant(name="openvino_qint4_weights")
    assert openvino.backend == "openvino" and openvino.report["int4_weights"] > 0
    assert 0.9 < openvino.accuracy["score"] < 1.0
    actual = st_runtime.SentenceTransformer(folder, variant="openvino_qint4_weights").encode(TEXTS)
    assert np.sum(actual * reference, axis=1).min() > 0.9


def test_min_accuracy_refuses_a_weight_only_variant_and_writes_nothing(qwen3, tmp_path, capsys):
    _, source, folder = qwen3
    score = load_manifest(folder).variant(name="qint4_weights").accuracy["score"]
    before = (folder / "st_runtime.json").read_bytes(), hash_folder(folder)
    with pytest.raises(AccuracyError, match="qint4_weights reaches accuracy"):
        quantize(folder, ["int4-weights"], min_accuracy=(1 + score) / 2, overwrite=True, heldout=TEXTS)
    assert ((folder / "st_runtime.json").read_bytes(), hash_folder(folder)) == before
    out = tmp_path / "cli"
    code = cli_main([str(source), "-o", str(out), "--quantize", "int4-weights", "--min-accuracy", str((1 + score) / 2), "-q"])
    assert code == 1 and not out.exists()
    assert "below --min-accuracy" in capsys.readouterr().err


def test_the_cli_flags_name_both_backends_weight_variants(tmp_path):
    from exporters.cli import build_parser, variant_configs

    args = build_parser().parse_args(["m", "-o", "o", "--backend", "onnx", "openvino", "--quantize", "int8-weights",
                                      "int4-weights"])
    assert [c.name for c in variant_configs(args)] == ["qint8_weights", "qint4_weights", "openvino",
                                                       "openvino_qint8_weights", "openvino_qint4_weights"]
    assert variant_config("int4-weights") == WeightOnly(bits=4)
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        WeightOnly(bits=2)


def test_every_kind_gets_its_weight_matmuls_quantized(tmp_path, tiny_transformers_dir, bert_vocab, mlm_dir):
    """Cross-encoder, SPLADE and ColBERT graphs (the bi-encoder's is the Qwen3 one above)."""
    import test_cross_encoder
    import test_multi_vector
    from sentence_transformers import CrossEncoder
    from sentence_transformers import SparseEncoder as TorchSparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    ce_dir = tiny_transformers_dir / "ce-bert-1-0"
    if not ce_dir.exists():
        test_cross_encoder.build_tiny_cross_encoder(ce_dir, bert_vocab, arch="bert", num_labels=1)
    splade = TorchSparseEncoder(modules=[Transformer(str(mlm_dir), transformer_task="fill-mask", max_seq_length=48),
                                         SpladePooling("max")], device="cpu")
    models = {"cross-encoder": CrossEncoder(str(ce_dir), device="cpu"), "splade": splade}
    if test_multi_vector.HAS_MULTI_VECTOR:  # sentence-transformers 6
        models["colbert"] = test_multi_vector.build_model("bert-min-attend-both", tmp_path, bert_vocab)
    for kind, model in models.items():
        folder = tmp_path / kind
        export(model, folder)
        variant = quantize(folder, ["int4-weights"], heldout=TEXTS).variant(name="qint4_weights")
        assert variant.report["quantized_nodes"] == weight_matmuls(folder / "onnx/model.onnx") > 0, kind
        assert op_count(folder / variant.file, "MatMulNBits") == variant.report["quantized_nodes"], kind
        assert 0.5 < variant.accuracy["score"] <= 1.0, kind


def test_a_graph_without_weight_matmuls_fails_in_one_line(tmp_path, capsys):
    """A StaticEmbedding model is a table lookup and a mean: weight-only int4 would quantize nothing."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding
    from test_long_inputs import bert_variant

    tokenizer = bert_variant()  # its added tokens too: sentence-transformers 5.7 sizes the table without them
    weights = np.random.default_rng(0).standard_normal((tokenizer.get_vocab_size(with_added_tokens=True), 32))
    static = StaticEmbedding(tokenizer, embedding_weights=weights.astype(np.float32))
    source = tmp_path / "static"
    SentenceTransformer(modules=[static, Normalize()], device="cpu").save(str(source))
    out = tmp_path / "out"
    assert cli_main([str(source), "-o", str(out), "--quantize", "int4-weights", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("st-export: error: Weight-only int4 quantized nothing") and err.count("\n") == 1
    assert "Traceback" not in err and not out.exists()
    assert json.loads((source / "modules.json").read_text())  # the source is untouched
