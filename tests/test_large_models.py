"""Models whose weights go to external data (onnx/model.onnx + onnx/model.onnx_data): forced on a tiny model, whose
variants (int8, weight-only, OpenVINO) must read it and keep theirs external too, with every file verified by
sha256; the streaming writer's memory; and one real over-2 GiB fp32 graph (marked `large`, out of CI: run it with
`pytest -m large tests/test_large_models.py`, docs/perf/large-models.md).

Run as a script, it builds the Qwen3-Embedding-0.6B-sized bi-encoder of docs/perf/large-models.md:
    python tests/test_large_models.py OUT_DIR [--layers 28 --vocab 151669 ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # run as a script: tests/ holds test_long_inputs

# The real Qwen3-Embedding-0.6B configuration.
QWEN3_EMBEDDING_06B = {"num_hidden_layers": 28, "hidden_size": 1024, "intermediate_size": 3072,
                       "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151669}


def build_qwen3_bi_encoder(folder: Path, *, max_seq_length: int = 64, seed: int = 0, dtype: str = "float32",
                           **config: int):
    """Save a random-weight Qwen3 bi-encoder (Transformer -> last-token Pooling -> Normalize, left padding, the
    Qwen-style byte-level BPE tokenizer of test_long_inputs) to `folder` and return it loaded.

    `config` overrides Qwen3Config's sizes (QWEN3_EMBEDDING_06B is the real model's); vocab_size may exceed the
    tokenizer's (the real model's embedding has unused rows too)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
    from test_long_inputs import qwen_style
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

    folder = Path(folder)
    torch.manual_seed(seed)
    vocab_size = config.get("vocab_size")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=with_vocabulary(qwen_style(), vocab_size), bos_token="<s>",
                                        eos_token="</s>", pad_token="<s>", padding_side="left", model_max_length=max_seq_length)
    assert len(tokenizer) == vocab_size if vocab_size else 500 < len(tokenizer) < 700  # not transformers' fallback
    sizes = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16, "vocab_size": len(tokenizer)} | config
    model = Qwen3Model(Qwen3Config(**sizes, max_position_embeddings=max(512, max_seq_length),
                                   pad_token_id=tokenizer.pad_token_id, dtype=dtype))
    model.to(getattr(torch, dtype)).save_pretrained(folder / "transformer")
    tokenizer.save_pretrained(folder / "transformer")
    del model
    transformer = Transformer(str(folder / "transformer"), max_seq_length=max_seq_length)
    dim = transformer.get_embedding_dimension()
    st = SentenceTransformer(modules=[transformer, Pooling(dim, pooling_mode="lasttoken"), Normalize()], device="cpu")
    st.save(str(folder / "model"))
    return st


def with_vocabulary(tokenizer, size: int | None):
    """`tokenizer` with its BPE vocabulary padded to `size` tokens by filler entries no merge produces (the real
    Qwen3 vocabulary has 151669; st-export refuses a tokenizer with fewer than half the embedding's rows)."""
    import json

    from tokenizers import Tokenizer

    if not size or size <= tokenizer.get_vocab_size():
        return tokenizer
    config = json.loads(tokenizer.to_str())
    vocab, start = config["model"]["vocab"], tokenizer.get_vocab_size()
    vocab.update({f"<filler_{i}>": i for i in range(start, size)})
    padded = Tokenizer.from_str(json.dumps(config))  # the added tokens now follow the fillers: renumber them
    config = json.loads(padded.to_str())
    for special in (config["post_processor"] or {}).get("special_tokens", {}).values():
        special["ids"] = [padded.token_to_id(token) for token in special["tokens"]]
    return Tokenizer.from_str(json.dumps(config))


# --- external data, forced on a tiny model --------------------------------------------------------------------------

# (variant key, largest |diff| of its embeddings to sentence-transformers' (normalized, so at most 2))
# (each pass that reads or writes ONNX files its own way: OpenVINO's other variants read the graph as openvino-int8 does)
EXTERNAL_VARIANTS = {"O1": 1e-5, "O2": 1e-4, "fp16": 5e-3, "int8": 0.2, "int8-weights": 0.05, "int4-weights": 0.3,
                     "openvino-int8": 0.05}
TEXTS = ["What is the capital of France?", "Paris is the capital of France.", "東京は日本の首都です。",
         "Москва — столица России.", "a", "The orchestra rewrote the rules of chess before dawn. " * 6,
         "القاهرة هي عاصمة مصر", "mIxEd CaSe TeXt 😊", "How do I reset my password?", "12345 67890"]


@pytest.fixture(scope="module")
def external(tmp_path_factory, bert_vocab):
    """A tiny bi-encoder exported with external data, with every variant that applies to it."""
    from conftest import build_tiny_transformer
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    from exporters import export
    from quantizers import quantize

    root = tmp_path_factory.mktemp("external")
    build_tiny_transformer(root / "bert", bert_vocab)
    transformer = Transformer(str(root / "bert"), max_seq_length=48)
    model = SentenceTransformer(modules=[transformer, Pooling(32), Normalize()], device="cpu")
    folder = root / "out"
    export(model, folder, external_data=True)
    quantize(folder, list(EXTERNAL_VARIANTS), heldout=TEXTS)
    return model, folder


def test_variants_of_an_external_data_graph_keep_their_weights_external(external):
    from quantizers.variants import variant_config
    from st_runtime.manifest import hash_folder, load_manifest

    model, folder = external
    manifest = load_manifest(folder)
    assert manifest.files == hash_folder(folder)  # every file, external data included, is recorded
    expected = model.encode(TEXTS)
    for key, atol in EXTERNAL_VARIANTS.items():
        variant = manifest.variant(name=variant_config(key).name)
        graph = folder / variant.file
        if variant.backend == "openvino":
            assert graph.with_suffix(".bin").stat().st_size > 10_000
        else:  # the weights sit in <file>_data, recorded in the manifest; the .onnx holds only the graph
            data = Path(f"{graph}_data")
            assert f"{variant.file}_data" in manifest.files and data.stat().st_size > 10_000, key
            assert graph.stat().st_size < data.stat().st_size, key
        actual = __import__("st_runtime").SentenceTransformer(folder, variant=variant.name).encode(TEXTS)
        assert np.abs(actual - expected).max() <= atol, key


@pytest.mark.parametrize("variant", ["fp32", "qint4_weights", "qint8_weights"])
def test_tampered_external_data_of_any_variant_is_refused(external, tmp_path, variant):
    import shutil

    import st_runtime
    from st_runtime.errors import ModelFileError

    _, folder = external
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    file = st_runtime.load_manifest(copy).variant(name=variant).file + "_data"
    data = bytearray((copy / file).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / file).write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=f"{file}.*sha256"):
        st_runtime.SentenceTransformer(copy, variant=variant)


def test_save_onnx_streams_external_weights_one_tensor_at_a_time(tmp_path):
    """Re-writing a graph whose weights are external (what export_onnx does with the traced file) holds about one
    tensor in memory, not the weights."""
    import tracemalloc

    import onnx
    from onnx import helper, numpy_helper

    from exporters.onnx_export import save_onnx

    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((512, 1024), dtype=np.float32) for _ in range(16)]  # 2 MiB each, 32 MiB in all
    nodes, previous = [], "x"
    for i in range(len(weights)):
        nodes.append(helper.make_node("MatMul", [previous, f"w{i}"], [f"y{i}"]))
        nodes.append(helper.make_node("Slice", [f"y{i}", "zero", "k", "one"], [f"s{i}"]))
        previous = f"s{i}"
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 512])],
        [helper.make_tensor_value_info(previous, onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)]
        + [numpy_helper.from_array(np.array([0], np.int64), "zero"), numpy_helper.from_array(np.array([512], np.int64), "k"),
           numpy_helper.from_array(np.array([1], np.int64), "one")])
    (tmp_path / "traced").mkdir()
    onnx.save_model(helper.make_model(graph), str(tmp_path / "traced/model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=False)  # one file per tensor, as torch writes a graph over 2 GiB
    del graph
    proto = onnx.load(str(tmp_path / "traced/model.onnx"), load_external_data=False)
    tracemalloc.start()
    written = save_onnx(proto, tmp_path / "model.onnx", base_dir=tmp_path / "traced", external_data=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert written == [tmp_path / "model.onnx", tmp_path / "model.onnx_data"]
    assert peak < 2 * weights[0].nbytes  # not 32 MiB
    loaded = onnx.load(str(tmp_path / "model.onnx"))
    for i, w in enumerate(weights):
        np.testing.assert_array_equal(numpy_helper.to_array(next(t for t in loaded.graph.initializer if t.name == f"w{i}")), w)
    offsets = [int(e.value) for t in proto.graph.initializer for e in t.external_data if e.key == "offset"]
    assert offsets and all(offset % 4096 == 0 for offset in offsets)  # pages onnxruntime can map


# --- a real graph over 2 GiB ----------------------------------------------------------------------------------------

# One Qwen3 layer with a 140000 x 4096 embedding table: 2.4 GB of fp32 weights, the cheapest graph over 2 GiB.
OVER_2_GIB = {"num_hidden_layers": 1, "hidden_size": 4096, "intermediate_size": 256, "num_attention_heads": 32,
              "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 140_000}


@pytest.mark.large
def test_a_graph_over_2_gib_exports_runs_and_matches(tmp_path):
    """Exported as onnx/model.onnx + onnx/model.onnx_data (automatically: the weights exceed 2 GiB), verified by
    sha256 and run; the export's peak memory stays within 3.5 times the weights (measured in a child process; torch's
    tracer alone holds about 3 times, docs/perf/large-models.md).

    Out of CI: it takes 3 minutes and 7.5 GB on two cores; run it with `pytest -m large tests/test_large_models.py`.
    """
    import json
    import subprocess
    import textwrap

    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import json, resource, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_large_models import build_qwen3_bi_encoder
        from exporters import export
        model = build_qwen3_bi_encoder({str(tmp_path)!r}, **{OVER_2_GIB!r})
        export(model, {str(out)!r})
        texts = {TEXTS!r}
        json.dump({{"rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                   "expected": model.encode(texts).tolist()}}, open({str(tmp_path / "report.json")!r}, "w"))
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    import st_runtime

    report = json.loads((tmp_path / "report.json").read_text())
    data = out / "onnx/model.onnx_data"
    assert data.stat().st_size > 2 * 1024**3 and (out / "onnx/model.onnx").stat().st_size < 50 * 1024**2
    assert "onnx/model.onnx_data" in st_runtime.load_manifest(out).files
    actual = st_runtime.SentenceTransformer(out).encode(TEXTS)
    np.testing.assert_allclose(actual, np.array(report["expected"], dtype=np.float32), atol=1e-4)
    assert report["rss_kb"] * 1024 < 3.5 * data.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build a random-weight Qwen3 bi-encoder (default: "
                                     "Qwen3-Embedding-0.6B's sizes) as a sentence-transformers folder OUT/model.")
    parser.add_argument("out", type=Path)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    for key, value in QWEN3_EMBEDDING_06B.items():
        parser.add_argument("--" + key.replace("_", "-"), type=int, default=value)
    args = parser.parse_args(argv)
    sizes = {key: getattr(args, key) for key in QWEN3_EMBEDDING_06B}
    build_qwen3_bi_encoder(args.out, dtype=args.dtype, max_seq_length=512, **sizes)
    print(f"built {args.out / 'model'}: {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
