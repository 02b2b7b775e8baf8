"""Every st-export variant flag end to end on the real all-MiniLM-L6-v2: each variant stays within its floor
against sentence-transformers run in the same test, and int8 files are at most 30% of the fp32 size."""

from __future__ import annotations

import pytest
from sentence_transformers import SentenceTransformer

import st_runtime
from exporters.cli import main as cli_main
from quantizers.variants import variant_config
from st_runtime.machine import detect_isa
from st_runtime.metrics import cosines

pytestmark = pytest.mark.slow

# The dynamic int8 preset st-export picks for this CPU: its kernels are the ones the floors must hold on (a preset for
# AVX-512 VNNI run on a CPU without VNNI saturates u8 x s8 products, and this project's CI machine varies).
ISA = detect_isa()
DYNAMIC_INT8 = variant_config("int8", isa=ISA).name  # qint8_avx512_vnni, quint8_avx2, ...

# variant -> lowest mean cosine to sentence-transformers fp32 accepted, lowest min cosine
FLOORS = {
    "fp32": (0.999999, 0.99999),
    "O3": (0.9999, 0.999),
    DYNAMIC_INT8: (0.99, 0.95),
    "qint8_static_minmax": (0.985, 0.93),
    "fp16": (0.9999, 0.999),
    "openvino": (0.999999, 0.99999),
    "openvino_bf16": (0.999, 0.99),
    "openvino_fp16": (0.9999, 0.999),
    "openvino_qint8_weights": (0.998, 0.99),
    "openvino_qint8_quantized": (0.99, 0.93),
}


@pytest.fixture(scope="module")
def minilm_variants(minilm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("minilm-variants") / "out"
    code = cli_main([str(minilm_dir), "-o", str(out), "--optimize", "O3", "--quantize", "int8", "int8-static",
                     "--isa", ISA, "--fp16", "--backend", "onnx", "openvino", "--bf16", "--min-accuracy", "0.98",
                     "-q"])
    assert code == 0
    return SentenceTransformer(str(minilm_dir), device="cpu"), out


def test_every_variant_within_its_floor(minilm_variants, sentences):
    reference, folder = minilm_variants
    manifest = st_runtime.load_manifest(folder)
    assert {v.name for v in manifest.variants} == set(FLOORS)
    expected = reference.encode(sentences)
    for variant in manifest.variants:
        actual = st_runtime.SentenceTransformer(folder, variant=variant.name).encode(sentences)
        cos = cosines(expected, actual)
        mean_floor, min_floor = FLOORS[variant.name]
        assert cos.mean() >= mean_floor and cos.min() >= min_floor, (variant.name, cos.mean(), cos.min())
        if variant.name != "fp32":
            assert variant.accuracy["score"] >= 0.98


def test_int8_files_are_at_most_30_percent_of_fp32(minilm_variants):
    _, folder = minilm_variants
    manifest = st_runtime.load_manifest(folder)
    fp32_size = (folder / manifest.variant(name="fp32").file).stat().st_size
    for name in (DYNAMIC_INT8, "qint8_static_minmax"):
        size = (folder / manifest.variant(name=name).file).stat().st_size
        assert size <= 0.30 * fp32_size, (name, size / fp32_size)
    weights = (folder / "openvino/openvino_model_qint8_quantized.bin").stat().st_size
    assert weights <= 0.30 * fp32_size


def test_min_accuracy_above_reach_fails_the_command(minilm_dir, tmp_path, capsys):
    code = cli_main([str(minilm_dir), "-o", str(tmp_path / "out"), "--quantize", "int8", "--min-accuracy", "0.9999"])
    assert code == 1
    assert "below --min-accuracy 0.9999" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_int8_ir_in_bf16_is_right_at_every_length(minilm_variants, sentences):
    """OpenVINO 2026.4 computed wrong embeddings for an int8 IR run in bf16 whenever a batch was exactly 32 tokens
    long (its fused attention; min cosine 0.64 on this model); the backend turns that fusion off for such IRs."""
    import numpy as np

    from st_runtime.backends import OpenVinoBackend

    _, folder = minilm_variants
    runtime = st_runtime.SentenceTransformer(folder)
    graph = runtime.routes.graph(None)
    fp32 = OpenVinoBackend(folder / "openvino/openvino_model.xml")
    int8_bf16 = OpenVinoBackend(folder / "openvino/openvino_model_qint8_quantized.xml", inference_precision="bf16")
    tokenized = graph.tokenizer.tokenize([" ".join(sentences[i:i + 6]) for i in range(0, len(sentences) - 6, 3)])
    long_enough = np.flatnonzero(tokenized.lengths >= 64)[:16]
    assert len(long_enough) >= 8
    for length in (16, 31, 32, 33, 64):
        feeds = tokenized.batch(long_enough)
        feeds = {name: value[:, :length] for name, value in feeds.items()}
        assert feeds["attention_mask"].all()  # every text fills the length: no padding
        expected, actual = (b.run(["sentence_embedding"], feeds)[0] for b in (fp32, int8_bf16))
        cos = cosines(expected, actual)
        assert cos.min() >= FLOORS["openvino_qint8_quantized"][1], (length, cos.min())
