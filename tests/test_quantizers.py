"""Variants: every pass writes a runnable file recorded with its accuracy; the fp32 graph never changes;
--min-accuracy writes nothing when a variant falls short; outputs stay within their floors. Variants are named with
the one vocabulary (quantizers/variants.py) that st-export's flags and the zoo's recipes expand to."""

from __future__ import annotations

import numpy as np
import pytest

import st_runtime
from exporters import export
from exporters.cli import build_parser, variant_configs
from exporters.cli import main as cli_main
from quantizers import AccuracyError, QuantizationError, quantize, variant_config
from quantizers.configs import DynamicInt8, OpenVinoInt8Weights
from quantizers.variants import BACKENDS, VARIANT_KEYS, canonical, expand_flags
from st_runtime.machine import detect_isa
from st_runtime.manifest import hash_folder, sha256_file
from st_runtime.metrics import cosines, spearman, top_k_overlap

CALIBRATION = tuple(f"calibration sentence number {i} about topic {i % 7}" for i in range(24))


@pytest.fixture
def exported(tiny_bi_encoder, tmp_path):
    model = tiny_bi_encoder(normalize=True)
    export(model, tmp_path / "out")
    return model, tmp_path / "out"


# (config, largest |diff| to sentence-transformers allowed on the embeddings)
FLOAT_VARIANTS = [
    (variant_config("O1"), 1e-5),
    (variant_config("O2"), 1e-4),
    (variant_config("O3"), 5e-3),  # gelu approximation
    (variant_config("fp16"), 5e-3),
    (variant_config("openvino"), 1e-4),
    (variant_config("openvino-fp16"), 5e-3),
]


@pytest.mark.parametrize("config, atol", FLOAT_VARIANTS, ids=lambda c: getattr(c, "name", None))
def test_float_variants_stay_close_to_sentence_transformers(exported, sentences, config, atol):
    model, folder = exported
    fp32_digest = sha256_file(folder / "onnx/model.onnx")
    manifest = quantize(folder, [config], heldout=sentences[:40])
    variant = manifest.variant(name=config.name)
    assert variant.file == config.file and (folder / variant.file).is_file()
    assert manifest.files[variant.file] == sha256_file(folder / variant.file)
    assert variant.accuracy["mean_cosine"] > 0.999
    assert sha256_file(folder / "onnx/model.onnx") == fp32_digest
    expected = model.encode(sentences[:60])
    actual = st_runtime.SentenceTransformer(folder, variant=config.name).encode(sentences[:60])
    assert np.abs(actual - expected).max() <= atol


def test_openvino_pads_batches_to_few_shapes_and_cuts_outputs_back(exported, sentences):
    """OpenVINO runs each batch padded to a multiple of 8 tokens (few input shapes to prepare kernels for); the
    outputs are cut back, so each text's token embeddings keep its length and equal sentence-transformers'."""
    model, folder = exported
    quantize(folder, [variant_config("openvino")], heldout=sentences[:10])
    runtime = st_runtime.SentenceTransformer(folder, variant="openvino")
    backend = runtime.routes.graph(None).backend
    shapes, run = [], backend.run
    backend.run = lambda outputs, feeds: shapes.append(feeds["input_ids"].shape) or run(outputs, feeds)
    texts = sentences[:12]
    expected = model.encode(texts, output_value="token_embeddings", batch_size=4)
    actual = runtime.encode(texts, output_value="token_embeddings", batch_size=4)
    assert len(shapes) == 3 and all(width % 8 == 0 for _, width in shapes)
    assert any(len(e) % 8 for e in expected)  # some batches were really padded further
    for mine, theirs in zip(actual, expected, strict=True):
        assert mine.shape == tuple(theirs.shape)
        np.testing.assert_allclose(mine, theirs.numpy(), atol=1e-4)


@pytest.mark.parametrize("config", [variant_config("int8", isa=isa) for isa in ("arm64", "avx2", "avx512", "avx512_vnni")]
                         + [variant_config("int8-static", method=method, calibration_texts=CALIBRATION)
                            for method in ("minmax", "entropy", "percentile")]
                         + [variant_config("openvino-int8"),
                            variant_config("openvino-int8-static", calibration_texts=CALIBRATION)], ids=lambda c: c.name)
def test_int8_variants_are_recorded_and_accurate(exported, sentences, config):
    model, folder = exported
    manifest = quantize(folder, [config], heldout=sentences[:40])
    variant = manifest.variant(name=config.name)
    assert variant.precision == "int8" or variant.precision == "int8-weights"
    report = variant.accuracy
    assert report["texts"] == 40 and report["min_cosine"] <= report["mean_cosine"] <= 1.0
    runtime = st_runtime.SentenceTransformer(folder, variant=config.name)
    embeddings = runtime.encode(sentences[:40])
    # the recorded accuracy is what the variant really does against the fp32 graph
    fp32 = st_runtime.SentenceTransformer(folder).encode(sentences[:40])
    assert cosines(fp32, embeddings).mean() == pytest.approx(report["mean_cosine"], abs=1e-5)
    # and against sentence-transformers itself the variant stays in the int8 floor
    assert cosines(model.encode(sentences[:40]), embeddings).mean() >= 0.98
    assert (folder / variant.file).stat().st_size < (folder / "onnx/model.onnx").stat().st_size


def test_dynamic_int8_defaults_to_this_cpu(exported, sentences):
    _, folder = exported
    manifest = quantize(folder, ["int8"], heldout=sentences[:10])
    (variant,) = [v for v in manifest.variants if v.precision == "int8"]
    assert variant.isa == detect_isa()
    assert variant.file == f"onnx/model_{'quint8' if variant.isa == 'avx2' else 'qint8'}_{variant.isa}.onnx"


def test_dynamic_int8_retries_with_feed_forward_outputs_in_float(exported, sentences, monkeypatch):
    import onnx

    import quantizers.api

    model, folder = exported
    monkeypatch.setattr(quantizers.api, "DYNAMIC_RETRY_BELOW", 1.01)  # force the retry on this tiny model
    monkeypatch.setattr(quantizers.api, "DYNAMIC_RETRY_MIN_GAIN", -1e9)  # and keep it, whatever it gains
    manifest = quantize(folder, ["qint8_avx512_vnni"], heldout=sentences[:20])
    variant = manifest.variant(name="qint8_avx512_vnni")
    assert variant.accuracy["ffn_output_in_float"] == 1.0
    graph = onnx.load(str(folder / variant.file))
    weight_only = [n for n in graph.graph.node if n.name.endswith("_weight_dequantize")]
    assert len(weight_only) == 2  # one feed-forward down-projection per layer, weights stored as int8
    embeddings = st_runtime.SentenceTransformer(folder, variant=variant.name).encode(sentences[:20])
    assert cosines(model.encode(sentences[:20]), embeddings).mean() >= 0.98


def test_dynamic_int8_keeps_every_product_in_int8_when_the_retry_gains_little(exported, sentences, monkeypatch):
    import onnx

    import quantizers.api

    _, folder = exported
    monkeypatch.setattr(quantizers.api, "DYNAMIC_RETRY_BELOW", 1.01)  # force the retry on this tiny model
    monkeypatch.setattr(quantizers.api, "DYNAMIC_RETRY_MIN_GAIN", 1.0)  # which cannot take away all the loss
    manifest = quantize(folder, ["qint8_avx512_vnni"], heldout=sentences[:20])
    variant = manifest.variant(name="qint8_avx512_vnni")
    assert "ffn_output_in_float" not in variant.accuracy and "float_ffn_outputs" not in (variant.report or {})
    graph = onnx.load(str(folder / variant.file))
    assert not [n for n in graph.graph.node if n.name.endswith("_weight_dequantize")]  # the first file, not the retry's
    assert variant.accuracy["score"] == pytest.approx(
        quantizers.api.accuracy.measure(folder, manifest, variant, list(sentences[:20]))["score"], abs=1e-6)


def test_openvino_bf16_shares_the_fp32_ir(exported, sentences):
    model, folder = exported
    manifest = quantize(folder, ["openvino", "openvino-bf16"], heldout=sentences[:20])
    fp32_ir, bf16 = manifest.variant(name="openvino"), manifest.variant(name="openvino_bf16")
    assert fp32_ir.file == bf16.file == "openvino/openvino_model.xml"
    assert bf16.inference_precision == "bf16" and fp32_ir.inference_precision == "fp32"
    assert "openvino/openvino_model.bin" in manifest.files
    actual = st_runtime.SentenceTransformer(folder, variant="openvino").encode(sentences[:30])
    np.testing.assert_allclose(actual, model.encode(sentences[:30]), atol=1e-4)


def test_min_accuracy_above_reach_writes_nothing(exported, sentences):
    _, folder = exported
    before = hash_folder(folder)
    manifest_text = (folder / "st_runtime.json").read_text()
    with pytest.raises(AccuracyError, match="below --min-accuracy"):
        quantize(folder, ["O2", "qint8_avx512_vnni"], min_accuracy=0.99999999, heldout=sentences[:20])
    assert hash_folder(folder) == before
    assert (folder / "st_runtime.json").read_text() == manifest_text


def test_existing_variant_needs_overwrite(exported, sentences):
    _, folder = exported
    quantize(folder, ["O1"], heldout=sentences[:5])
    with pytest.raises(QuantizationError, match="overwrite"):
        quantize(folder, ["O1"], heldout=sentences[:5])
    manifest = quantize(folder, ["O1"], heldout=sentences[:5], overwrite=True)
    assert [v.name for v in manifest.variants].count("O1") == 1


def test_one_variant_vocabulary():
    # one variant, one key: its recipe key, its manifest name and st-export's flags all name the same config
    assert canonical("openvino-int8") == canonical("openvino_qint8_weights") == "openvino-int8"
    assert variant_config("openvino-int8") == variant_config("openvino_qint8_weights") == OpenVinoInt8Weights()
    flags = build_parser().parse_args(["model", "-o", "out", "--backend", "openvino", "--quantize", "int8"])
    assert variant_configs(flags)[1:] == [OpenVinoInt8Weights()]  # after the fp32 IR it is built from
    assert variant_config("qint8_avx512_vnni") == DynamicInt8(isa="avx512_vnni")
    assert variant_config("int8-static", method="entropy").name == "qint8_static_entropy"
    for key in VARIANT_KEYS:  # every key's manifest name leads back to it
        assert canonical(variant_config(key).name) == key
    # every value st-export's variant flags take asks for a variant of the table
    choices = {a.dest: a.choices for a in build_parser()._actions if a.dest in ("optimize", "quantize", "backend")}
    assert set(choices["backend"]) == set(BACKENDS)
    for flag in (*choices["optimize"], *choices["quantize"], "fp16", "bf16"):
        assert expand_flags(BACKENDS, {flag}), flag
    with pytest.raises(ValueError, match="Unknown variant 'int4'"):
        variant_config("int4")
    with pytest.raises(ValueError, match="takes no isa"):
        variant_config("fp16", isa="avx2")
    with pytest.raises(ValueError, match="built with isa 'avx2'"):
        variant_config("quint8_avx2", isa="avx512")


def test_optimization_reports_its_fusions_in_the_manifest(exported, sentences):
    _, folder = exported
    manifest = quantize(folder, ["O2"], heldout=sentences[:5])
    fusions = manifest.variant(name="O2").report["fusions"]
    assert fusions["SkipLayerNormalization"] > 0 and all(count > 0 for count in fusions.values())
    assert fusions["Attention"] == 2  # one per layer: the heads and hidden size come from the folder's config.json
    assert st_runtime.load_manifest(folder).variant(name="O2").report == {"fusions": fusions}


def test_an_optimization_that_fuses_nothing_is_an_error(tiny_transformers_dir, bert_vocab, tmp_path):
    """A StaticEmbedding graph (an embedding bag) has nothing O2 fuses: no variant, instead of a copy of fp32."""
    from conftest import build_tiny_transformer
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer

    folder = tiny_transformers_dir / "bert-0"
    if not folder.exists():
        build_tiny_transformer(folder, bert_vocab, arch="bert", seed=0)
    static = StaticEmbedding(Tokenizer.from_file(str(folder / "tokenizer.json")), embedding_dim=16)
    export(SentenceTransformer(modules=[static], device="cpu"), tmp_path / "out")
    before, manifest_text = hash_folder(tmp_path / "out"), (tmp_path / "out" / "st_runtime.json").read_text()
    with pytest.raises(QuantizationError, match="O2 fused nothing in this graph"):
        quantize(tmp_path / "out", ["O2"], heldout=["a text", "another text"])
    assert hash_folder(tmp_path / "out") == before
    assert (tmp_path / "out" / "st_runtime.json").read_text() == manifest_text


def test_cli_quantize_and_min_accuracy(tiny_bi_encoder, tmp_path, sentences, capsys):
    model = tiny_bi_encoder()
    model.save(str(tmp_path / "src"))
    args = [str(tmp_path / "src"), "-o", str(tmp_path / "out"), "--optimize", "O2", "--quantize", "int8",
            "int8-static", "--backend", "onnx", "openvino", "--bf16", "--isa", "avx2"]
    assert cli_main(args) == 0
    names = [v.name for v in st_runtime.load_manifest(tmp_path / "out").variants]
    assert names == ["fp32", "O2", "quint8_avx2", "qint8_static_minmax", "openvino", "openvino_bf16",
                     "openvino_qint8_weights", "openvino_qint8_quantized"]
    assert "quint8_avx2" in capsys.readouterr().out
    assert cli_main([str(tmp_path / "src"), "-o", str(tmp_path / "strict"), "--quantize", "int8",
                     "--min-accuracy", "1.5"]) == 1
    assert "below --min-accuracy" in capsys.readouterr().err
    assert not (tmp_path / "strict").exists()


def test_accuracy_measures():
    a = np.random.default_rng(0).normal(size=(5, 8))
    assert cosines(a, a).min() == pytest.approx(1.0)
    assert cosines(a, -a).max() == pytest.approx(-1.0)
    assert spearman(np.arange(10), np.arange(10) ** 3) == pytest.approx(1.0)
    assert spearman(np.arange(10), -np.arange(10)) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)
    dense = np.zeros((2, 50))
    dense[0, [1, 2, 3]] = [3, 2, 1]
    dense[1, [4, 5]] = [1, 2]
    other = dense.copy()
    other[0, 3], other[0, 9] = 0, 5
    assert top_k_overlap(dense, dense).tolist() == [1.0, 1.0]
    assert top_k_overlap(dense, other, k=3).tolist() == pytest.approx([2 / 3, 1.0])
    disjoint = np.zeros((1, 50))
    disjoint[0, 20] = 1.0  # shares nothing with row 0's top dims, and has fewer active dims than k
    assert top_k_overlap(dense[:1], disjoint, k=3).tolist() == [0.0]


VARIANT_FLAGS = ["--optimize", "O2", "--quantize", "int8", "int8-static", "--backend", "onnx", "openvino", "--isa",
                 "avx512_vnni"]
VARIANT_NAMES = {"O2", "qint8_avx512_vnni", "qint8_static_minmax", "openvino", "openvino_qint8_weights",
                 "openvino_qint8_quantized"}


def test_cli_variants_of_a_tiny_cross_encoder(tiny_transformers_dir, bert_vocab, tmp_path, sentences):
    from sentence_transformers import CrossEncoder
    from test_cross_encoder import build_tiny_cross_encoder

    source = tiny_transformers_dir / "ce-quantize"
    if not source.exists():
        build_tiny_cross_encoder(source, bert_vocab, arch="bert", num_labels=1)
    assert cli_main([str(source), "-o", str(tmp_path / "out"), *VARIANT_FLAGS, "-q"]) == 0
    manifest = st_runtime.load_manifest(tmp_path / "out")
    assert {v.name for v in manifest.variants} == {"fp32"} | VARIANT_NAMES
    pairs = list(zip(sentences[:30], sentences[30:60], strict=True))
    expected = CrossEncoder(str(source), device="cpu").predict(pairs)
    for variant in manifest.variants:
        if variant.name == "fp32":
            continue
        assert "spearman" in variant.accuracy
        scores = st_runtime.CrossEncoder(tmp_path / "out", variant=variant.name).predict(pairs)
        assert spearman(expected, scores) >= 0.9, variant.name


def test_cli_variants_of_a_tiny_splade(mlm_dir, tmp_path, sentences):
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    model = SparseEncoder(modules=[Transformer(str(mlm_dir), transformer_task="fill-mask", max_seq_length=48),
                                   SpladePooling("max", "relu")], device="cpu")
    model.save(str(tmp_path / "src"))
    assert cli_main([str(tmp_path / "src"), "-o", str(tmp_path / "out"), *VARIANT_FLAGS, "-q"]) == 0
    manifest = st_runtime.load_manifest(tmp_path / "out")
    assert {v.name for v in manifest.variants} == {"fp32"} | VARIANT_NAMES
    expected = model.encode(sentences[:30], convert_to_sparse_tensor=False).numpy()
    for variant in manifest.variants:
        if variant.name == "fp32":
            continue
        assert "top32_overlap" in variant.accuracy
        actual = st_runtime.SparseEncoder(tmp_path / "out", variant=variant.name).encode(
            sentences[:30], convert_to_sparse_tensor=False)
        assert top_k_overlap(expected, actual).mean() >= 0.8, variant.name


def test_dynamic_int8_logs_no_preprocessing_hint(exported, sentences, caplog):
    """onnxruntime's quantize_dynamic logs "Please consider to run pre-processing" on the root logger for every model;
    st-export -q must print nothing, so the pass drops that line (and only it)."""
    _, folder = exported
    with caplog.at_level("INFO"):
        quantize(folder, ["int8"], heldout=sentences[:5])
    assert not [r for r in caplog.records if "pre-processing" in r.getMessage()]


TELEMETRY_CHILD = """
import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper
from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker

results = []
check = OptInChecker.check
OptInChecker.check = lambda self, *a, **k: results.append(check(self, *a, **k)) or results[-1]

from quantizers import openvino_passes

graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
path = Path(sys.argv[1]) / "identity.onnx"
onnx.save(helper.make_model(graph), str(path))
openvino_passes.read_onnx(path)
openvino_passes._nncf()
assert results and all(r == ConsentCheckResult.DECLINED for r in results), results
print("declined", len(results))
"""


def test_openvino_conversion_sends_no_telemetry(tmp_path):
    """OpenVINO's converter and NNCF send usage telemetry unless they think they run in CI (offline, each conversion
    waited 7-11 s on it): st_runtime, st-export's conversions and NNCF decline it, whatever the environment says."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")} | {"HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", TELEMETRY_CHILD, str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "declined" in done.stdout
