"""st-bench: the harness logic (accuracy figures, Spearman, FLOP count, workloads, the regression gate, the
writers) on constructed data and tiny exported models, and one end-to-end `st-bench` run with the
sentence-transformers peers. No timing is asserted: only that every figure is there and means what it says."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import FP32_ATOL, HAS_FASTEMBED, HAS_ST_BACKEND, requires_fastembed

from bench import quality, regression, report, runner, workloads
from bench.cli import EXIT_REGRESSION
from bench.cli import main as bench_main
from bench.flops import count_graph_flops, token_weighted_length
from bench.runner import SCHEMA, BenchConfig, run_bench
from bench.sysinfo import peak_gflops
from exporters import export
from quantizers import DynamicInt8, quantize
from st_runtime.metrics import spearman

ROOT = Path(__file__).resolve().parent.parent
HAS_MULTI_VECTOR = importlib.util.find_spec("sentence_transformers.multi_vector_encoder") is not None


# --- accuracy figures ----------------------------------------------------------------------------------------------

def test_embedding_accuracy_is_one_on_equal_outputs_and_exact_on_known_different_ones():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 8)).astype(np.float32)
    assert quality.embedding_accuracy(a, a.copy()) == pytest.approx({"mean_cosine": 1.0, "min_cosine": 1.0})
    assert quality.embedding_accuracy(a, 3 * a)["min_cosine"] == pytest.approx(1.0)  # cosine ignores scale
    ref = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    cand = np.array([[1, 1], [0, 1], [0, 1]], np.float32)  # cos 1/sqrt(2), 0, 1
    figures = quality.embedding_accuracy(ref, cand)
    assert figures["mean_cosine"] == pytest.approx((2**-0.5 + 0 + 1) / 3)
    assert figures["min_cosine"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="shape"):
        quality.embedding_accuracy(ref, cand[:2])


def test_spearman_on_a_known_case():
    # d = (-1, 1, -1, 1, 0): rho = 1 - 6 * 4 / (5 * 24) = 0.8
    assert spearman(np.array([1, 2, 3, 4, 5]), np.array([2, 1, 4, 3, 5])) == pytest.approx(0.8)
    assert spearman(np.arange(10), -np.arange(10.0) ** 3) == pytest.approx(-1.0)


def test_lee_spearman_follows_the_model_similarity_order():
    docs = np.array([[1, 0], [1, 0.1], [0, 1]], np.float32)  # pairs (0,1), (0,2), (1,2): cosines high, 0, low
    assert quality.lee_spearman(docs, np.array([0.9, 0.1, 0.2])) == pytest.approx(1.0)
    assert quality.lee_spearman(docs, np.array([0.1, 0.9, 0.8])) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="human scores"):
        quality.lee_spearman(docs, np.array([0.1, 0.2]))


def test_ranking_accuracy_per_query_and_overall():
    ref = np.array([0.1, 0.5, 0.9, 0.2, 0.4, 0.8])  # two queries of 3 documents
    same = quality.ranking_accuracy(ref, ref + 1e-3, group=3)
    assert same["spearman"] == pytest.approx(1.0) and same["mean_query_spearman"] == pytest.approx(1.0)
    swapped = quality.ranking_accuracy(ref, np.array([0.9, 0.5, 0.1, 0.2, 0.4, 0.8]), group=3)
    assert swapped["mean_query_spearman"] == pytest.approx(0.0)  # query 1 reversed (-1), query 2 kept (+1)
    assert swapped["mean_abs_diff"] == pytest.approx(1.6 / 6)


def test_rank_overlap_of_top_k_lists():
    ref = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    assert quality.rank_overlap(ref, ref[:, ::-1]) == {"top4_overlap": 1.0, "min_top4_overlap": 1.0}  # order ignored
    half = np.array([[0, 1, 8, 9], [4, 5, 6, 7]])
    assert quality.rank_overlap(ref, half) == {"top4_overlap": 0.75, "min_top4_overlap": 0.5}
    with pytest.raises(ValueError, match="shape"):
        quality.rank_overlap(ref, ref[:1])


def _csr(dense: np.ndarray) -> dict[str, np.ndarray]:
    from bench.worker import sparse_parts

    return sparse_parts(dense)


def test_sparse_accuracy_top_k_overlap():
    ref = np.zeros((3, 50), np.float32)
    ref[0, [1, 2, 3]] = [3, 2, 1]
    ref[1, [4, 5]] = [1, 1]
    ref[2, 7] = 5
    assert quality.sparse_accuracy(_csr(ref), _csr(ref))["top32_overlap"] == pytest.approx(1.0)
    other = np.zeros_like(ref)
    other[:, 40:45] = 1  # shares nothing with the reference
    figures = quality.sparse_accuracy(_csr(ref), _csr(other))
    assert figures["top32_overlap"] == 0.0 and figures["mean_cosine"] == 0.0
    half = ref.copy()
    half[1, 5] = 0
    assert quality.sparse_accuracy(_csr(ref), _csr(half))["min_top32_overlap"] == pytest.approx(0.5)
    # CSR parts survive the round trip through dense_rows
    assert np.array_equal(quality.dense_rows(_csr(ref), 0, 3), ref)


# --- FLOPs, peak, workloads ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_source_and_folder(tmp_path_factory, tiny_transformers_dir, bert_vocab):
    """A tiny bi-encoder saved as a sentence-transformers folder, exported, with a dynamic int8 variant."""
    from conftest import build_tiny_transformer
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    base = tiny_transformers_dir / "bert-0"
    if not base.exists():
        build_tiny_transformer(base, bert_vocab, arch="bert", seed=0)
    transformer = Transformer(str(base), max_seq_length=48)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension()), Normalize()],
                                device="cpu")
    root = tmp_path_factory.mktemp("bench-tiny")
    model.save(str(root / "source"))
    export(model, root / "exported")
    quantize(root / "exported", [DynamicInt8()])
    return root / "source", root / "exported"


def graph_runs(folder, items, batch_size: int) -> int:
    """Graph runs of one encode / predict of `items` on one thread: batches of batch_size and the CPU token budget."""
    import st_runtime
    from st_runtime.base import length_sorted_batches

    model = st_runtime.load(folder, intra_op_num_threads=1)
    lengths = model.tokenizer.tokenize(items).lengths
    return len(list(length_sorted_batches(lengths, batch_size, max_tokens=model.backend.batch_tokens)))


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_profile_splits_one_encode_into_its_parts(tiny_source_and_folder, precision):
    import st_runtime
    from bench.profile import markdown, profile_variant

    _, folder = tiny_source_and_folder
    variant = next(v.name for v in st_runtime.load_manifest(folder).variants if v.precision == precision)
    texts = [f"sentence number {i} " + "word " * (i % 13) for i in range(70)]
    result = profile_variant(folder, variant, texts, threads=1, batch_size=16)
    assert result["variant"] == variant and result["texts"] == 70 and result["batches"] == graph_runs(folder, texts, 16)
    assert 0 < result["tokenize_s"] < result["total_s"] and 0 < result["graph_s"] < result["total_s"]
    assert result["rest_s"] == pytest.approx(result["total_s"] - result["tokenize_s"] - result["graph_s"])
    assert result["tokens"] < result["padded_tokens"]
    assert "MatMul" in "".join(result["ops"]) and all(seconds >= 0 for seconds in result["ops"].values())
    assert f"### {variant}" in markdown(result) and "| graph runs |" in markdown(result)


def test_profile_splits_one_predict_of_a_cross_encoder(tiny_transformers_dir, bert_vocab, tmp_path):
    from sentence_transformers import CrossEncoder
    from test_cross_encoder import build_tiny_cross_encoder

    from bench.profile import markdown, profile_variant

    source = tiny_transformers_dir / "ce-profile"
    if not source.exists():
        build_tiny_cross_encoder(source, bert_vocab, arch="bert", num_labels=1)
    export(CrossEncoder(str(source), device="cpu"), tmp_path / "exported")
    pairs = [(f"query {i % 3}", "a document " + "word " * (i % 11)) for i in range(40)]
    result = profile_variant(tmp_path / "exported", "fp32", pairs, threads=1, batch_size=16)
    assert result["call"] == "predict" and result["texts"] == 40
    assert result["batches"] == graph_runs(tmp_path / "exported", pairs, 16)
    assert 0 < result["graph_s"] < result["total_s"] and result["tokens"] < result["padded_tokens"]
    assert "MatMul" in "".join(result["ops"])
    assert "predict of 40 pairs" in markdown(result)


def test_flop_count_of_a_tiny_bert(tiny_source_and_folder):
    _, folder = tiny_source_and_folder
    flops = count_graph_flops(folder / "onnx/model.onnx")
    # 2 layers x (Q, K, V, O: 32x32; FFN 32x64 and 64x32) weights; 2 attention MatMuls per layer
    assert flops.weight_flops_per_token == 2 * 2 * (4 * 32 * 32 + 2 * 32 * 64)
    assert flops.attention_matmuls == 4 and flops.hidden == 32
    assert flops.per_token(10.0) == flops.weight_flops_per_token + 2 * 4 * 32 * 10
    assert token_weighted_length(np.array([2, 4])) == pytest.approx((4 + 16) / 6)


def test_peak_estimate_scales_with_cores_clock_and_isa():
    avx512 = peak_gflops(2, 2000, {"avx512f", "avx2", "fma", "avx512_vnni"})
    assert avx512["fp32"] == pytest.approx(2 * 2.0 * 16 * 2 * 2) and avx512["int8"] == pytest.approx(4 * avx512["fp32"])
    avx2 = peak_gflops(2, 2000, {"avx2", "fma"})
    assert avx2["fp32"] == pytest.approx(avx512["fp32"] / 2) and avx2["bf16"] == avx2["fp32"]
    assert peak_gflops(1, None, set())["fp32"] is None and "estimate" in avx512["note"]


def test_lee_workload_and_fallback(monkeypatch, tmp_path):
    if workloads.gensim_test_data() is None:
        pytest.skip("gensim is not installed")
    work = workloads.build_workload("sentence-embedding", max_texts=40, latency_n=7)
    assert len(work.corpus) == 40 and len(work.latency_texts) == 7 and len(work.queries) == 7
    assert len(work.lee_documents) == 50 and len(work.lee_scores) == 1225
    assert "£" in " ".join(work.lee_documents)  # Latin-1, as gensim reads it
    ranking = workloads.build_workload("text-ranking", max_texts=250, rerank_queries=20)
    assert len(ranking.rerank) == 3 and all(len(docs) == 100 for _, docs in ranking.rerank)
    assert len(ranking.pairs) == 300 and not ranking.lee_documents
    saved = work.save(tmp_path / "w.json")
    assert workloads.Workload.load(saved) == work

    monkeypatch.setattr(workloads, "gensim_test_data", lambda: None)
    fallback = workloads.build_workload("sentence-embedding")
    assert len(fallback.corpus) == 600 and not fallback.lee_documents and "gensim" in fallback.notes[0]
    corpus = tmp_path / "c.txt"
    corpus.write_text("one\n\ntwo three\n", encoding="utf-8")
    assert workloads.build_workload("sentence-embedding", corpus_file=corpus).corpus == ("one", "two three")


def test_token_counts_match_the_tokenizer(tiny_source_and_folder):
    _, folder = tiny_source_and_folder
    counts = workloads.token_counts(folder, ["a", "hello world", "word " * 200])
    assert counts[0] == 3 and counts[1] == 4 and counts[2] == 48  # [CLS] .. [SEP]; truncated at max_seq_length


# --- regression gate -----------------------------------------------------------------------------------------------

def _document(speedup: float = 2.0, cosine: float = 0.99, rows: tuple[str, ...] = ("st:torch", "st_runtime:int8")):
    table = []
    for row_id in rows:
        ref = row_id == "st:torch"
        table.append({"id": row_id, "label": row_id, "engine": "st-torch" if ref else "st_runtime", "variant": None,
                      "precision": "fp32", "backend": "onnxruntime", "reference": ref, "status": "ok", "note": None,
                      "metrics": {"texts_per_s": 100.0 * (1 if ref else speedup), "texts_per_s_min": 90.0,
                                  "texts_per_s_max": 110.0, "tokens_per_s": 3000.0, "speedup": 1.0 if ref else speedup,
                                  "latency_speedup": 1.0 if ref else speedup,
                                  "latency_ms": {"p50": 5.0, "p95": 6.0, "p99": 7.0},
                                  "cold_start_s": 1.0, "peak_rss_mb": 300.0, "model_size_mb": 80.0, "gflops": 50.0,
                                  "peak_fraction": 0.1, "peak_precision": "fp32",
                                  "accuracy": {"mean_cosine": 1.0 if ref else cosine, "min_cosine": 0.98,
                                               "lee_spearman": 0.5083, "mean_abs_diff": 0.0}}})
    return {"schema": SCHEMA, "folder": "exported/tiny", "task": "sentence-embedding", "reference": "st:torch",
            "headline_accuracy": "mean_cosine",
            "settings": {"threads": 2, "batch_size": 32, "repeats": 3, "warmup": 1, "latency_n": 100, "max_texts": None},
            "workload": {"corpus": "lee", "texts": 2000, "pairs": 0, "queries": 100, "real_tokens": 60172,
                         "median_tokens": 29.0, "lee_documents": 50},
            "machine": {"model": "CPU", "physical_cores": 2, "mhz": 2600.0, "clock_source": "test", "isa": "avx512_vnni",
                        "flags": ["avx512f"], "threads_used": 2,
                        "peak_gflops_estimate": {"fp32": 300.0, "bf16": 600.0, "int8": 1200.0, "note": "estimate"}},
            "flops": None, "versions": {"python": "3"}, "notes": [], "rows": table}


def test_regression_gate_passes_within_tolerance_and_trips_beyond_it():
    baseline = _document(speedup=2.0, cosine=0.99)
    within = regression.compare(_document(speedup=1.85, cosine=0.989), baseline, tolerance=0.10)
    assert not within.failed() and within.compared > 0
    slower = regression.compare(_document(speedup=1.7), baseline, tolerance=0.10)
    assert slower.failed()
    assert {(f.row, f.metric) for f in slower.regressions} == {("st_runtime:int8", "speedup"),
                                                               ("st_runtime:int8", "latency_speedup")}
    assert "st_runtime:int8: speedup 1.7" in str(slower.regressions[0])
    worse = regression.compare(_document(cosine=0.985), baseline, tolerance=0.10, accuracy_tolerance=0.002)
    assert [f.metric for f in worse.regressions] == ["accuracy.mean_cosine"]


def test_regression_gate_reports_missing_rows_and_refuses_a_changed_reference():
    baseline = _document()
    now = _document(rows=("st:torch",))
    comparison = regression.compare(now, baseline)
    assert comparison.missing == ["st_runtime:int8 (not in this run)"]
    assert not comparison.failed() and comparison.failed(fail_on_missing=True)
    other_reference = _document()
    other_reference["reference"] = "st_runtime:fp32"
    assert regression.compare(other_reference, baseline).problems


@pytest.mark.parametrize("text, value", [("10%", 0.10), ("0.05", 0.05), ("0%", 0.0)])
def test_parse_tolerance(text, value):
    assert regression.parse_tolerance(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["abc", "150%", "-1"])
def test_parse_tolerance_refuses_nonsense(text):
    with pytest.raises(ValueError, match="tolerance"):
        regression.parse_tolerance(text)


def test_cli_exit_codes_of_the_gate(monkeypatch, tmp_path, capsys, tiny_source_and_folder):
    import bench.runner

    _, folder = tiny_source_and_folder
    baseline = tmp_path / "baseline.json"
    report.write_json(_document(speedup=2.0), baseline)
    monkeypatch.setattr(bench.runner, "run_bench", lambda config: _document(speedup=1.5))
    assert bench_main([str(folder), "--baseline", str(baseline), "--tolerance", "10%", "-q"]) == EXIT_REGRESSION
    assert "REGRESSION: st_runtime:int8: speedup" in capsys.readouterr().err
    monkeypatch.setattr(bench.runner, "run_bench", lambda config: _document(speedup=1.95))
    assert bench_main([str(folder), "--baseline", str(baseline), "-q"]) == 0
    assert "no regression" in capsys.readouterr().err
    assert bench_main([str(folder), "--baseline", str(tmp_path / "missing.json"), "-q"]) == 1
    assert "does not exist" in capsys.readouterr().err


# --- writers -------------------------------------------------------------------------------------------------------

def test_writers_produce_json_markdown_and_png(tmp_path):
    document = _document()
    document["rows"].append({"id": "st:openvino", "label": "openvino peer", "status": "skipped", "note": "no optimum-intel",
                             "reference": False})
    report.write_json(document, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["rows"][1]["id"] == "st_runtime:int8"
    report.write_markdown(document, tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert "| st:torch [reference] |" in text and "openvino peer: skipped (no optimum-intel)" in text
    assert "ESTIMATE" in text
    report.write_plot(document, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = report.terminal_table(document)
    assert "2.00x" in table and "0.990000" in table


# --- end to end ----------------------------------------------------------------------------------------------------

def test_st_bench_end_to_end_on_a_tiny_model(tiny_source_and_folder, tmp_path):
    source, folder = tiny_source_and_folder
    out = tmp_path / "out"
    command = [sys.executable, "-m", "bench.cli", str(folder), "--source", str(source), "--max-texts", "24",
               "--repeats", "1", "--latency-n", "4", "--threads", "1", "--json", str(out) + ".json",
               "--peers", "torch", "onnx", "onnx-int8",  # the OpenVINO peer's export alone takes ~15 s; checked by hand
               "--markdown", str(out) + ".md", "--plot", str(out) + ".png", "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(Path(str(out) + ".json").read_text())
    rows = {r["id"]: r for r in document["rows"]}
    assert document["reference"] == "st:torch" and document["settings"]["threads"] == 1
    int8 = next(v.name for v in __import__("st_runtime").load_manifest(folder).variants if v.precision == "int8")
    expected_ok = {"st:torch", "st_runtime:fp32", f"st_runtime:{int8}"} | ({"st:onnx"} if HAS_ST_BACKEND else set())
    assert expected_ok <= {i for i, r in rows.items() if r["status"] == "ok"}, {i: r.get("note") for i, r in rows.items()}
    st_int8 = [r for i, r in rows.items() if i.startswith("st:onnx:")]  # sentence-transformers' own int8
    if HAS_ST_BACKEND:
        assert any(r["status"] == "ok" for r in st_int8)
    else:  # the peer rows say why they are missing instead of failing the run
        assert rows["st:onnx"]["status"] == "skipped" and "optimum" in rows["st:onnx"]["note"]
        assert st_int8 and all(r["status"] == "skipped" for r in st_int8)
    assert "st:openvino" not in rows
    for row_id in expected_ok:
        m = rows[row_id]["metrics"]
        for key in ("texts_per_s", "tokens_per_s", "speedup", "latency_speedup", "cold_start_s", "peak_rss_mb",
                    "model_size_mb", "gflops"):
            assert m[key] > 0, (row_id, key)
        assert m["latency_ms"]["p50"] <= m["latency_ms"]["p99"]
        assert -1 <= m["accuracy"]["lee_spearman"] <= 1
    assert rows["st:torch"]["metrics"]["speedup"] == 1.0
    assert rows["st:torch"]["metrics"]["accuracy"]["mean_cosine"] == pytest.approx(1.0)
    assert rows["st_runtime:fp32"]["metrics"]["accuracy"]["min_cosine"] > 0.99999  # same model, same texts
    if HAS_ST_BACKEND:
        assert rows["st:onnx"]["metrics"]["accuracy"]["min_cosine"] > 0.99999
    assert rows[f"st_runtime:{int8}"]["metrics"]["peak_precision"] == "int8"
    assert document["workload"]["texts"] == 24 and document["flops"]["weight_flops_per_token"] > 0
    assert Path(str(out) + ".png").stat().st_size > 1000
    assert "st_runtime fp32" in Path(str(out) + ".md").read_text()
    assert "speed-up" in done.stdout

    # the run is its own baseline: comparing it with itself passes the gate
    assert not regression.compare(document, copy.deepcopy(document)).failed()


# the texts of a parity check: one past max_seq_length (48), mixed lengths so that batches pad and are sorted
PEER_TEXTS = ["a", "The orchestra rewrote the summer festival before dawn. " * 3, "hello world", "word " * 200,
              "What is the capital of France?"]


@pytest.mark.parametrize("engine", ["ort-floor", pytest.param("fastembed", marks=requires_fastembed)])
def test_file_peers_give_st_runtime_embeddings(tiny_source_and_folder, engine):
    import st_runtime
    from bench.worker import load_engine

    _, folder = tiny_source_and_folder
    model, times = load_engine({"engine": engine, "path": str(folder), "file_name": "onnx/model.onnx", "threads": 1})
    assert times["import_s"] >= 0 and times["load_s"] > 0
    expected = st_runtime.SentenceTransformer(folder).encode(PEER_TEXTS, batch_size=2, show_progress_bar=False)
    actual = model.encode(PEER_TEXTS, batch_size=2, show_progress_bar=False)
    assert actual.shape == expected.shape and actual.dtype == np.float32
    assert float(np.abs(actual - expected).max()) <= FP32_ATOL


def test_st_bench_runs_the_floor_and_fastembed_rows(tiny_source_and_folder):
    _, folder = tiny_source_and_folder
    document = run_bench(BenchConfig(folder=folder, variants=("fp32",), peers=("floor", "fastembed"), threads=1,
                                     repeats=1, warmup=0, max_texts=24, latency_n=3, progress=False))
    rows = {r["id"]: r for r in document["rows"]}
    assert list(rows) == ["floor:fp32", "fastembed:fp32", "st_runtime:fp32"]
    assert document["reference"] == "st_runtime:fp32"
    assert rows["floor:fp32"]["label"] == "onnxruntime floor (fp32, bare loop)"
    fastembed = rows["fastembed:fp32"]
    assert fastembed["label"] == "fastembed (fp32, exported file)"
    ran = ["floor:fp32"] + ["fastembed:fp32"] * HAS_FASTEMBED
    for row_id in ran:
        assert rows[row_id]["status"] == "ok", rows[row_id]["note"]
        m = rows[row_id]["metrics"]
        assert m["texts_per_s"] > 0 and m["speedup"] > 0 and m["latency_ms"]["calls"] == 3 and m["model_size_mb"] > 0
        assert m["accuracy"]["min_cosine"] > 0.99999  # the same graph and tokens as the st_runtime fp32 reference
    if not HAS_FASTEMBED:  # the newest line: one line says why the row is missing
        assert fastembed["status"] == "skipped" and "fastembed not installed" in fastembed["note"]
        assert "fastembed (fp32, exported file): skipped (fastembed not installed" in report.terminal_table(document)


@pytest.fixture(scope="module")
def tiny_reranker_and_splade(tmp_path_factory, bert_vocab):
    """A tiny exported cross-encoder and a tiny exported SPLADE model."""
    import torch
    from helpers import tiny_tokenizer
    from sentence_transformers import CrossEncoder, SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

    root = tmp_path_factory.mktemp("bench-kinds")
    tokenizer = tiny_tokenizer(bert_vocab, model_max_length=64)
    sizes = {"vocab_size": tokenizer.vocab_size, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 64}
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(num_labels=1, initializer_range=0.2, **sizes)).save_pretrained(root / "ce")
    tokenizer.save_pretrained(root / "ce")
    export(CrossEncoder(str(root / "ce"), device="cpu"), root / "ce-out")
    mlm = BertForMaskedLM(BertConfig(**sizes))
    with torch.no_grad():
        mlm.cls.predictions.bias.fill_(-0.4)
    mlm.save_pretrained(root / "mlm")
    tokenizer.save_pretrained(root / "mlm")
    splade = SparseEncoder(modules=[Transformer(str(root / "mlm"), transformer_task="fill-mask", max_seq_length=48),
                                    SpladePooling("max")], device="cpu", prompts={"query": "query: "})
    export(splade, root / "splade-out")
    return root / "ce-out", root / "splade-out"


@pytest.mark.parametrize("kind", ["text-ranking", "sparse-embedding"])
def test_run_bench_on_rerankers_and_sparse_encoders(tiny_reranker_and_splade, kind):
    folder = tiny_reranker_and_splade[0 if kind == "text-ranking" else 1]
    document = run_bench(BenchConfig(folder=folder, peers=(), threads=1, repeats=1, warmup=0, max_texts=30,
                                     latency_n=3, progress=False))
    assert document["task"] == kind and document["reference"] == "st_runtime:fp32"
    row = next(r for r in document["rows"] if r["id"] == "st_runtime:fp32")
    assert row["status"] == "ok", row["note"]
    m = row["metrics"]
    if kind == "text-ranking":
        assert document["workload"]["pairs"] == 100  # one query x 100 documents (the corpus cycled)
        assert m["accuracy"]["spearman"] == pytest.approx(1.0) and m["accuracy"]["mean_query_spearman"] == pytest.approx(1.0)
    else:
        assert m["accuracy"]["top32_overlap"] == 1.0 and m["accuracy"]["query_top32_overlap"] == 1.0
        assert m["query_texts_per_s"] > 0 and m["query_speedup"] == 1.0
        assert -1 <= m["accuracy"].get("lee_spearman", 0) <= 1
    assert m["speedup"] == 1.0 and m["latency_ms"]["calls"] >= 1
    assert report.terminal_table(document)


def test_rounds_run_every_row_again_and_pool_their_repeats(tiny_reranker_and_splade):
    document = run_bench(BenchConfig(folder=tiny_reranker_and_splade[1], peers=(), threads=1, repeats=1, warmup=0,
                                     max_texts=30, latency_n=3, rounds=2, progress=False))
    row = next(r for r in document["rows"] if r["id"] == "st_runtime:fp32")
    assert row["status"] == "ok", row["note"]
    assert document["settings"]["rounds"] == 2
    assert row["metrics"]["latency_ms"]["calls"] == 2 * document["workload"]["queries"]  # both rounds' calls
    assert "in each of 2 rounds" in report.markdown(document)


def test_merge_rounds():
    first = {"bulk_s": [2.0], "latency_s": [[0.1, 0.2]], "timings": {"cold_start_s": 1.0}, "peak_rss_mb": 300.0,
             "info": {"round": 1}}
    second = {"bulk_s": [1.0], "latency_s": [[0.3]], "timings": {"cold_start_s": 3.0}, "peak_rss_mb": 200.0,
              "info": {"round": 2}}
    merged = runner.merge_rounds([first, second])
    assert merged["bulk_s"] == [2.0, 1.0] and merged["latency_s"] == [[0.1, 0.2], [0.3]]
    assert merged["timings"] == {"cold_start_s": 2.0} and merged["peak_rss_mb"] == 300.0 and merged["info"] == {"round": 2}
    assert runner.merge_rounds([first, {"error": "worker exited with 1"}]) == {"error": "worker exited with 1"}


def test_multi_vector_workload(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"text number {i} about late interaction" for i in range(150)), encoding="utf-8")
    work = workloads.build_workload("multi-vector-embedding", corpus_file=corpus, latency_n=5, rerank_queries=20)
    assert len(work.rerank) == 2 and all(len(docs) == 100 for _, docs in work.rerank)  # about as many pairs as texts
    assert len(work.queries) == 5 and not work.lee_documents  # MaxSim is no one-vector similarity: no Lee figure
    from quantizers.texts import heldout_texts

    assert work.heldout == tuple(heldout_texts())  # the texts of the manifest's MaxSim accuracy
    assert workloads.build_workload("sentence-embedding", corpus_file=corpus).heldout == ()


@pytest.fixture(scope="module")
def tiny_multi_vector(tmp_path_factory, tiny_transformers_dir, bert_vocab):
    """A tiny ColBERT-shaped MultiVectorEncoder (query expansion, punctuation skiplist, query/document prompts) saved
    as a sentence-transformers folder, exported, with a dynamic int8 variant."""
    import string

    import torch
    from conftest import build_tiny_transformer
    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask

    base = tiny_transformers_dir / "bert-0"
    if not base.exists():
        build_tiny_transformer(base, bert_vocab, arch="bert", seed=0)
    transformer = Transformer(str(base), max_seq_length=48, document_length=40,
                              query_expansion={"strategy": "fixed", "length": 16})
    torch.manual_seed(1)
    model = MultiVectorEncoder(modules=[
        transformer,
        Dense(32, 16, bias=False, activation_function=torch.nn.Identity(), module_input_name="token_embeddings"),
        MultiVectorMask(skiplist_words=list(string.punctuation)),
        Normalize(module_input_name="token_embeddings"),
    ], device="cpu", prompts={"query": "query: ", "document": "passage: "})
    root = tmp_path_factory.mktemp("bench-multi-vector")
    model.save(str(root / "source"))
    export(model, root / "exported")
    quantize(root / "exported", [DynamicInt8()])
    return root / "source", root / "exported"


@pytest.mark.skipif(not HAS_MULTI_VECTOR, reason="MultiVectorEncoder is new in sentence-transformers 6; this is the "
                                                  "sentence-transformers 5 line")
def test_run_bench_on_a_multi_vector_encoder(tiny_multi_vector, tmp_path):
    import st_runtime

    source, folder = tiny_multi_vector
    document = run_bench(BenchConfig(folder=folder, source=source, peers=("torch", "onnx"), threads=1, repeats=1,
                                     warmup=0, max_texts=150, latency_n=3, progress=False))
    assert document["task"] == "multi-vector-embedding" and document["reference"] == "st:torch"
    assert document["headline_accuracy"] == "spearman" and document["workload"]["heldout_texts"] == 200
    assert document["workload"]["rerank_queries"] == 2
    rows = {r["id"]: r for r in document["rows"]}
    int8 = next(v.name for v in st_runtime.load_manifest(folder).variants if v.precision == "int8")
    for row_id in ("st:torch", "st_runtime:fp32", f"st_runtime:{int8}"):
        assert rows[row_id]["status"] == "ok", rows[row_id]["note"]
        m = rows[row_id]["metrics"]
        assert m["texts_per_s"] > 0 and m["query_texts_per_s"] > 0 and m["latency_ms"]["calls"] == 3
        assert 0.9 <= m["accuracy"]["spearman"] <= 1.0 and 0 <= m["accuracy"]["top10_overlap"] <= 1.0
    # sentence-transformers' own backend="onnx" of a MultiVectorEncoder: optimum-onnx does not install beside it
    assert rows["st:onnx"]["status"] == "ok" or "optimum" in rows["st:onnx"]["note"]
    fp32 = rows["st_runtime:fp32"]["metrics"]
    assert fp32["accuracy"]["spearman"] == pytest.approx(1.0, abs=1e-6)  # the same model, same texts, as torch
    assert fp32["accuracy"]["mean_abs_diff"] < 1e-4
    assert fp32["accuracy"]["top10_overlap"] == 1.0 and fp32["accuracy"]["min_top10_overlap"] == 1.0
    assert fp32["speedup"] > 0 and "query_speedup" in fp32
    table = report.terminal_table(document)
    assert "MaxSim Spearman" in table and "queries/s" in table and "docs/s" in table and "rank: 2 queries" in table
    report.write_markdown(document, tmp_path / "r.md")
    assert "st_runtime fp32" in (tmp_path / "r.md").read_text()
    report.write_plot(document, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_peak_rss_is_the_rows_own_not_st_bench_s():
    """Linux keeps a forked child's ru_maxrss across exec, so a worker started by a large st-bench read at least the
    parent's size; peak_rss_mb reads VmHWM, which starts afresh at exec."""
    ballast = bytearray(300 * 1024 * 1024)
    ballast[:: 4096] = b"\1" * len(ballast[:: 4096])  # resident, not just reserved
    code = ("import resource; from bench.worker import peak_rss_mb; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, peak_rss_mb())")
    inherited, own = map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                               check=True).stdout.split())
    assert inherited > 300 and own < 100, (inherited, own)
    del ballast
