"""The exporter's contract: refuse what it cannot export, never leave a half-written or replaced folder,
record what it did, and behave as a build-pipeline command (exit codes)."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest
import torch
from helpers import assert_bi_encoder_parity
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize

import st_runtime
from exporters import OutputExistsError, UnsupportedModelError, export
from exporters.cli import main as cli_main
from st_runtime.manifest import sha256_file


class Doubler(torch.nn.Module):
    """A user's custom module: not something the exporter knows how to put in a graph."""

    def forward(self, features):
        features["sentence_embedding"] = features["sentence_embedding"] * 2
        return features


def test_custom_module_is_refused_by_name_and_nothing_is_written(tiny_bi_encoder, tmp_path):
    base = tiny_bi_encoder()
    model = SentenceTransformer(modules=[*base, Doubler(), Normalize()], device="cpu")
    with pytest.raises(UnsupportedModelError, match=r"Module 2 .*Doubler \(test_exporter\.Doubler\)"):
        export(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_needs_overwrite(tiny_bi_encoder, tmp_path, sentences):
    model = tiny_bi_encoder()
    export(model, tmp_path / "out")
    before = sha256_file(tmp_path / "out" / "onnx/model.onnx")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        export(tiny_bi_encoder(seed=3), tmp_path / "out")
    assert sha256_file(tmp_path / "out" / "onnx/model.onnx") == before

    other = tiny_bi_encoder(seed=3)
    export(other, tmp_path / "out", overwrite=True)
    assert sha256_file(tmp_path / "out" / "onnx/model.onnx") != before
    assert_bi_encoder_parity(other, tmp_path / "out", sentences[:20])
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_overwrite_never_deletes_a_folder_it_did_not_write(tiny_bi_encoder, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    with pytest.raises(OutputExistsError, match="not a folder written by st-export"):
        export(tiny_bi_encoder(), precious, overwrite=True)
    assert (precious / "thesis.txt").read_text() == "do not delete"


def test_failure_mid_export_leaves_nothing(tiny_bi_encoder, tmp_path, monkeypatch):
    import exporters.graphs

    def broken(*args, **kwargs):
        raise RuntimeError("simulated crash while tracing")

    monkeypatch.setattr(exporters.graphs, "export_onnx", broken)  # every kind's graph is written through export_graph
    with pytest.raises(RuntimeError, match="simulated"):
        export(tiny_bi_encoder(), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_folder_layout_and_manifest(tiny_bi_encoder, tmp_path):
    model = tiny_bi_encoder(normalize=True, prompts={"query": "q: "})
    manifest = export(model, tmp_path / "out")
    out = tmp_path / "out"
    for name in ("st_runtime.json", "tokenizer.json", "onnx/model.onnx", "modules.json",
                 "config_sentence_transformers.json", "config.json", "1_Pooling/config.json"):
        assert (out / name).is_file(), name
    assert not (out / "model.safetensors").exists(), "the transformer weights live in the graph only"
    assert manifest == st_runtime.load_manifest(out)
    assert set(manifest.files) == {p.relative_to(out).as_posix() for p in out.rglob("*")
                                   if p.is_file() and p.name != "st_runtime.json"}
    for rel, digest in manifest.files.items():
        assert sha256_file(out / rel) == digest
    assert manifest.parity["max_abs_diff"] <= 1e-5
    assert {"sentence-transformers", "torch", "onnx", "onnxruntime", "transformers"} <= set(manifest.versions)
    assert manifest.source["kind"] == "in-memory"
    assert manifest.max_seq_length == 48

    graph = onnx.load(str(out / "onnx/model.onnx"))
    outputs = [o.name for o in graph.graph.output]
    assert outputs[:2] == ["token_embeddings", "sentence_embedding"]
    for tensor in graph.graph.input:
        dims = [d.dim_param or d.dim_value for d in tensor.type.tensor_type.shape.dim]
        assert dims == ["batch_size", "sequence_length"], (tensor.name, dims)


def test_tokenizer_json_carries_the_model_settings(tiny_bi_encoder, tmp_path):
    export(tiny_bi_encoder(max_seq_length=20), tmp_path / "out")
    data = json.loads((tmp_path / "out" / "tokenizer.json").read_text())
    assert data["truncation"]["max_length"] == 20
    assert data["padding"]["strategy"] == "BatchLongest"


def test_external_data(tiny_bi_encoder, tmp_path, sentences):
    model = tiny_bi_encoder()
    manifest = export(model, tmp_path / "out", external_data=True)
    assert "onnx/model.onnx_data" in manifest.files
    assert (tmp_path / "out/onnx/model.onnx").stat().st_size < 50_000
    assert_bi_encoder_parity(model, tmp_path / "out", sentences[:30])


def test_cli_exit_codes(tiny_bi_encoder, tmp_path, capsys):
    model = tiny_bi_encoder()
    model.save(str(tmp_path / "src"))
    assert cli_main([str(tmp_path / "src"), "-o", str(tmp_path / "out")]) == 0
    assert "Exported" in capsys.readouterr().out
    assert cli_main([str(tmp_path / "src"), "-o", str(tmp_path / "out")]) == 1
    assert "already exists" in capsys.readouterr().err
    assert cli_main([str(tmp_path / "src"), "-o", str(tmp_path / "out"), "--overwrite", "-q"]) == 0
    assert cli_main([str(tmp_path / "nowhere"), "-o", str(tmp_path / "out2")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()
    with pytest.raises(SystemExit) as usage:
        cli_main([])
    assert usage.value.code == 2


def test_cli_entry_point_runs_in_a_subprocess(tmp_path):
    result = subprocess.run([sys.executable, "-m", "exporters.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "st-export" in result.stdout and "--overwrite" in result.stdout


def test_importing_exporters_without_torch_names_the_extra():
    code = ("import sys; sys.modules['torch'] = None\n"
            "try:\n    from exporters import export\nexcept ImportError as e:\n    print(e)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "pip install 'st-runtime[export]'" in result.stdout, result.stdout + result.stderr


def test_st_export_without_torch_says_so_in_one_line(tmp_path):
    code = "import sys; sys.modules['torch'] = None\nfrom exporters.cli import main\nsys.exit(main(sys.argv[1:]))"
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path), "-o", str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        "st-export: error: exporters needs the export extra (torch not installed): pip install 'st-runtime[export]'"]
