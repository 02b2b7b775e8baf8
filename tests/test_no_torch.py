"""st_runtime must work in a process where torch (and the rest of the training stack) cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np

from exporters import export

BLOCKED = ("torch", "transformers", "sentence_transformers", "optimum", "huggingface_hub", "exporters")

CHILD = textwrap.dedent("""
    import json, sys
    BLOCKED = {blocked!r}

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    try:
        import torch  # noqa: F401
        raise SystemExit("torch was importable: the test is broken")
    except ImportError:
        pass

    import st_runtime
    model = st_runtime.SentenceTransformer(sys.argv[1])
    embeddings = model.encode(json.loads(sys.argv[2]))
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({{"embeddings": embeddings.tolist(), "loaded": loaded}}))
""").format(blocked=BLOCKED)


def test_runtime_runs_where_torch_cannot_be_imported(tiny_bi_encoder, tmp_path, sentences):
    model = tiny_bi_encoder(normalize=True)
    export(model, tmp_path / "out")
    texts = sentences[:25]
    result = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "out"), json.dumps(texts)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["loaded"] == []
    np.testing.assert_allclose(np.array(payload["embeddings"], dtype=np.float32), model.encode(texts), atol=1e-5)


def test_importing_st_runtime_loads_no_training_stack():
    code = (f"import sys, st_runtime; print(sorted({{m.split('.')[0] for m in sys.modules}} & set({BLOCKED!r})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
