"""st-embed (corpus files to embeddings files, resumable shards), the multi-process encode pool, and Ray Data, on
tiny exported models; every result is compared with a one-shot in-process encode of the same texts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import build_tiny_transformer, varied_sentences

import st_runtime
from exporters import export
from st_runtime.embed.cli import main as embed_main
from st_runtime.pool import EncodePool, token_budget_batches

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
ATOL = 1e-5


@pytest.fixture(scope="module")
def folders(tmp_path_factory, bert_vocab, mlm_dir):
    """Tiny exported (bi-encoder, SPLADE, cross-encoder) folders."""
    import torch
    from helpers import tiny_tokenizer
    from sentence_transformers import CrossEncoder, SentenceTransformer, SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from sentence_transformers.sparse_encoder.modules import SpladePooling
    from transformers import BertConfig, BertForSequenceClassification

    root = tmp_path_factory.mktemp("embed-models")
    build_tiny_transformer(root / "bert", bert_vocab)
    transformer = Transformer(str(root / "bert"), max_seq_length=48)
    bi = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension())], device="cpu",
                             prompts={"query": "query: ", "document": "passage: "})
    export(bi, root / "bi")
    tokenizer = tiny_tokenizer(bert_vocab, model_max_length=64)
    sizes = {"vocab_size": tokenizer.vocab_size, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 64}
    splade = SparseEncoder(modules=[Transformer(str(mlm_dir), transformer_task="fill-mask", max_seq_length=48),
                                    SpladePooling("max")], device="cpu")
    export(splade, root / "splade")
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(num_labels=1, **sizes)).save_pretrained(root / "ce-src")
    tokenizer.save_pretrained(root / "ce-src")
    export(CrossEncoder(str(root / "ce-src"), device="cpu"), root / "ce")
    return {"bi": root / "bi", "splade": root / "splade", "ce": root / "ce"}


@pytest.fixture(scope="module")
def texts():
    return [t for t in varied_sentences(120, seed=3) if t.strip()]


@pytest.fixture(scope="module")
def reference(folders, texts):
    return st_runtime.SentenceTransformer(folders["bi"]).encode(texts)


def write_input(path: Path, texts: list, ids: list | None = None) -> Path:
    ids = ids if ids is not None else [f"doc-{i}" for i in range(len(texts))]
    if path.suffix == ".txt":
        path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(ids, texts, strict=True)),
                        encoding="utf-8")
    elif path.suffix == ".csv":
        import csv

        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "text"])
            writer.writerows(zip(ids, texts, strict=True))
    else:
        pq.write_table(pa.table({"id": ids, "text": texts}), path)
    return path


def read_output(path: Path) -> tuple[list, np.ndarray | None]:
    table = pq.read_table(path)
    ids = table.column("id").to_pylist()
    if "embedding" in table.column_names:
        return ids, table.column("embedding").to_pylist()
    return ids, None


def run(*args: str) -> int:
    return embed_main([str(a) for a in args] + ["--no-progress"])


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv", ".parquet"])
def test_each_input_format(folders, texts, reference, tmp_path, suffix):
    src = write_input(tmp_path / f"corpus{suffix}", [" ".join(t.split()) for t in texts])
    expected = st_runtime.SentenceTransformer(folders["bi"]).encode([" ".join(t.split()) for t in texts])
    id_args = [] if suffix == ".txt" else ["--id-column", "id"]
    assert run(folders["bi"], "--input", src, "--output", tmp_path / "out.parquet", "--shard-rows", 17, *id_args) == 0
    ids, emb = read_output(tmp_path / "out.parquet")
    assert ids == (list(range(len(texts))) if suffix == ".txt" else [f"doc-{i}" for i in range(len(texts))])
    np.testing.assert_allclose(np.array(emb), expected, atol=ATOL)
    assert not (tmp_path / "out.parquet.parts").exists()
    assert run(folders["bi"], "--input", src, "--output", tmp_path / "out.parquet") == 1  # exists: refused


def test_npy_output_and_prompt(folders, texts, tmp_path):
    src = write_input(tmp_path / "c.jsonl", texts, ids=list(range(100, 100 + len(texts))))
    assert run(folders["bi"], "--input", src, "--id-column", "id", "--output", tmp_path / "e.npy",
               "--prompt-name", "query", "--batch-tokens", 300) == 0
    emb, ids = np.load(tmp_path / "e.npy"), np.load(tmp_path / "e.ids.npy")
    assert ids.dtype == np.int64 and ids.tolist() == list(range(100, 100 + len(texts)))
    expected = st_runtime.SentenceTransformer(folders["bi"]).encode(texts, prompt_name="query")
    np.testing.assert_allclose(emb, expected, atol=ATOL)


def test_bad_row_policies(folders, tmp_path, capsys):
    rows = [{"id": "a", "text": "hello"}, {"id": "b", "text": None}, {"id": "c", "text": ""}, {"id": "d", "text": 5},
            {"id": "e"}, {"id": "f", "text": "world"}]
    src = tmp_path / "bad.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "o.parquet"
    assert run(folders["bi"], "--input", src, "--id-column", "id", "--output", out) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("st-embed: error: Row 1 (id 'b') is NoneType") and "--on-bad-row" in err[0]
    assert run(folders["bi"], "--input", src, "--id-column", "id", "--output", out, "--on-bad-row", "skip",
               "--overwrite") == 0
    assert "4 bad rows" in capsys.readouterr().err
    ids, emb = read_output(out)
    expected = st_runtime.SentenceTransformer(folders["bi"]).encode(["hello", "world"])
    assert ids == ["a", "f"]
    np.testing.assert_allclose(np.array(emb), expected, atol=ATOL)
    assert run(folders["bi"], "--input", src, "--id-column", "id", "--output", out, "--on-bad-row", "empty",
               "--overwrite") == 0
    ids, emb = read_output(out)
    assert ids == list("abcdef") and [e is None for e in emb] == [False, True, True, True, True, False]
    np.testing.assert_allclose(np.array([emb[0], emb[5]]), expected, atol=ATOL)


def test_sparse_and_refusals(folders, texts, tmp_path, capsys):
    src = write_input(tmp_path / "c.parquet", texts[:30])
    out = tmp_path / "s.parquet"
    assert run(folders["splade"], "--input", src, "--id-column", "id", "--output", out, "--shard-rows", 8) == 0
    table = pq.read_table(out)
    assert table.column_names == ["id", "indices", "values"]
    expected = st_runtime.SparseEncoder(folders["splade"]).encode(texts[:30], sparse_format="numpy")
    for i, (idx, val) in enumerate(zip(table.column("indices").to_pylist(), table.column("values").to_pylist(),
                                       strict=True)):
        e_idx, e_val = expected.row(i)
        assert idx == e_idx.tolist()
        np.testing.assert_allclose(val, e_val, atol=ATOL)
    capsys.readouterr()
    assert run(folders["splade"], "--input", src, "--output", tmp_path / "s.npy") == 1
    assert run(folders["ce"], "--input", src, "--output", tmp_path / "c.parquet2") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "parquet" in err[0] and "cross-encoder" in err[1] and all(e.startswith("st-embed: error:") for e in err)


def test_resume_after_kill_9_and_shard_atomicity(folders, tmp_path):
    texts = [f"{t} {i}" for i, t in enumerate(varied_sentences(2000, seed=11)) if t.strip()]
    src = write_input(tmp_path / "big.jsonl", texts)
    out = tmp_path / "big.parquet"
    parts = tmp_path / "big.parquet.parts"
    cmd = [sys.executable, "-m", "st_runtime.embed.cli", str(folders["bi"]), "--input", str(src), "--id-column", "id",
           "--output", str(out), "--shard-rows", "100", "--batch-tokens", "96", "--no-progress"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(parts.glob("shard-*.npz"))) < 3 and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = sorted(parts.glob("shard-*.npz"))
    assert 3 <= len(done) < 20 and not out.exists()
    for shard in done:  # every shard in place is whole
        with np.load(shard) as data:
            assert len(data["ids"]) == 100
    (parts / "shard-999999.npz.tmp").write_bytes(b"half a shard")  # leftovers of a write in progress are ignored
    assert run(*cmd[3:-1]) == 0
    assert not parts.exists()
    ids, emb = read_output(out)
    assert ids == [f"doc-{i}" for i in range(len(texts))]  # every id once, in order
    one_shot = st_runtime.SentenceTransformer(folders["bi"]).encode(texts)
    np.testing.assert_allclose(np.array(emb), one_shot, atol=ATOL)


def test_partial_run_with_other_settings_is_refused(folders, texts, tmp_path, capsys):
    src = write_input(tmp_path / "c.jsonl", texts)
    parts = tmp_path / "o.parquet.parts"
    parts.mkdir()
    (parts / "state.json").write_text(json.dumps({"version": 1, "input": {}, "settings": {}}))
    assert run(folders["bi"], "--input", src, "--output", tmp_path / "o.parquet") == 1
    assert "partial run" in capsys.readouterr().err
    assert run(folders["bi"], "--input", src, "--output", tmp_path / "o.parquet", "--overwrite") == 0


def test_token_budget_batches():
    lengths = [5, 50, 10, 50, 3, 7]
    batches = token_budget_batches(lengths, 100)
    assert sorted(np.concatenate(batches).tolist()) == list(range(6))
    assert all(len(b) * max(lengths[i] for i in b) <= 100 for b in batches)
    assert [len(b) for b in token_budget_batches([500, 1], 100)] == [1, 1]
    with pytest.raises(ValueError):
        token_budget_batches(lengths, 0)


def test_two_processes_equal_one(folders, texts, reference, tmp_path):
    src = write_input(tmp_path / "c.jsonl", texts)
    assert run(folders["bi"], "--input", src, "--id-column", "id", "--output", tmp_path / "p2.parquet",
               "--processes", 2, "--threads-per-process", 1, "--shard-rows", 25, "--batch-tokens", 200) == 0
    ids, emb = read_output(tmp_path / "p2.parquet")
    assert ids == [f"doc-{i}" for i in range(len(texts))]
    np.testing.assert_allclose(np.array(emb), reference, atol=ATOL)

    model = st_runtime.SentenceTransformer(folders["bi"])
    pool = model.start_multi_process_pool(["cpu", "cpu"])
    try:
        assert pool.processes == 2
        np.testing.assert_allclose(model.encode(texts, pool=pool), reference, atol=ATOL)
        np.testing.assert_allclose(model.encode(texts, pool=pool, chunk_size=16, normalize_embeddings=True),
                                   model.encode(texts, normalize_embeddings=True), atol=ATOL)
        np.testing.assert_allclose(model.encode(texts[3], pool=pool), reference[3], atol=ATOL)
        with pytest.raises(ValueError, match="sentence embeddings"):
            model.encode(texts, pool=pool, output_value="token_embeddings")
    finally:
        model.stop_multi_process_pool(pool)
    np.testing.assert_allclose(model.encode(texts[:10], processes=1, prompt_name="query"),
                               model.encode(texts[:10], prompt_name="query"), atol=ATOL)
    with EncodePool(folders["splade"], processes=1) as sparse_pool:
        got = sparse_pool.encode(texts[:10])
    expected = st_runtime.SparseEncoder(folders["splade"]).encode(texts[:10], sparse_format="numpy")
    np.testing.assert_array_equal(got.indptr, expected.indptr)
    np.testing.assert_allclose(got.data, expected.data, atol=ATOL)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_data(ray_cluster, folders, texts, reference, tmp_path):
    from st_runtime.integrations.ray import Embedder

    src = write_input(tmp_path / "c.parquet", texts)
    # st-embed --ray: Ray Data reads the parquet, Embedder actors (map_batches) embed it, parquet is written.
    assert run(folders["bi"], "--ray", "auto", "--input", src, "--id-column", "id", "--output", tmp_path / "ray-out",
               "--batch-tokens", 500) == 0
    table = pq.read_table(tmp_path / "ray-out")
    assert table.column("id").to_pylist() == [f"doc-{i}" for i in range(len(texts))]
    np.testing.assert_allclose(np.array(table.column("embedding").to_pylist()), reference, atol=ATOL)

    # The callable class itself, on the batch forms map_batches hands over (numpy dict, pandas, pyarrow).
    embedder = Embedder(folders["bi"], id_column="id", on_bad_row="skip")
    out = embedder({"id": np.array([1, 2, 3]), "text": np.array(["a b", None, texts[0]], dtype=object)})
    assert out.column("id").to_pylist() == [1, 3]
    np.testing.assert_allclose(np.array(out.column("embedding").to_pylist())[1], reference[0], atol=ATOL)
    sparse = Embedder(folders["splade"], on_bad_row="empty")(pa.table({"text": ["hello", None, "world"]}))
    assert sparse.column_names == ["indices", "values"] and sparse.column("indices").to_pylist()[1] == []
    expected = st_runtime.SparseEncoder(folders["splade"]).encode(["hello", "world"], sparse_format="numpy")
    assert sparse.column("indices").to_pylist()[2] == expected.row(1)[0].tolist()
