"""st_runtime on hostile or broken folders and inputs: no file outside the folder is read (absolute paths, `..`,
symlinks), only regular files are opened (never a FIFO or a device), external data is verified, malformed manifests
and inputs raise errors that name the field or the item."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import build_tiny_transformer
from helpers import tiny_tokenizer
from sentence_transformers import CrossEncoder as TorchCrossEncoder
from sentence_transformers import SentenceTransformer as TorchSentenceTransformer
from sentence_transformers import SparseEncoder as TorchSparseEncoder
from sentence_transformers.base.modules import Transformer
from sentence_transformers.sentence_transformer.modules import Pooling
from sentence_transformers.sparse_encoder.modules import SpladePooling

import st_runtime
from exporters import export
from st_runtime import InvalidInputError, ManifestError, ModelFileError
from st_runtime import backends as backends_module
from st_runtime import manifest as manifest_module
from st_runtime import tokenizer as tokenizer_module
from st_runtime.base import check_positive_int

requires_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="os.mkfifo is POSIX only")


@pytest.fixture(scope="module")
def bi_folder(tmp_path_factory, tiny_transformers_dir, bert_vocab) -> Path:
    """A tiny exported bi-encoder whose weights are in external data (onnx/model.onnx_data)."""
    source = tiny_transformers_dir / "bert-0"  # the folder conftest's tiny_bi_encoder builds and shares
    if not source.exists():
        build_tiny_transformer(source, bert_vocab)
    transformer = Transformer(str(source), max_seq_length=48)
    model = TorchSentenceTransformer(modules=[transformer, Pooling(32)], device="cpu")
    out = tmp_path_factory.mktemp("hardening-bi") / "out"
    export(model, out, external_data=True)
    assert (out / "onnx" / "model.onnx_data").is_file()
    return out


@pytest.fixture(scope="module")
def cross_folder(tmp_path_factory, bert_vocab) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    source = tmp_path_factory.mktemp("hardening-ce-source")
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer(bert_vocab, model_max_length=64)
    BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64, num_labels=1,
                                             max_position_embeddings=64)).save_pretrained(source)
    tokenizer.save_pretrained(source)
    out = tmp_path_factory.mktemp("hardening-ce") / "out"
    export(TorchCrossEncoder(str(source), device="cpu"), out)
    return out


@pytest.fixture(scope="module")
def sparse_folder(tmp_path_factory, mlm_dir) -> Path:
    transformer = Transformer(str(mlm_dir), transformer_task="fill-mask", max_seq_length=48)
    out = tmp_path_factory.mktemp("hardening-splade") / "out"
    export(TorchSparseEncoder(modules=[transformer, SpladePooling("max")], device="cpu"), out)
    return out


@pytest.fixture
def folder(bi_folder, tmp_path) -> Path:
    """A fresh copy of the exported bi-encoder, for a test to break."""
    copy = tmp_path / "model"
    shutil.copytree(bi_folder, copy)
    return copy


def edit_manifest(folder: Path, mutate: Callable[[dict[str, Any]], Any]) -> None:
    data = json.loads((folder / "st_runtime.json").read_text())
    mutate(data)
    (folder / "st_runtime.json").write_text(json.dumps(data))


@pytest.fixture
def reads(monkeypatch) -> list[Path]:
    """Every path the runtime hashes, hands to tokenizers or hands to onnxruntime, in order: the only three ways it
    reads a file the manifest names."""
    paths: list[Path] = []
    real_sha256, real_session = manifest_module.sha256_file, backends_module.create_session
    real_from_file = tokenizer_module.Tokenizer.from_file

    class SpyTokenizer:
        @staticmethod
        def from_file(path: str) -> Any:
            paths.append(Path(path))
            return real_from_file(path)

    def sha256_file(path, *args, **kwargs):
        paths.append(Path(path))
        return real_sha256(path, *args, **kwargs)

    def create_session(path, *args, **kwargs):
        paths.append(Path(path))
        return real_session(path, *args, **kwargs)

    monkeypatch.setattr(manifest_module, "sha256_file", sha256_file)
    monkeypatch.setattr(tokenizer_module, "Tokenizer", SpyTokenizer)
    monkeypatch.setattr(backends_module, "create_session", create_session)
    return paths


def load_within(seconds: float, folder: Path, **kwargs: Any) -> BaseException | None:
    """Load `folder` in a daemon thread; fail if it has not returned after `seconds` (a FIFO opened for reading
    blocks forever, /dev/zero reads until memory runs out). Returns the error raised, if any."""
    outcome: dict[str, BaseException] = {}

    def target() -> None:
        try:
            st_runtime.SentenceTransformer(folder, **kwargs)
        except BaseException as exc:  # handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"loading {folder} did not return within {seconds} s (it opened a FIFO or device)"
    return outcome.get("error")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()  # not sha256_file, which the `reads` spy records


def assert_inside(paths: list[Path], folder: Path) -> None:
    root = folder.resolve()
    outside = [p for p in paths if not p.resolve().is_relative_to(root)]
    assert not outside, f"read outside the folder: {outside}"


# --- no file outside the folder -------------------------------------------------------------------------------------


def absolute_tokenizer_path(folder: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside-tokenizer.json"
    shutil.copy(folder / "tokenizer.json", outside)  # a perfectly good tokenizer, but not the folder's
    edit_manifest(folder, lambda m: (m["tokenizer"].update(file=str(outside)),
                                     m["files"].update({str(outside): digest(outside)})))


def dotdot_variant_file(folder: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.onnx"
    shutil.copy(folder / "onnx" / "model.onnx", outside)
    escape = os.path.relpath(outside, folder)  # "../outside.onnx"
    assert escape.startswith("..")
    edit_manifest(folder, lambda m: (m["variants"][0].update(file=escape),
                                     m["files"].update({escape: digest(outside)})))


def graph_symlinked_outside(folder: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(folder / "onnx" / "model.onnx", outside / "model.onnx")
    shutil.copy(folder / "onnx" / "model.onnx_data", outside / "model.onnx_data")
    (folder / "onnx" / "model.onnx").unlink()
    (folder / "onnx" / "model.onnx").symlink_to(outside / "model.onnx")


def external_data_symlinked_outside(folder: Path, tmp_path: Path) -> None:
    outside = tmp_path / "weights.bin"
    shutil.move(folder / "onnx" / "model.onnx_data", outside)
    (folder / "onnx" / "model.onnx_data").symlink_to(outside)


# How a file of the folder is made to lie outside it -> what the refusal says.
ESCAPES = {
    "absolute tokenizer path": (absolute_tokenizer_path, r"tokenizer\.file .*absolute path"),
    "../ variant file": (dotdot_variant_file, r"variants\['fp32'\]\.file .*outside the folder"),
    "graph symlinked outside": (graph_symlinked_outside,
                                r"variants\['fp32'\]\.file .*resolves to .*outside the folder"),
    "external data symlinked outside": (external_data_symlinked_outside, r"model\.onnx_data.*outside the folder"),
}


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("escape", list(ESCAPES))
def test_a_file_outside_the_folder_is_refused_before_reading(folder, tmp_path, reads, escape, verify):
    make_escape, message = ESCAPES[escape]
    make_escape(folder, tmp_path)
    with pytest.raises(ModelFileError, match=message):
        st_runtime.SentenceTransformer(folder, verify=verify)
    assert reads == []


@pytest.mark.parametrize("entry", ["tokenizer", "variant"])
def test_etc_passwd_traversal_is_never_read_or_hashed(folder, reads, entry):
    traversal = "../" * 16 + "etc/passwd"
    listed = {traversal: "0" * 64}  # listed with a sha256, so verification would hash it if paths were not checked
    if entry == "tokenizer":
        edit_manifest(folder, lambda m: (m["tokenizer"].update(file=traversal), m["files"].update(listed)))
    else:
        edit_manifest(folder, lambda m: (m["variants"][0].update(file=traversal), m["files"].update(listed)))
    with pytest.raises(ModelFileError, match=r"outside the folder|is missing"):
        st_runtime.SentenceTransformer(folder)
    assert reads == []


def test_symlinks_that_stay_inside_the_folder_still_load(folder, bi_folder, reads):
    (folder / "onnx" / "model.onnx").rename(folder / "onnx" / "real.onnx")
    (folder / "onnx" / "model.onnx").symlink_to("real.onnx")  # relative, inside
    (folder / "tokenizer.json").rename(folder / "tokenizer-real.json")
    (folder / "tokenizer.json").symlink_to(folder / "tokenizer-real.json")  # absolute target, inside
    texts = ["hello world", "a symlink inside the folder is fine"]
    expected = st_runtime.SentenceTransformer(bi_folder).encode(texts)
    reads.clear()
    np.testing.assert_allclose(st_runtime.SentenceTransformer(folder).encode(texts), expected, atol=1e-6)
    assert len(reads) == 5  # graph, tokenizer and external data hashed; tokenizer and graph opened
    assert_inside(reads, folder)


def test_manifest_symlinked_outside_is_refused(folder, tmp_path):
    outside = tmp_path / "st_runtime.json"
    shutil.move(folder / "st_runtime.json", outside)
    (folder / "st_runtime.json").symlink_to(outside)
    with pytest.raises(ManifestError, match="outside the folder"):
        st_runtime.SentenceTransformer(folder)


def test_runtime_source_loads_no_pickles_and_runs_no_code():
    """st_runtime reads JSON, tokenizer.json (tokenizers), ONNX (onnxruntime) and OpenVINO IR only: no module of it
    imports a deserializer that can run code, or evaluates or imports anything named by a folder."""
    banned_modules = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "importlib", "runpy"}
    banned_calls = {"eval", "exec", "compile", "__import__"}
    banned_loaders = {"np", "numpy", "torch", "pickle", "yaml", "joblib"}  # np.load(allow_pickle), torch.load, ...
    # The one pickle use: st_runtime.pool passes texts, arrays and errors to the worker processes it spawned itself
    # (multiprocessing pickles them anyway); nothing read from a folder is unpickled.
    ipc_only = {"pool.py": {"pickle"}}
    # importlib.metadata reads the installed distributions' metadata text files (package versions); it imports nothing.
    metadata_only = {"machine.py": {"importlib.metadata"}}
    found = []
    for path in sorted(Path(st_runtime.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                found += [f"{path.name}: import {n}" for n in names
                          if n.split(".")[0] in banned_modules - ipc_only.get(path.name, set())
                          and n not in metadata_only.get(path.name, set())]
            elif _is_numpy_load_without_pickles(node) or (
                    path.name in ipc_only and isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("loads", "dumps")
                    and getattr(node.func.value, "id", "") == "pickle"):
                continue
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in banned_calls:
                found.append(f"{path.name}:{node.lineno}: {node.func.id}()")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
                    node.func.attr == "import_module" or (node.func.attr.startswith("load")
                                                          and getattr(node.func.value, "id", "") in banned_loaders)):
                found.append(f"{path.name}:{node.lineno}: .{node.func.attr}()")
    assert not found, found


def _is_numpy_load_without_pickles(node: ast.AST) -> bool:
    """np.load(..., allow_pickle=False): st-embed reading back the .npz shards it wrote, with pickles refused."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
            and getattr(node.func.value, "id", "") in ("np", "numpy")
            and any(k.arg == "allow_pickle" and isinstance(k.value, ast.Constant) and k.value.value is False
                    for k in node.keywords))


# --- only regular files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["absolute", "symlink"])
def test_dev_zero_as_tokenizer_fails_fast_without_verify(folder, target):
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero here")
    if target == "symlink":
        (folder / "zero.json").symlink_to("/dev/zero")
    name = "/dev/zero" if target == "absolute" else "zero.json"
    edit_manifest(folder, lambda m: m["tokenizer"].update(file=name))
    error = load_within(30, folder, verify=False)
    assert isinstance(error, ModelFileError) and "tokenizer.file" in str(error), error


@requires_fifo
@pytest.mark.parametrize("entry", ["tokenizer", "variant"])
@pytest.mark.parametrize("verify", [True, False])
def test_fifo_inside_the_folder_is_never_opened(folder, entry, verify):
    os.mkfifo(folder / "pipe")
    if entry == "tokenizer":
        edit_manifest(folder, lambda m: (m["tokenizer"].update(file="pipe"), m["files"].update(pipe="0" * 64)))
    else:
        edit_manifest(folder, lambda m: (m["variants"][0].update(file="pipe"), m["files"].update(pipe="0" * 64)))
    error = load_within(30, folder, verify=verify)
    assert isinstance(error, ModelFileError) and "not a regular file" in str(error), error


def test_a_folder_as_file_is_refused(folder):
    edit_manifest(folder, lambda m: m["tokenizer"].update(file="onnx"))
    with pytest.raises(ModelFileError, match=r"tokenizer\.file .*not a regular file"):
        st_runtime.SentenceTransformer(folder, verify=False)


# --- sha256 of external data ----------------------------------------------------------------------------------------


def test_tampered_external_data_is_refused_with_verify(folder):
    data = bytearray((folder / "onnx" / "model.onnx_data").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "onnx" / "model.onnx_data").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"onnx/model\.onnx_data .*sha256"):
        st_runtime.SentenceTransformer(folder)


def test_external_data_missing_from_the_manifest_fails_verification(folder):
    edit_manifest(folder, lambda m: m["files"].pop("onnx/model.onnx_data"))
    with pytest.raises(ModelFileError, match=r"onnx/model\.onnx_data is not listed"):
        st_runtime.SentenceTransformer(folder)


# --- manifest validation --------------------------------------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = data
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    parent, _, key = path.rpartition(".")
    return lambda data: (_walk(data, parent) if parent else data).pop(key)


def _walk(data: Any, path: str) -> Any:
    for key in path.split("."):
        data = data[int(key)] if isinstance(data, list) else data[key]
    return data


MALFORMED = [
    (_set("tokenizer.max_seq_length", "abc"), "tokenizer.max_seq_length"),
    (_set("tokenizer.max_seq_length", -5), "tokenizer.max_seq_length"),
    (_set("tokenizer.max_seq_length", 0), "tokenizer.max_seq_length"),
    (_set("tokenizer.max_seq_length", 10**30), "tokenizer.max_seq_length"),
    (_set("tokenizer.max_seq_length", 48.0), "tokenizer.max_seq_length"),
    (_set("tokenizer.max_seq_length", True), "tokenizer.max_seq_length"),
    (_set("tokenizer.pad_token_id", -1), "tokenizer.pad_token_id"),
    (_set("tokenizer.padding_side", "middle"), "tokenizer.padding_side"),
    (_set("tokenizer.file", ""), "tokenizer.file"),
    (_set("tokenizer.file", None), "tokenizer.file"),
    (_set("tokenizer", None), "tokenizer"),
    (_set("embedding_dimension", 0), "embedding_dimension"),
    (_set("embedding_dimension", -3), "embedding_dimension"),
    (_set("embedding_dimension", 2.5), "embedding_dimension"),
    (_set("embedding_dimension", "32"), "embedding_dimension"),
    (_set("files", None), "files"),
    (_set("files", ["tokenizer.json"]), "files"),
    (_set("files", {"tokenizer.json": 5}), "files"),
    (_set("variants", []), "variants"),
    (_set("variants", None), "variants"),
    (_set("variants", {"fp32": "onnx/model.onnx"}), "variants"),
    (_drop("variants.0.file"), "variants[0].file"),
    (_set("variants.0.file", ""), "variants[0].file"),
    (_set("variants.0.file", 7), "variants[0].file"),
    (_set("variants.0", "onnx/model.onnx"), "variants[0]"),
    (_set("variants.0.backend", "tensorrt"), "variants[0].backend"),
    (_set("inputs", "input_ids"), "inputs"),
    (_set("outputs", [1, 2]), "outputs"),
    (_set("prompts", {"query": 1}), "prompts"),
    (_set("prompts", None), "prompts"),
    (_set("task", 5), "task"),
    (_drop("task"), "task"),
    (_set("task_config", {"num_labels": "1"}), "task_config.num_labels"),
    (_set("task_config", {"max_active_dims": 0}), "task_config.max_active_dims"),
    (_set("task_config", None), "task_config"),
    (_set("routing", {"routes": {"query": {"tokenizer": {}, "variants": [{"name": "fp32"}]}}, "tasks": {},
                      "default_route": None, "other_tasks_route": None, "primary": "query"}),
     "routing.routes['query'].variants[0].file"),
    (_set("modules", [1]), "modules"),
    (_set("routing", {"routes": {}, "tasks": {}, "default_route": None, "other_tasks_route": None,
                      "primary": "query"}), "routing"),
    (_set("routing", {"routes": [], "tasks": {}, "default_route": None, "other_tasks_route": None,
                      "primary": "query"}), "routing.routes"),
    (_set("routing", {"routes": {}}), "routing.tasks"),
]


@pytest.mark.parametrize("mutate, field", MALFORMED)
def test_malformed_manifest_fields_name_the_field(bi_folder, mutate, field):
    data = json.loads((bi_folder / "st_runtime.json").read_text())
    mutate(data)
    with pytest.raises(ManifestError, match=f"malformed fields: {re.escape(field)} "):
        st_runtime.Manifest.from_json(json.dumps(data))


@pytest.mark.parametrize("text, message", [
    ("[]", "JSON list, not an object"),
    ('"a string"', "JSON str, not an object"),
    ("null", "JSON NoneType, not an object"),
    ('{"format_version": true}', "format_version True"),
    ("{not json", "not valid JSON"),
    ('{"format_version": 1, "x": ' + "1" * 5000 + "}", r"not valid JSON|malformed"),  # past the int digits limit
    ("[" * 100_000 + "]" * 100_000, r"not valid JSON|not an object"),  # nesting past the recursion limit
])
def test_manifest_that_is_not_an_object_or_not_json(text, message):
    with pytest.raises(ManifestError, match=message):
        st_runtime.Manifest.from_json(text)


def test_random_bytes_as_manifest(folder):
    (folder / "st_runtime.json").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ManifestError, match="not UTF-8"):
        st_runtime.SentenceTransformer(folder)


def test_embedding_dimension_that_disagrees_with_the_graph(folder):
    edit_manifest(folder, lambda m: m.update(embedding_dimension=10))
    with pytest.raises(ManifestError, match=r"embedding_dimension .* is 10, but the graph onnx/model\.onnx outputs 32"):
        st_runtime.SentenceTransformer(folder)


def test_every_exported_kind_still_loads(bi_folder, cross_folder, sparse_folder):
    """The checks accept what st-export writes (with external data, a cross-encoder, a SPLADE model)."""
    assert st_runtime.SentenceTransformer(bi_folder).encode(["a"]).shape == (1, 32)
    assert st_runtime.CrossEncoder(cross_folder).predict([("a", "b")]).shape == (1,)
    assert st_runtime.SparseEncoder(sparse_folder).encode(["a"]).shape[0] == 1


# --- input errors ---------------------------------------------------------------------------------------------------

SURROGATE = "caf\udce9"  # what b"caf\xe9".decode("utf-8", errors="surrogateescape") gives


@pytest.mark.parametrize("inputs, message", [
    (SURROGATE, r"inputs is not valid Unicode: .*lone surrogate .* position 3.*errors='replace'"),
    (["ok", "\ud800"], r"inputs\[1\] is not valid Unicode"),
    (b"bytes", r"inputs is bytes, not a string: decode it to str first"),
    (bytearray(b"bytes"), r"inputs is bytes, not a string: decode it to str first"),
    (["ok", b"bytes"], r"inputs\[1\] is bytes, not a string: decode it to str first"),
    (np.array([b"a", b"b"]), r"inputs\[0\] is bytes, not a string: decode it to str first"),
])
def test_bad_texts_are_named(bi_folder, sparse_folder, inputs, message):
    for model in (st_runtime.SentenceTransformer(bi_folder), st_runtime.SparseEncoder(sparse_folder)):
        with pytest.raises(InvalidInputError, match=message):
            model.encode(inputs)


def test_bad_prompt_is_named(bi_folder):
    model = st_runtime.SentenceTransformer(bi_folder)
    with pytest.raises(InvalidInputError, match="prompt is not valid Unicode"):
        model.encode(["a"], prompt="\ud800: ")
    with pytest.raises(InvalidInputError, match="prompt is int"):
        model.encode(["a"], prompt=5)
    with pytest.raises(InvalidInputError, match="prompt_name must be a str"):
        model.encode(["a"], prompt_name=["query"])


@pytest.mark.parametrize("inputs, message", [
    ([("a", "\ud800")], r"inputs\[0\]\[1\] is not valid Unicode"),
    (("\udfff", "b"), r"inputs\[0\] is not valid Unicode"),
    ([("a", b"b")], r"inputs\[0\]\[1\] is bytes, not a string: decode it to str first"),
    (b"ab", r"inputs is bytes"),
])
def test_bad_pairs_are_named(cross_folder, inputs, message):
    with pytest.raises(InvalidInputError, match=message):
        st_runtime.CrossEncoder(cross_folder).predict(inputs)


def test_bad_rank_texts_are_named(cross_folder):
    model = st_runtime.CrossEncoder(cross_folder)
    with pytest.raises(InvalidInputError, match="query is not valid Unicode"):
        model.rank("\ud800", ["a"])
    with pytest.raises(InvalidInputError, match=r"documents\[1\] is not valid Unicode"):
        model.rank("q", ["a", "\ud800"])
    with pytest.raises(InvalidInputError, match="documents is bytes"):
        model.rank("q", b"ab")


BAD_COUNTS = [2.5, "3", None, True, False, 0, -1, [2]]


@pytest.mark.parametrize("batch_size", BAD_COUNTS)
def test_batch_size_must_be_a_positive_int(bi_folder, cross_folder, sparse_folder, batch_size):
    calls = [
        lambda: st_runtime.SentenceTransformer(bi_folder).encode(["a", "b"], batch_size=batch_size),
        lambda: st_runtime.CrossEncoder(cross_folder).predict([("a", "b")], batch_size=batch_size),
        lambda: st_runtime.CrossEncoder(cross_folder).rank("q", ["a"], batch_size=batch_size),
        lambda: st_runtime.SparseEncoder(sparse_folder).encode(["a"], batch_size=batch_size),
        lambda: st_runtime.SparseEncoder(sparse_folder).encode_query([], batch_size=batch_size),
    ]
    for call in calls:
        with pytest.raises(InvalidInputError, match=r"batch_size must be a positive int, got"):
            call()
        with pytest.raises(ValueError):  # InvalidInputError is a ValueError too (and a TypeError)
            call()


@pytest.mark.parametrize("top_k", [2.5, "2", True, -1, [1]])
def test_rank_top_k_must_be_a_non_negative_int(cross_folder, top_k):
    with pytest.raises(InvalidInputError, match="top_k must be a non-negative int or None"):
        st_runtime.CrossEncoder(cross_folder).rank("q", ["a", "b"], top_k=top_k)


@pytest.mark.parametrize("top_k", [2.5, "2", True, 0, -1])
def test_decode_top_k_and_max_active_dims_must_be_positive_ints(sparse_folder, top_k):
    model = st_runtime.SparseEncoder(sparse_folder)
    embedding = model.encode("a")
    with pytest.raises(InvalidInputError, match="top_k must be a positive int or None"):
        model.decode(embedding, top_k=top_k)
    with pytest.raises(InvalidInputError, match="max_active_dims must be a positive int or None"):
        model.encode(["a"], max_active_dims=top_k)


def test_good_counts_still_work(bi_folder, cross_folder, sparse_folder):
    assert st_runtime.SentenceTransformer(bi_folder).encode(["a", "b", "c"], batch_size=np.int64(2)).shape == (3, 32)
    ranked = st_runtime.CrossEncoder(cross_folder).rank("q", ["a", "b", "c"], top_k=np.int32(2))
    assert len(ranked) == 2
    assert st_runtime.CrossEncoder(cross_folder).rank("q", ["a"], top_k=0) == []  # as sentence-transformers
    sparse = st_runtime.SparseEncoder(sparse_folder)
    assert len(sparse.decode(sparse.encode("a"), top_k=3)) <= 3
    assert check_positive_int(None, "x", allow_none=True) is None
    assert check_positive_int(np.uint8(7), "x") == 7 and type(check_positive_int(np.uint8(7), "x")) is int


# --- graph limits a manifest must respect (issue 25) ----------------------------------------------------------------

LONG_TEXT = "many words in one long text " * 40  # past the 64 positions of the tiny models


def test_the_export_records_each_graph_s_positions(bi_folder, cross_folder, sparse_folder):
    for folder in (bi_folder, cross_folder, sparse_folder):
        assert json.loads((folder / "st_runtime.json").read_text())["max_positions"] == {"": 64}


@pytest.mark.parametrize("length", [65, 4096, None])
def test_max_seq_length_above_the_graph_s_positions_is_refused_at_load(folder, length):
    """The graph's position embedding has 64 rows: a manifest that lets longer texts through loaded, then failed with
    a raw onnxruntime error on the first long text."""
    edit_manifest(folder, lambda m: m["tokenizer"].update(max_seq_length=length))
    with pytest.raises(ManifestError, match=rf"tokenizer\.max_seq_length is {length}: the graph takes at most 64 "
                                            r"tokens \(max_positions\[''\]\)"):
        st_runtime.SentenceTransformer(folder)


def test_a_manifest_without_max_positions_still_loads(folder):
    """Folders exported before the key load as before (no limit is known, none is checked)."""
    edit_manifest(folder, lambda m: m.pop("max_positions"))
    model = st_runtime.SentenceTransformer(folder)
    assert model.manifest.max_positions == {}
    assert model.encode([LONG_TEXT, "short"]).shape == (2, 32)


@pytest.mark.parametrize(("value", "problem"), [
    ({"": 0}, "max_positions is {'': 0}: expected an object of positive integers"),
    ({"": "64"}, "max_positions is {'': '64'}: expected an object of positive integers"),
    ([64], "max_positions is [64]: expected an object of positive integers"),
])
def test_malformed_max_positions_is_named(bi_folder, value, problem):
    data = json.loads((bi_folder / "st_runtime.json").read_text())
    data["max_positions"] = value
    with pytest.raises(ManifestError, match=re.escape(problem)):
        st_runtime.Manifest.from_json(json.dumps(data))


@pytest.mark.parametrize("pad_id", [30522, 10**6])
def test_pad_id_outside_the_vocabulary_is_refused_at_load(folder, pad_id):
    """A pad id with no embedding row loaded, then failed in onnxruntime on the first batch that needed padding."""
    edit_manifest(folder, lambda m: m["tokenizer"].update(pad_token_id=pad_id))
    with pytest.raises(ManifestError, match=rf"tokenizer\.pad_token_id in st_runtime\.json is {pad_id}, outside the "
                                            r"30522 tokens of tokenizer\.json"):
        st_runtime.SentenceTransformer(folder)


def test_the_limits_accept_what_st_export_writes(bi_folder):
    model = st_runtime.SentenceTransformer(bi_folder)
    assert model.encode([LONG_TEXT, "short", ""]).shape == (3, 32)


ROUTED = Path(__file__).parent / "data" / "format1" / "sparse-embedding-router.json"  # routes query and document, 24


@pytest.mark.parametrize(("limits", "field"), [
    ({"document": 24, "query": 20}, "routing.routes['query'].tokenizer.max_seq_length is 24"),
    ({"document": 20}, "routing.routes['document'].tokenizer.max_seq_length is 24"),
])
def test_each_route_is_checked_against_its_own_positions(limits, field):
    data = json.loads(ROUTED.read_text())
    data["max_positions"] = limits
    with pytest.raises(ManifestError, match=re.escape(field)):
        st_runtime.Manifest.from_json(json.dumps(data))
    for fine in ({"document": 24, "query": 512}, {"": 8}):  # a key that names no graph is no limit
        data["max_positions"] = fine
        assert st_runtime.Manifest.from_json(json.dumps(data)).max_positions == fine
