"""SparseEncoder memory: the SPLADE graph makes a float32 (rows, tokens, vocab) logits tensor before pooling, so
st_runtime runs a batch in slices of rows whose logits stay under LOGITS_BUDGET_BYTES. Peak RSS is measured with
VmHWM in fresh subprocesses and compared as ratios (a batch of 32 texts of 512 tokens, and 256 short texts,
against one text of 512 tokens); the slices give the same embeddings as one run and as sentence-transformers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_tokenizer
from sentence_transformers import SparseEncoder as TorchSparseEncoder
from sentence_transformers.base.modules import Transformer
from sentence_transformers.sparse_encoder.modules import SpladePooling

import st_runtime
import st_runtime.sparse_encoder as sparse_encoder
from exporters import export

MAX_LENGTH = 512


@pytest.fixture(scope="module")
def long_splade(tmp_path_factory, bert_vocab) -> tuple[TorchSparseEncoder, Path]:
    """A 2-layer random BertForMaskedLM (hidden 32, the real 30522-token vocabulary) that takes 512 tokens, as SPLADE
    with max pooling; (sentence-transformers model, exported folder)."""
    from transformers import BertConfig, BertForMaskedLM

    folder = tmp_path_factory.mktemp("mlm-512")
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer(bert_vocab, model_max_length=MAX_LENGTH)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=MAX_LENGTH)
    model = BertForMaskedLM(config)
    with torch.no_grad():
        model.cls.predictions.bias.fill_(-0.4)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    transformer = Transformer(str(folder), transformer_task="fill-mask", max_seq_length=MAX_LENGTH)
    splade = TorchSparseEncoder(modules=[transformer, SpladePooling("max")], device="cpu")
    out = tmp_path_factory.mktemp("splade-512") / "out"
    export(splade, out)
    return splade, out


def long_texts(n: int, words: int) -> list[str]:
    return [" ".join(f"word{i % 50} text{j}" for i in range(words // 2)) for j in range(n)]


# VmHWM, the peak resident set of this process image: unlike ru_maxrss, which keeps the peak of the forked parent (a
# pytest process holding torch) across exec, it starts from zero in the fresh interpreter.
PEAK_RSS = textwrap.dedent("""
    import json, sys
    import st_runtime

    def peak_kib():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

    folder, n, words = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    texts = [" ".join(f"word{i % 50} text{j}" for i in range(words // 2)) for j in range(n)]
    model = st_runtime.SparseEncoder(folder, intra_op_num_threads=1)
    model.encode(["warm up"])
    before = peak_kib()
    tokens = model.tokenizer.encode(texts[:1])["input_ids"].shape[1]
    model.encode(texts, batch_size=n)
    print(json.dumps({"tokens": int(tokens), "growth_kib": peak_kib() - before, "peak_kib": peak_kib()}))
""")


def peak_rss_growth(folder: Path, n: int, words: int) -> dict[str, int]:
    """How far one encode of n texts of about `words` tokens raises the peak RSS of a fresh process (KiB)."""
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, str(folder), str(n), str(words)], capture_output=True,
                          text=True, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak RSS from Linux's /proc")
def test_peak_memory_does_not_grow_with_the_batch(long_splade):
    """One 512-token text makes 62.5 MB of logits; 32 of them would make 2 GB (8 GB of RSS before the slices), 256
    short texts 0.9 GB. With the slices, both batches raise the peak about as much as the single text."""
    _, folder = long_splade
    one = peak_rss_growth(folder, 1, 510)
    assert one["tokens"] == MAX_LENGTH
    many = peak_rss_growth(folder, 32, 510)
    short = peak_rss_growth(folder, 256, 14)
    assert many["tokens"] == MAX_LENGTH and short["tokens"] < 64
    assert many["growth_kib"] < 3 * one["growth_kib"], (many, one)
    assert short["growth_kib"] < 3 * one["growth_kib"], (short, one)


@pytest.mark.parametrize("budget_mb", [1, 16, 1 << 20])
def test_slices_give_the_embeddings_of_one_run_and_of_sentence_transformers(long_splade, monkeypatch, budget_mb):
    splade, folder = long_splade
    texts = long_texts(3, 510) + long_texts(2, 100) + ["short", "", "a text of a few more words than that"]
    monkeypatch.setattr(sparse_encoder, "LOGITS_BUDGET_BYTES", budget_mb * 2**20)
    actual = st_runtime.SparseEncoder(folder).encode(texts, batch_size=8).toarray()
    expected = splade.encode(texts, batch_size=8, convert_to_sparse_tensor=False, show_progress_bar=False).numpy()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)


def test_run_in_slices_splits_rows_under_the_budget():
    calls: list[tuple[int, int]] = []

    class Graph:
        def run(self, feeds, outputs):
            calls.append(feeds["input_ids"].shape)
            return [np.repeat(feeds["input_ids"][:, :1].astype(np.float32), 3, axis=1)]

    feeds = {"input_ids": np.arange(10 * 4).reshape(10, 4), "attention_mask": np.ones((10, 4), np.int64)}
    out = sparse_encoder.run_in_slices(Graph(), feeds, vocab_size=100, budget=3 * 4 * 100 * 4)
    assert calls == [(3, 4), (3, 4), (3, 4), (1, 4)]
    np.testing.assert_array_equal(out[:, 0], np.arange(10) * 4)
    calls.clear()
    sparse_encoder.run_in_slices(Graph(), feeds, vocab_size=100, budget=1)  # one row per run at least
    assert len(calls) == 10
    calls.clear()
    sparse_encoder.run_in_slices(Graph(), feeds, vocab_size=0)  # no logits (the static query graph): one run
    assert calls == [(10, 4)]
