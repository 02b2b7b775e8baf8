"""st_runtime must work in a process where torch (and the rest of the training stack) cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from helpers import TRAINING_STACK as BLOCKED
from helpers import run_blocking_imports

from exporters import export

CHILD = """
    import st_runtime
    model = st_runtime.SentenceTransformer(sys.argv[1])
    embeddings = model.encode(json.loads(sys.argv[2]))
    print(json.dumps({"embeddings": embeddings.tolist(), "loaded": loaded_blocked()}))
"""


def test_runtime_runs_where_torch_cannot_be_imported(tiny_bi_encoder, tmp_path, sentences):
    model = tiny_bi_encoder(normalize=True)
    export(model, tmp_path / "out")
    texts = sentences[:25]
    result = run_blocking_imports(CHILD, str(tmp_path / "out"), json.dumps(texts))
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["loaded"] == []
    np.testing.assert_allclose(np.array(payload["embeddings"], dtype=np.float32), model.encode(texts), atol=1e-5)


def test_importing_st_runtime_loads_no_training_stack():
    code = (f"import sys, st_runtime; print(sorted({{m.split('.')[0] for m in sys.modules}} & set({BLOCKED!r})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
