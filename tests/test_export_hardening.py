"""st-export on hostile or broken input: it runs no code shipped with a model, every expected failure is one
`st-export: error:` line with exit 1 and nothing left on disk, an offline machine fails in seconds, and a
kill -9 at any moment leaves nothing that the next export does not clean up or restore."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_transformer
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Transformer
from sentence_transformers.sentence_transformer.modules import Pooling

import exporters.folder
import exporters.preflight
import exporters.source
import exporters.tokenizer_match
import st_runtime.staging
from exporters import ModelLoadError, OutputExistsError, UnsupportedModelError, export
from exporters.cli import main as cli_main
from exporters.folder import check_output_dir, exchange, staged_output_dir
from exporters.preflight import check_source_folder

ROOT = Path(__file__).resolve().parents[1]
EVIL_CODE = """import pathlib
pathlib.Path({marker!r}).write_text("code from the model folder ran")
import torch
class Evil(torch.nn.Module):
    pass
"""
ROUTER = "sentence_transformers.base.modules.router.Router"


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory, bert_vocab) -> Path:
    """A tiny sentence-transformers folder (Transformer + mean Pooling), as `model.save` writes it."""
    root = tmp_path_factory.mktemp("hardening-src")
    build_tiny_transformer(root / "tf", bert_vocab)
    transformer = Transformer(str(root / "tf"), max_seq_length=32)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension())], device="cpu")
    model.save(str(root / "model"))
    return root / "model"


@pytest.fixture(scope="module")
def exported_dir(source_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hardening-out") / "exported"
    export(source_dir, out)
    return out


def copy(folder: Path, where: Path) -> Path:
    shutil.copytree(folder, where)
    return where


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data) or data))


def cli_fails(argv: list[str], capsys, *names: str) -> str:
    """Run st-export in-process; assert exit 1 and stderr one error line (no traceback) naming `names`."""
    assert cli_main([*argv, "-q"]) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("st-export: error: "), err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "exporters.cli", *args, "-q"], capture_output=True, text=True,
                          env=environment, cwd=cwd or ROOT, timeout=300)


def assert_one_error_line(result: subprocess.CompletedProcess, *names: str) -> str:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("st-export: error: "), result.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def no_load(monkeypatch) -> None:
    """Make loading the model fail the test: the check under test must refuse before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(exporters.source, "_load_path", refuse)


# --- 1. no code from the model folder ---------------------------------------------------------------------------


def add_evil_module(folder: Path, marker: Path) -> None:
    (folder / "evilmod.py").write_text(EVIL_CODE.format(marker=str(marker)))
    edit_json(folder / "modules.json", lambda m: m.append({"idx": 2, "name": "2", "path": "", "type": "evilmod.Evil"}))


def add_auto_map(folder: Path, marker: Path) -> None:
    (folder / "evilmod.py").write_text(EVIL_CODE.format(marker=str(marker)))
    edit_json(folder / "config.json", lambda c: c.update(
        auto_map={"AutoConfig": "evilmod.EvilConfig", "AutoModel": "evilmod.EvilModel"}))


@pytest.mark.parametrize(("plant", "named"), [(add_evil_module, "'evilmod.Evil'"), (add_auto_map, "'auto_map'")])
def test_st_export_never_imports_code_from_the_model_folder(source_dir, tmp_path, plant, named):
    """sentence-transformers 5.x imports `evilmod.Evil` from a local folder without trust_remote_code; the check
    on modules.json / config.json refuses it before anything is loaded (the subprocess runs in the folder, so a
    plain import would find the file too)."""
    folder = copy(source_dir, tmp_path / "model")
    marker = tmp_path / "MARKER"
    plant(folder, marker)
    before = tree(tmp_path)
    result = run_cli(str(folder), "-o", str(tmp_path / "out"), cwd=folder)
    assert_one_error_line(result, named, "nothing was imported")
    assert not marker.exists()
    assert tree(tmp_path) == before


def write_router(folder: Path, config_name: str, types: dict[str, str], router_type: str = ROUTER) -> None:
    (folder / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "0_Router", "type": router_type}]))
    (folder / "0_Router").mkdir(parents=True)
    (folder / "0_Router" / config_name).write_text(json.dumps(
        {"types": types, "structure": {"query": list(types)}, "parameters": {}}))


@pytest.mark.parametrize("case", ["router", "legacy-asym", "tokenizer-auto-map", "trust-remote-code",
                                  "custom-pipeline", "activation", "nested-auto-map"])
def test_every_code_hook_is_refused_before_loading(source_dir, tmp_path, capsys, monkeypatch, case):
    folder = copy(source_dir, tmp_path / "model")
    if case == "router":
        write_router(folder, "router_config.json", {"query_0_Transformer": "sentence_transformers.base.modules."
                                                    "transformer.Transformer", "document_0_Evil": "evilmod.Evil"})
        named = "'evilmod.Evil'"
    elif case == "legacy-asym":
        write_router(folder, "config.json", {"q_0_Evil": "evilmod.Evil"}, router_type="sentence_transformers.models.Asym")
        named = "'evilmod.Evil'"
    elif case == "tokenizer-auto-map":
        edit_json(folder / "tokenizer_config.json", lambda c: c.update(auto_map={"AutoTokenizer": ["evilmod.Tok", None]}))
        named = "tokenizer_config.json"
    elif case == "trust-remote-code":
        edit_json(folder / "sentence_bert_config.json", lambda c: c.update(model_args={"trust_remote_code": True}))
        named = "'model_args.trust_remote_code'"
    elif case == "custom-pipeline":
        edit_json(folder / "config.json", lambda c: c.update(custom_pipelines={"x": {"impl": "evilmod.Pipe"}}))
        named = "'custom_pipelines'"
    elif case == "activation":
        edit_json(folder / "config_sentence_transformers.json", lambda c: c.update(activation_fn="evilmod.act"))
        named = "'evilmod.act'"
    else:
        edit_json(folder / "config.json", lambda c: c.update(text_config={"auto_map": {"AutoModel": "evilmod.M"}}))
        named = "'text_config.auto_map'"
    no_load(monkeypatch)
    line = cli_fails([str(folder), "-o", str(tmp_path / "out")], capsys, named)
    assert "never" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("path", ["../outside", "/etc", "1_Pooling/../../outside", "C:\\models\\x"])
def test_module_paths_must_stay_inside_the_folder(source_dir, tmp_path, monkeypatch, path):
    folder = copy(source_dir, tmp_path / "model")
    edit_json(folder / "modules.json", lambda m: m[1].update(path=path))
    no_load(monkeypatch)
    with pytest.raises(ModelLoadError, match="leaves the model folder"):
        export(folder, tmp_path / "out")


def test_router_route_ids_must_stay_inside_the_folder(source_dir, tmp_path):
    folder = copy(source_dir, tmp_path / "model")
    write_router(folder, "router_config.json", {"../../x": "sentence_transformers.base.modules.transformer.Transformer"})
    with pytest.raises(ModelLoadError, match="leaves the model folder"):
        check_source_folder(folder)


def test_sentence_transformers_own_modules_old_and_new_names_pass(source_dir, tmp_path):
    folder = copy(source_dir, tmp_path / "model")
    check_source_folder(folder)
    (folder / "r").mkdir()
    write_router(folder / "r", "router_config.json", {"q_0_Pooling": "sentence_transformers.models.Pooling",
                                                      "d_0_Splade": "sentence_transformers.sparse_encoder.modules."
                                                                    "SpladePooling"})
    check_source_folder(folder / "r")


def test_a_hub_model_is_checked_before_it_is_loaded(source_dir, tmp_path, monkeypatch):
    folder = copy(source_dir, tmp_path / "snapshot" / ("0" * 40))
    add_evil_module(folder, tmp_path / "MARKER")
    monkeypatch.setattr(exporters.source, "hub_offline_reason", lambda: None)
    monkeypatch.setattr(exporters.source, "_hub_snapshot", lambda name, offline: folder)
    no_load(monkeypatch)
    with pytest.raises(UnsupportedModelError, match=r"evilmod\.Evil"):
        export("someone/some-model", tmp_path / "out")


def test_pickled_weights_load_with_weights_only(source_dir, tmp_path, monkeypatch):
    """A pytorch_model.bin (no safetensors) still exports, and every torch.load runs with weights_only=True; a
    library asking for weights_only=False while the model loads is refused."""
    from safetensors.torch import load_file

    folder = copy(source_dir, tmp_path / "model")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    calls = []
    original = torch.load

    def recording(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording)
    export(folder, tmp_path / "out")
    assert calls and all(weights_only is True for weights_only in calls)

    monkeypatch.setattr(torch, "load", original)
    with exporters.source._weights_only_torch_load(), pytest.raises(ModelLoadError, match="weights_only=False"):
        torch.load(folder / "pytorch_model.bin", weights_only=False)
    assert torch.load is original


# --- 2. every expected failure: one line, exit 1, nothing on disk ----------------------------------------------


def truncate_data(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])


def truncate_header(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])


def invalid_st_config(folder: Path) -> None:
    (folder / "config_sentence_transformers.json").write_text('{"model_type": "SentenceTransformer",')


def invalid_config_without_modules(folder: Path) -> None:
    (folder / "modules.json").unlink()
    (folder / "config.json").write_text("{not json")


def random_bytes_config(folder: Path) -> None:
    (folder / "1_Pooling" / "config.json").write_bytes(bytes(range(128, 256)) * 3)


@pytest.mark.parametrize(("damage", "named"), [
    (truncate_data, "model.safetensors is truncated"),
    (truncate_header, "model.safetensors is truncated"),
    (invalid_st_config, "config_sentence_transformers.json is not valid JSON"),
    (invalid_config_without_modules, "config.json is not valid JSON"),
    (random_bytes_config, "1_Pooling/config.json is not a text file"),
])
def test_a_broken_source_file_is_named_in_one_line(source_dir, tmp_path, capsys, monkeypatch, damage, named):
    folder = copy(source_dir, tmp_path / "model")
    damage(folder)
    no_load(monkeypatch)
    before = tree(tmp_path)
    cli_fails([str(folder), "-o", str(tmp_path / "out")], capsys, named)
    assert tree(tmp_path) == before


def test_output_under_a_file_fails_before_loading(source_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "a-file").write_text("x")
    no_load(monkeypatch)
    before = tree(tmp_path)
    cli_fails([str(source_dir), "-o", str(tmp_path / "a-file" / "sub" / "out")], capsys, "is a file, not a folder")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_unwritable_output_fails_before_loading(source_dir, tmp_path, capsys, monkeypatch, code):
    """Root ignores permission bits, so the probe's mkdir is made to fail as a read-only / forbidden folder would
    (test_read_only_and_full_filesystems_for_real mounts real ones where it can)."""

    def denied(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path))

    monkeypatch.setattr(exporters.folder.tempfile, "mkdtemp", denied)
    no_load(monkeypatch)
    cli_fails([str(source_dir), "-o", str(tmp_path / "out")], capsys, "is not writable", os.strerror(code))
    assert tree(tmp_path) == []


@pytest.mark.parametrize("native", [False, True])
def test_disk_full_while_writing_leaves_nothing(source_dir, tmp_path, capsys, monkeypatch, native):
    """ENOSPC from a write in the staging folder, as an OSError or as safetensors' Rust writer reports it: one
    line, and the staging folder and the parents it created are gone."""
    from safetensors import SafetensorError

    import exporters.api

    def full(model, folder):
        if native:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "model.safetensors"))

    monkeypatch.setattr(exporters.api, "save_sentence_transformers_files", full)
    cli_fails([str(source_dir), "-o", str(tmp_path / "new" / "deeper" / "out")], capsys,
              "No space left on device", "Free some space")
    assert tree(tmp_path) == []


def test_calibration_file_problems_are_one_line(source_dir, tmp_path, capsys, monkeypatch):
    no_load(monkeypatch)
    (tmp_path / "empty.txt").write_text("\n \n")
    cli_fails([str(source_dir), "-o", str(tmp_path / "out"), "--quantize", "int8-static", "--calibration",
               str(tmp_path / "empty.txt")], capsys, "--calibration", "holds no text")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00garbage")
    cli_fails([str(source_dir), "-o", str(tmp_path / "out"), "--quantize", "int8-static", "--calibration",
               str(tmp_path / "binary.txt")], capsys, "binary.txt", "not UTF-8")
    assert not (tmp_path / "out").exists()


def test_read_only_and_full_filesystems_for_real(source_dir, tmp_path):
    """In a private mount namespace: a read-only tmpfs (refused before loading) and a 1 MiB tmpfs (ENOSPC while
    the graph is written). Skipped where mounting is not allowed."""
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {tmp_path}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.strip()}")
    script = (f"mount -t tmpfs -o size=1m,ro tmpfs {tmp_path / 'ro'} && mount -t tmpfs -o size=1m tmpfs "
              f"{tmp_path / 'full'} && {sys.executable} -m exporters.cli {source_dir} -o {tmp_path / 'ro' / 'out'} -q"
              f" ; echo \"rc=$?\" >&2; {sys.executable} -m exporters.cli {source_dir} -o {tmp_path / 'full' / 'out'}"
              f" -q; echo \"rc=$?\" >&2; ls -A {tmp_path / 'full'} >&2")
    (tmp_path / "ro").mkdir()
    (tmp_path / "full").mkdir()
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 4, result.stderr  # two error lines, two exit codes, and an empty `ls`
    assert lines[0].startswith("st-export: error: ") and "Read-only file system" in lines[0], lines
    assert lines[1] == "rc=1"
    assert lines[2].startswith("st-export: error: ") and "No space left on device" in lines[2], lines
    assert lines[3] == "rc=1"
    assert "Traceback" not in result.stderr


# --- 3. an offline machine fails in seconds ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def startup_s(tmp_path_factory) -> float:
    """Seconds st-export takes to start (torch imported) and refuse a missing local folder, no network involved."""
    where = tmp_path_factory.mktemp("startup")
    start = time.monotonic()
    assert_one_error_line(run_cli(str(where / "nowhere"), "-o", str(where / "out")), "does not exist")
    return time.monotonic() - start


def offline_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "", **extra}
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        env[proxy] = ""
    return env


@pytest.mark.parametrize(("env", "reason"), [
    ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
    ({"TRANSFORMERS_OFFLINE": "1"}, "TRANSFORMERS_OFFLINE is set"),
    # A Hub endpoint on a closed loopback port: the probe is refused at once, and nothing leaves the machine.
    ({"HF_ENDPOINT": "http://127.0.0.1:9"}, "cannot be reached (127.0.0.1:9"),
])
def test_an_unknown_name_fails_fast_offline(tmp_path, startup_s, env, reason):
    start = time.monotonic()
    result = run_cli("st-export-test-nobody/no-such-model", "-o", str(tmp_path / "out"),
                     env=offline_env(tmp_path, **env))
    elapsed = time.monotonic() - start
    line = assert_one_error_line(result, "'st-export-test-nobody/no-such-model' is not a local folder", reason)
    assert "Retrying" not in result.stderr and "not in the Hugging Face cache" in line
    assert elapsed < startup_s + 15, (elapsed, startup_s)  # the Hub client's retries took 75 s
    assert not (tmp_path / "out").exists()


def test_no_network_is_told_by_the_probe(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(exporters.source, "hub_unreachable", lambda: "the Hugging Face Hub cannot be reached (test)")
    cli_fails(["st-export-test-nobody/no-such-model", "-o", str(tmp_path / "out")], capsys,
              "cannot be reached (test)", "not in the Hugging Face cache")


# --- 4. kill -9: staging folders and the --overwrite swap --------------------------------------------------------


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_kill_9_during_an_export_is_cleaned_by_the_next(source_dir, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "exporters.cli", str(source_dir), "-o", str(out), "-q"],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240

    def staging_written() -> bool:  # the pre-load write probe is an empty folder of the same name: wait for content
        return any(p.name.startswith(".out.partial-") and any(p.iterdir()) for p in tmp_path.iterdir() if p.is_dir())

    while not staging_written() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    left = hidden(tmp_path)
    assert len(left) == 1 and left[0].startswith(f".out.partial-{st_runtime.staging.host_tag()}-{process.pid}-"), left
    assert not out.exists()

    export(source_dir, out)
    assert hidden(tmp_path) == []
    assert (out / "st_runtime.json").is_file()


def test_staging_folders_of_live_processes_are_kept(tmp_path):
    out = tmp_path / "out"
    host = st_runtime.staging.host_tag()
    mine = tmp_path / f".out.partial-{st_runtime.staging.owner_tag()}-abc"
    dead = tmp_path / f".out.partial-{host}-999999999-1-abc"  # above any pid_max
    reused = tmp_path / f".out.partial-{host}-{os.getpid()}-1-abc"  # this pid, but started at another time
    other = tmp_path / f".other.partial-{host}-999999999-1-abc"  # another output's
    remote = tmp_path / ".out.partial-0badc0de-999999999-1-abc"  # another machine's, on a shared filesystem
    for folder in (mine, dead, reused, other, remote):
        folder.mkdir()
    check_output_dir(out, overwrite=False)
    expected = [mine.name, other.name, remote.name]
    if not st_runtime.staging.process_start_time(os.getpid()):  # no /proc: a live pid is never judged reused
        expected.append(reused.name)
    assert hidden(tmp_path) == sorted(expected)


CRASH = """
import os, signal, sys
from pathlib import Path
import exporters.folder as folder
step = sys.argv[2]
if step == "parked":  # no RENAME_EXCHANGE: die between parking the old folder and moving the new one in
    folder._RENAMEAT2 = None
    rename = Path.rename
    def dying_rename(self, target):
        result = rename(self, target)
        if ".old-" in Path(target).name:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    Path.rename = dying_rename
else:  # die right after the exchange, before the old copy (now in the staging folder) is deleted
    exchange = folder.exchange
    def dying_exchange(first, second):
        assert exchange(first, second)
        os.kill(os.getpid(), signal.SIGKILL)
    folder.exchange = dying_exchange
with folder.staged_output_dir(sys.argv[1], overwrite=True) as staging:
    (staging / "st_runtime.json").write_text('{"files": {}}')
"""


@pytest.mark.parametrize("step", ["parked", "exchanged"])
def test_kill_9_inside_the_overwrite_swap_never_loses_the_folder(exported_dir, tmp_path, step):
    if step == "exchanged" and exporters.folder._RENAMEAT2 is None:
        pytest.skip("no renameat2 on this system")
    out = copy(exported_dir, tmp_path / "out")
    old_manifest = (out / "st_runtime.json").read_text()
    result = subprocess.run([sys.executable, "-c", CRASH, str(out), step], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr
    if step == "parked":
        left = hidden(tmp_path)
        assert not out.exists() and len(left) == 2, left
        assert left[0].startswith(".out.old-") and left[1].startswith(".out.partial-"), left
        with pytest.raises(OutputExistsError, match="already exists"):
            check_output_dir(out, overwrite=False)  # the next export puts the earlier one back first
        assert (out / "st_runtime.json").read_text() == old_manifest
    else:
        assert (out / "st_runtime.json").read_text() == '{"files": {}}'  # the new one is in place
        assert len(hidden(tmp_path)) == 1 and ".out.partial-" in hidden(tmp_path)[0]
        check_output_dir(out, overwrite=True)
    assert hidden(tmp_path) == []


def test_exchange_swaps_two_folders_in_one_step(tmp_path):
    if exporters.folder._RENAMEAT2 is None:
        pytest.skip("no renameat2 on this system")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b").mkdir()
    assert exchange(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b" / "x").read_text() == "a" and not any((tmp_path / "a").iterdir())


def test_overwrite_without_exchange_still_replaces(exported_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(exporters.folder, "_RENAMEAT2", None)
    out = copy(exported_dir, tmp_path / "out")
    with staged_output_dir(out, overwrite=True) as staging:
        (staging / "new").write_text("new")
    assert tree(out) == ["new"] and hidden(tmp_path) == []


@pytest.mark.parametrize("change", ["added", "nested", "edited"])
def test_overwrite_refuses_files_st_export_did_not_write(exported_dir, source_dir, tmp_path, capsys, monkeypatch,
                                                         change):
    out = copy(exported_dir, tmp_path / "out")
    if change == "added":
        (out / "my-notes.txt").write_text("mine")
        named = "my-notes.txt"
    elif change == "nested":
        (out / "onnx" / "my-model.onnx").write_bytes(b"mine")
        named = "onnx/my-model.onnx"
    else:
        with open(out / "tokenizer.json", "a") as fh:
            fh.write(" ")
        named = "tokenizer.json (changed)"
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    no_load(monkeypatch)
    cli_fails([str(source_dir), "-o", str(out), "--overwrite"], capsys, named, "--overwrite would delete them")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_overwrite_of_an_untouched_export_works(exported_dir, source_dir, tmp_path):
    out = copy(exported_dir, tmp_path / "out")
    check_output_dir(out, overwrite=True)  # pristine: nothing in the way


# --- 6. hardening, second round (issue 25): files, sizes and configs the preflight reads ---------------------------


def as_dev_zero(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


def as_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def as_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def as_dangling_link(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.parent / "missing-target.json")


@pytest.mark.parametrize("name", ["modules.json", "config.json", "1_Pooling/config.json", "tokenizer.json"])
@pytest.mark.parametrize("replace", [as_dev_zero, as_fifo, as_folder, as_dangling_link])
def test_json_that_is_not_a_regular_file_is_refused_before_it_is_opened(source_dir, tmp_path, capsys, monkeypatch,
                                                                         name, replace):
    """/dev/zero as modules.json was read for 7 GB and a FIFO hung the export: every JSON file the preflight reads is
    checked with stat (never opened) to be a regular file first."""
    folder = copy(source_dir, tmp_path / "model")
    replace(folder / name)
    no_load(monkeypatch)
    cli_fails([str(folder), "-o", str(tmp_path / "out")], capsys, name)
    assert not (tmp_path / "out").exists()


def test_json_larger_than_the_limit_is_refused_unread(source_dir, tmp_path, monkeypatch):
    folder = copy(source_dir, tmp_path / "model")
    monkeypatch.setattr(exporters.preflight, "MAX_JSON_BYTES", 1000)
    no_load(monkeypatch)
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json has \d+ bytes, more than the 1000"):
        export(folder, tmp_path / "out")


@pytest.mark.parametrize("path", [".hidden", ".cache/pooling", "sub/.git"])
def test_module_paths_in_hidden_folders_are_refused(source_dir, tmp_path, monkeypatch, path):
    """The preflight skips hidden folders (a Hub download's .cache), so a module kept in one would escape its checks
    (an auto_map in .hidden/config.json would never be seen)."""
    folder = copy(source_dir, tmp_path / "model")
    (folder / path).mkdir(parents=True)
    (folder / path / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "evilmod.M"}}))
    edit_json(folder / "modules.json", lambda m: m[1].update(path=path))
    no_load(monkeypatch)
    with pytest.raises(ModelLoadError, match="hidden folder"):
        export(folder, tmp_path / "out")


def test_a_safetensors_header_claiming_gigabytes_is_not_read(source_dir, tmp_path, monkeypatch):
    """A header length of 3 GB in a (sparse) file that large was read and decoded whole; the claim is now checked
    against safetensors' own 100 MB limit before a byte of it is read."""
    folder = copy(source_dir, tmp_path / "model")
    path = folder / "model.safetensors"
    claimed = 3 * 10**9
    with open(path, "wb") as fh:
        fh.write(claimed.to_bytes(8, "little"))
        fh.truncate(8 + claimed + 16)  # sparse: no disk space used
    reads: list[int] = []
    real_open = open

    class Counting:
        def __init__(self, fh):
            self._fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._fh.close()

        def read(self, size=-1):
            data = self._fh.read(size)
            reads.append(len(data))
            return data

    def counting_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        return Counting(fh) if str(file) == str(path) else fh

    monkeypatch.setattr(exporters.preflight, "open", counting_open, raising=False)
    no_load(monkeypatch)
    with pytest.raises(ModelLoadError, match=r"claims 3000000000 bytes, more than safetensors' limit"):
        export(folder, tmp_path / "out")
    assert sum(reads) <= 8


def set_config(name: str, **values):
    def change(folder: Path) -> None:
        edit_json(folder / name, lambda c: c.update(values))
    return change


@pytest.mark.parametrize(("damage", "named"), [
    (set_config("config.json", num_hidden_layers=1e6), "1000000 layers (num_hidden_layers)"),
    (set_config("config.json", hidden_size=65536), "implies at least"),
    (set_config("config.json", vocab_size=10**9), "implies at least"),
    (set_config("config.json", max_position_embeddings=10**9), "implies at least"),
    (set_config("config.json", num_hidden_layers="12"), "num_hidden_layers"),
    (set_config("config.json", intermediate_size=-1), "intermediate_size"),
    (set_config("sentence_bert_config.json", max_seq_length=-1), "max_seq_length to -1"),
    (set_config("sentence_bert_config.json", max_seq_length=0), "max_seq_length to 0"),
    (set_config("sentence_bert_config.json", max_seq_length="256"), "max_seq_length"),
])
def test_absurd_configs_fail_fast_in_one_line(source_dir, tmp_path, capsys, monkeypatch, damage, named):
    """`num_hidden_layers: 1e6` grew memory for minutes and `max_seq_length: -1` ended in an OverflowError traceback:
    the sizes are checked, and compared with the weights shipped, before transformers allocates anything."""
    folder = copy(source_dir, tmp_path / "model")
    damage(folder)
    no_load(monkeypatch)
    cli_fails([str(folder), "-o", str(tmp_path / "out")], capsys, named)
    assert not (tmp_path / "out").exists()


# Real configurations and the bytes of their weights: none may be refused (ALBERT shares its layers and factorizes its
# token embedding; Qwen3 is bf16 with a padded vocabulary).
REAL_CONFIGS = {
    "bert-base-uncased": ({"num_hidden_layers": 12, "hidden_size": 768, "intermediate_size": 3072,
                           "vocab_size": 30522, "max_position_embeddings": 512}, 440_449_768),
    "albert-base-v2": ({"num_hidden_layers": 12, "num_hidden_groups": 1, "hidden_size": 768, "embedding_size": 128,
                        "intermediate_size": 3072, "vocab_size": 30000, "max_position_embeddings": 512}, 47_372_894),
    "distilbert-base": ({"n_layers": 6, "dim": 768, "hidden_dim": 3072, "vocab_size": 30522,
                         "max_position_embeddings": 512}, 265_462_608),
    "Qwen3-Embedding-0.6B": ({"num_hidden_layers": 28, "hidden_size": 1024, "intermediate_size": 3072,
                              "vocab_size": 151669, "max_position_embeddings": 32768}, 1_191_586_416),
}


@pytest.mark.parametrize("name", sorted(REAL_CONFIGS))
def test_real_configs_pass_the_size_check(tmp_path, name):
    from exporters.config_limits import check_configs

    config, size = REAL_CONFIGS[name]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with open(tmp_path / "model.bin", "wb") as fh:
        fh.truncate(size)  # sparse: only its size is read
    check_configs(tmp_path, {tmp_path / "config.json": config})
    with open(tmp_path / "model.bin", "wb") as fh:
        fh.truncate(size // 100)
    with pytest.raises(ModelLoadError, match="implies at least"):
        check_configs(tmp_path, {tmp_path / "config.json": config})


def test_the_real_minilm_folder_passes_the_preflight(minilm_dir):
    check_source_folder(minilm_dir)


@pytest.fixture
def umask():
    """Set the process umask for one test (restored after)."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask", [0o022, 0o002])
@pytest.mark.parametrize("flags", [[], ["--quantize", "int8"], ["--backend", "openvino"]])
def test_every_file_st_export_writes_has_the_modes_the_umask_gives(source_dir, tmp_path, umask, mask, flags):
    """After --quantize/--backend the manifest was rewritten from a temporary file, mode 0600, so a container running
    as another user (the Docker recipe's USER nobody) could not read the folder: every file and folder now has the
    modes the umask gives."""
    umask(mask)
    out = tmp_path / "out"
    assert cli_main([str(source_dir), "-o", str(out), "-q", *flags]) == 0
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    expected = {path: (0o777 if (out / path).is_dir() else 0o666) & ~mask for path in modes}
    assert modes == expected
    assert "st_runtime.json" in modes and len(modes) > 5


# --- 7. the exported tokenizer matches the model (issue 25) ---------------------------------------------------------


def tiny_model(source_dir: Path) -> SentenceTransformer:
    return SentenceTransformer(str(source_dir), device="cpu")


def five_token_tokenizer():
    """What transformers 5 builds from `BertTokenizerFast(vocab_file=...)` or a folder without tokenizer.json: the
    special tokens only, every word [UNK]."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


@pytest.mark.parametrize("replace", [Path.unlink, as_dangling_link, as_folder, as_dev_zero])
def test_a_source_without_a_usable_tokenizer_json_is_refused(source_dir, tmp_path, capsys, monkeypatch, replace):
    """Without a usable tokenizer.json the export exited 0 with a 5-token vocabulary (every word [UNK]) and passed its
    parity gate. The preflight is switched off here: the tokenizer check itself must refuse every case."""
    from tokenizers import Tokenizer

    folder = copy(source_dir, tmp_path / "model")
    replace(folder / "tokenizer.json")
    monkeypatch.setattr(exporters.source, "check_source_folder", lambda folder: None)
    out = tmp_path / "out"
    if (folder / "vocab.txt").is_file():  # transformers 4 saves one beside tokenizer.json, and builds from it
        if cli_main([str(folder), "-o", str(out), "-q"]) == 0:  # then only a tokenizer that matches may be written
            exported = Tokenizer.from_file(str(out / "tokenizer.json"))
            assert exported.get_vocab_size() == 30522
            assert exported.token_to_id("[UNK]") not in exported.encode("hello world, a man is eating").ids
            return
        capsys.readouterr()
    line = cli_fails([str(folder), "-o", str(out)], capsys, "Module 0 (Transformer)", "tokenizer.json")
    assert "30522 rows" in line
    assert not out.exists()


def test_an_all_unknown_tokenizer_is_refused_even_when_its_size_fits(source_dir, tmp_path, monkeypatch):
    model = tiny_model(source_dir)
    try:
        model[0].tokenizer = five_token_tokenizer()
    except AttributeError:  # sentence-transformers 6: `tokenizer` is a property that reads the processor
        model[0].processor = five_token_tokenizer()
    monkeypatch.setattr(exporters.tokenizer_match, "embedding_rows", lambda auto_model: None)  # no size to compare
    with pytest.raises(ModelLoadError, match=r"maps \d+ of the \d+ tokens of the probe texts to the unknown token"):
        export(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("rows", "refused"), [(30522, None), (30522 + 392, None), (30000, "more than"),
                                               (70000, "fewer than half of")])
def test_the_tokenizer_must_fit_the_embedding_matrix(source_dir, tmp_path, rows, refused):
    """Padded embedding matrices are common (Qwen3: 151669 tokens, 151936 rows) and export; a tokenizer with more
    tokens than rows, or fewer than half of them, is not the model's."""
    model = tiny_model(source_dir)
    model[0].auto_model.resize_token_embeddings(rows)
    if refused is None:
        export(model, tmp_path / "out")
        assert (tmp_path / "out" / "tokenizer.json").is_file()
    else:
        with pytest.raises(ModelLoadError, match=f"30522 tokens, {refused} the {rows} rows"):
            export(model, tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_more_unknown_tokens_than_the_shipped_files_give_is_refused(source_dir, bert_vocab, tmp_path):
    """A tokenizer that transformers built differently from the files the folder ships (here: the uncased vocab.txt
    without its lower-casing) gives more [UNK] on the probe texts than the files loaded with `tokenizers` itself."""
    from tokenizers.normalizers import BertNormalizer

    from exporters.tokenizer_match import check_tokenizer_matches

    folder = copy(source_dir, tmp_path / "model")
    (folder / "tokenizer.json").unlink()
    shutil.copy(bert_vocab, folder / "vocab.txt")
    model = tiny_model(source_dir)
    module = model[0]
    module.tokenizer.name_or_path = str(folder)
    check_tokenizer_matches("Module 0 (Transformer)", module)  # as shipped: the same [UNK] count
    module.tokenizer.backend_tokenizer.normalizer = BertNormalizer(lowercase=False)
    with pytest.raises(ModelLoadError, match=r"the tokenizer files of .* give \d+"):
        check_tokenizer_matches("Module 0 (Transformer)", module)


def test_max_seq_length_above_the_positions_is_refused_before_export(source_dir, tmp_path, capsys):
    """The tiny model has 64 positions: truncating at 100 fails in sentence-transformers itself on long texts (an
    IndexError traceback from the parity check); it is refused first, in one line."""
    folder = copy(source_dir, tmp_path / "model")
    edit_json(folder / "sentence_bert_config.json", lambda c: c.update(max_seq_length=100))
    cli_fails([str(folder), "-o", str(tmp_path / "out")], capsys, "max_seq_length 100",
              "takes at most 64 tokens")
    assert not (tmp_path / "out").exists()
