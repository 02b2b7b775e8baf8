"""Assertions shared by the test modules."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

import st_runtime

FP32_ATOL = 1e-5

# sentence-transformers' own backend="onnx" / "openvino" need optimum-onnx / optimum-intel, which cap transformers
# below 4.58 / 5.6: they install on the sentence-transformers 5 line only (scripts/setup.sh --line st5). CI runs that
# line with ST_RUNTIME_REQUIRE_PEERS=1, where their absence is an error instead of a skip.


def _peer(module: str, what: str, why: str) -> tuple[bool, pytest.MarkDecorator]:
    """(installed, skip marker) for a peer package of the 5 line's `peers` extra; with ST_RUNTIME_REQUIRE_PEERS=1 its
    absence is an error at import, never a skip."""
    installed = importlib.util.find_spec(module) is not None
    if os.environ.get("ST_RUNTIME_REQUIRE_PEERS") == "1" and not installed:
        raise RuntimeError(f"ST_RUNTIME_REQUIRE_PEERS=1 but {module} is not installed: run scripts/setup.sh --line st5.")
    return installed, pytest.mark.skipif(not installed, reason=f"{what} {why}: it installs on the sentence-transformers "
                                                                "5 line only (scripts/setup.sh --line st5; CI runs it there)")


HAS_ST_BACKEND, requires_st_backend = _peer("optimum", "sentence-transformers' ONNX/OpenVINO backends",
                                            "need optimum, which caps transformers")
# fastembed (st-bench's fastembed row) requires huggingface-hub < 2, so it too is in the peers extra of the 5 line only.
HAS_FASTEMBED, requires_fastembed = _peer("fastembed", "fastembed", "requires huggingface-hub < 2")


def assert_bi_encoder_parity(reference, folder: Path, texts: list[str], atol: float = FP32_ATOL, **kwargs) -> float:
    """Encode `texts` with sentence-transformers and with st_runtime; assert max |diff| <= atol; return it."""
    expected = reference.encode(texts, convert_to_numpy=True, show_progress_bar=False, **kwargs)
    actual = st_runtime.SentenceTransformer(folder).encode(texts, show_progress_bar=False, **kwargs)
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    diff = float(np.abs(actual.astype(np.float64) - expected).max()) if expected.size else 0.0
    assert diff <= atol, f"max abs diff {diff:.3g} > {atol:g}"
    return diff


def tiny_tokenizer(vocab_file: Path, *, arch: str = "bert", model_max_length: int = 64,
                   model_input_names: list[str] | None = None):
    """A fast WordPiece tokenizer on a real vocab.txt, built the way both transformers lines honour.

    In transformers 5, the fast BERT tokenizer constructed from a vocab_file argument ignores the file and builds a
    5-token vocabulary, so every text becomes [UNK]; `from_pretrained` on a folder holding the vocab.txt reads it on
    both lines. The vocabulary size is asserted, so a fixture can never silently run on all-[UNK] input.
    """
    import shutil
    import tempfile

    from transformers import BertTokenizerFast, DistilBertTokenizerFast

    tokenizer_class = DistilBertTokenizerFast if arch == "distilbert" else BertTokenizerFast
    kwargs = {"model_input_names": model_input_names} if model_input_names else {}
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(vocab_file, Path(folder) / "vocab.txt")
        tokenizer = tokenizer_class.from_pretrained(folder, model_max_length=model_max_length, **kwargs)
    expected = len(Path(vocab_file).read_text(encoding="utf-8").splitlines())
    assert len(tokenizer) == expected, f"tokenizer has {len(tokenizer)} tokens, {vocab_file} has {expected}"
    assert tokenizer.is_fast
    ids = tokenizer("hello world")["input_ids"]
    assert tokenizer.unk_token_id not in ids, f"'hello world' tokenized to unknown tokens: {ids}"
    return tokenizer


# The training stack a torch-free runtime process must never import.
TRAINING_STACK = ("torch", "transformers", "sentence_transformers", "optimum", "huggingface_hub", "exporters")

_BLOCKING_PREAMBLE = """\
import json, sys
BLOCKED = {blocked!r}

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked in this test")
        return None

sys.meta_path.insert(0, Block())
for _name in BLOCKED:
    try:
        __import__(_name)
    except ImportError:
        continue
    raise SystemExit(f"{{_name}} was importable: the test is broken")


def loaded_blocked():
    \"\"\"The blocked packages' modules imported so far (none, unless a blocked import was swallowed).\"\"\"
    return sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)

"""


def run_blocking_imports(body: str, *args: str, blocked: Sequence[str] = TRAINING_STACK,
                         timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `body` (Python source, dedented) in a fresh interpreter in which importing any package of `blocked` (by
    top-level name) raises ImportError, with `args` as sys.argv[1:]. The body sees json, sys, BLOCKED and
    `loaded_blocked()`; it reports by printing JSON on its last stdout line."""
    script = _BLOCKING_PREAMBLE.format(blocked=tuple(blocked)) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout)

