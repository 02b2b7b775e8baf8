"""st-embed on hostile or broken input and a hostile machine: one run per output at a time, never over its own
input, line ids that a lone CR cannot shift, undecodable bytes and unusable ids judged by --on-bad-row, nothing
half-written on a full disk, a resume that notices an edited input, and every error's advice a rerun that works."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import build_tiny_transformer

import st_runtime
from exporters import export
from st_runtime.embed.cli import main as embed_main
from st_runtime.staging import owner_tag

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
ATOL = 1e-5
SCRIPTS = ["The quick brown fox jumps.", "Быстрая коричневая лиса прыгает.", "敏捷的棕色狐狸跳过了懒狗。",
           "الثعلب البني السريع يقفز.", "ह्रदय परिवर्तन होता है।", "Ελληνικά κείμενα εδώ.", "🦊 jumps over 🐶 again."]


@pytest.fixture(scope="module")
def bi(tmp_path_factory, bert_vocab) -> Path:
    """A tiny exported bi-encoder."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    root = tmp_path_factory.mktemp("embed-hardening")
    build_tiny_transformer(root / "bert", bert_vocab)
    transformer = Transformer(str(root / "bert"), max_seq_length=48)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension())], device="cpu",
                                prompts={"query": "query: "})
    export(model, root / "bi")
    return root / "bi"


@pytest.fixture(scope="module")
def encode(bi):
    model = st_runtime.SentenceTransformer(bi)
    return lambda texts, **kw: model.encode(list(texts), **kw)


def run(*args) -> int:
    return embed_main([str(a) for a in args] + ["--no-progress"])


def one_error(capsys, *words: str) -> str:
    """The one `st-embed: error:` line of a failed run, holding every word."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("st-embed: error: "), err
    assert "Traceback" not in err and all(w in lines[0] for w in words), lines[0]
    return lines[0]


def read(path: Path) -> tuple[list, list]:
    table = pq.read_table(path)
    return table.column("id").to_pylist(), table.column("embedding").to_pylist()


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def corpus(n: int) -> list[str]:
    return [f"{SCRIPTS[i % len(SCRIPTS)]} {i}" for i in range(n)]


def leftovers(root: Path) -> list[str]:
    """Temporary and lock files under root."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in (".tmp", ".lock"))


def _enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def fail_savez(monkeypatch, at: int, exc: type[BaseException] | None = None) -> None:
    """np.savez (a shard being written) fails at its `at`-th call, after writing half a shard: a full disk, or
    `exc` (KeyboardInterrupt: a Ctrl-C). Undo with monkeypatch.undo()."""
    real_savez, calls = np.savez, []

    def savez(fh, **arrays):
        calls.append(1)
        if len(calls) == at:
            fh.write(b"half a shard")
            raise exc() if exc else _enospc(fh.name)
        real_savez(fh, **arrays)

    monkeypatch.setattr(np, "savez", savez)


# --- 1. one run per output ------------------------------------------------------------------------------------------

HOLD_LOCK = textwrap.dedent("""
    import sys
    from pathlib import Path
    from st_runtime.embed.output import output_lock
    with output_lock(Path(sys.argv[1])):
        print("locked", flush=True)
        sys.stdin.read()
""")


def hold_lock(output: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(output)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    return holder


def test_a_second_run_fails_at_once_naming_the_first(bi, encode, tmp_path, capsys):
    src = jsonl(tmp_path / "c.jsonl", [{"id": i, "text": t} for i, t in enumerate(corpus(20))])
    out = tmp_path / "o.parquet"
    holder = hold_lock(out)
    try:
        assert run(bi, "--input", src, "--id-column", "id", "--output", out) == 1
        one_error(capsys, "being written by another st-embed run", f"pid {holder.pid} on {socket.gethostname()}",
                  "started", "wait for it to end or stop it, then run again")
        assert not out.exists() and not (tmp_path / "o.parquet.parts").exists()  # it touched nothing
    finally:
        holder.stdin.close()
        holder.wait()
    assert run(bi, "--input", src, "--id-column", "id", "--output", out) == 0  # the advised rerun
    ids, emb = read(out)
    assert ids == list(range(20))
    np.testing.assert_allclose(np.array(emb), encode(corpus(20)), atol=ATOL)
    assert leftovers(tmp_path) == []  # the lock file goes with the run


def test_a_lock_left_by_a_killed_run_does_not_block(bi, tmp_path):
    src = jsonl(tmp_path / "c.jsonl", [{"text": t} for t in corpus(5)])
    out = tmp_path / "o.parquet"
    holder = hold_lock(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "o.parquet.lock").exists()  # kill -9 leaves the file; the kernel released the lock
    assert run(bi, "--input", src, "--output", out) == 0
    assert leftovers(tmp_path) == []


def test_two_real_runs_on_one_output_leave_a_whole_output(bi, encode, tmp_path):
    """The audit's case: two st-embed processes on one output at the same time. One wins, the other fails with one
    line (the lock, or the output it finds done), and the output is whole."""
    texts = corpus(1500)
    src = jsonl(tmp_path / "c.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)])
    out = tmp_path / "o.parquet"
    cmd = [sys.executable, "-m", "st_runtime.embed.cli", str(bi), "--input", str(src), "--id-column", "id",
           "--output", str(out), "--shard-rows", "100", "--no-progress"]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 1], results
    loser = next(err for code, err in results if code == 1).strip().splitlines()
    assert len(loser) == 1 and ("being written by another st-embed run" in loser[0] or "exists" in loser[0]), loser
    ids, emb = read(out)
    assert ids == [f"d{i}" for i in range(len(texts))]
    np.testing.assert_allclose(np.array(emb), encode(texts), atol=ATOL)
    assert leftovers(tmp_path) == [] and not (tmp_path / "o.parquet.parts").exists()


def test_temporary_files_are_named_for_their_process(bi, tmp_path, monkeypatch):
    """Every file is written under a name holding this process's host tag, pid and start time, inside the parts
    folder, and renamed into place."""
    src = jsonl(tmp_path / "c.jsonl", [{"text": t} for t in corpus(30)])
    out = tmp_path / "o.npy"
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append((Path(a), Path(b))), real_replace(a, b))[1])
    assert run(bi, "--input", src, "--output", out, "--shard-rows", 10) == 0
    targets = {b.name for _, b in renames}
    assert {"state.json", "shard-000000.npz", "shard-000002.npz", "o.npy", "o.ids.npy"} <= targets
    tag = owner_tag()
    assert all(a.name == f"{b.name}.{tag}.tmp" and a.parent == tmp_path / "o.npy.parts" for a, b in renames), renames


# --- 2. never over the input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["same path", "dotdot path", "symlink", "hard link", "npy ids file hard link"])
def test_the_output_is_never_the_input(bi, tmp_path, capsys, how):
    src = jsonl(tmp_path / "c.jsonl", [{"text": t} for t in corpus(5)])
    before = src.read_bytes()
    out = {"same path": src, "dotdot path": tmp_path / "sub" / ".." / "c.jsonl", "symlink": tmp_path / "o.parquet",
           "hard link": tmp_path / "o.parquet", "npy ids file hard link": tmp_path / "o.npy"}[how]
    (tmp_path / "sub").mkdir()
    if how == "symlink":
        out.symlink_to(src)
    elif how == "hard link":
        os.link(src, out)
    elif how == "npy ids file hard link":
        os.link(src, tmp_path / "o.ids.npy")
    assert run(bi, "--input", src, "--output", out, "--format", "parquet" if how != "npy ids file hard link" else "npy",
               "--overwrite") == 1
    one_error(capsys, "is the input file", "choose another --output")
    assert src.read_bytes() == before and not (tmp_path / f"{out.name}.parts").exists()
    assert run(bi, "--input", src, "--output", tmp_path / "elsewhere.parquet", "--overwrite") == 0  # the advice
    assert src.read_bytes() == before


def test_nothing_the_run_reads_is_inside_what_it_deletes(bi, tmp_path, capsys):
    """The parts folder is deleted at the end (and by --overwrite): neither the input nor the model folder may be in
    it; the output may not be inside the model folder."""
    parts = tmp_path / "o.parquet.parts"
    parts.mkdir()
    src = jsonl(parts / "c.jsonl", [{"text": t} for t in corpus(5)])
    for extra in ([], ["--overwrite"]):
        assert run(bi, "--input", src, "--output", tmp_path / "o.parquet", *extra) == 1
        one_error(capsys, "The input", "is inside", "move it out of there, or choose another --output")
        assert src.exists()
    assert run(bi, "--input", src, "--output", tmp_path / "other.parquet") == 0  # the advice
    assert src.exists()
    capsys.readouterr()
    assert run(bi, "--input", src, "--output", bi / "emb.parquet") == 1
    one_error(capsys, "inside the model folder", "choose another --output")
    assert not (bi / "emb.parquet").exists() and not (bi / "emb.parquet.lock").exists()


# --- 3. line ends -----------------------------------------------------------------------------------------------------


def test_a_lone_cr_does_not_end_a_line(bi, encode, tmp_path):
    """.txt: only "\\n" and "\\r\\n" end a line, so the ids (line numbers) stay put; a lone "\\r", U+2028, U+0085 or a
    form feed stays in its text. .jsonl: a "\\r" between tokens is JSON whitespace, not a line end."""
    lines = ["alpha\rbeta", "Быстрая\rлиса", "中文\u2028段落", "tab\x0cform\x85feed", "עברית\r\rשלום", "last one"]
    src = tmp_path / "c.txt"
    src.write_bytes("\n".join(lines[:3]).encode() + b"\r\n" + "\r\n".join(lines[3:]).encode())  # no final newline
    out = tmp_path / "o.parquet"
    assert run(bi, "--input", src, "--output", out) == 0
    ids, emb = read(out)
    assert ids == list(range(len(lines)))
    np.testing.assert_allclose(np.array(emb), encode(lines), atol=ATOL)
    from st_runtime.embed.io import RowReader, count_rows  # the progress bar's count agrees with the rows read

    assert count_rows(src, "txt") == len(list(RowReader(src, "txt", column="text", id_column=None))) == len(lines)

    src = tmp_path / "c.jsonl"
    src.write_bytes('{"id": "a",\r"text": "Ωμέγα\\r εδώ"}\r\n\r\n{"id": "b", "text": "two"}\n'.encode())
    assert count_rows(src, "jsonl") == 2
    assert run(bi, "--input", src, "--id-column", "id", "--output", out, "--overwrite") == 0
    ids, emb = read(out)
    assert ids == ["a", "b"]
    np.testing.assert_allclose(np.array(emb), encode(["Ωμέγα\r εδώ", "two"]), atol=ATOL)


# --- 4 and 5. undecodable bytes and unusable ids go through --on-bad-row -----------------------------------------


def bad_bytes_inputs(tmp_path: Path) -> dict[str, tuple[Path, list[str]]]:
    """Inputs with undecodable bytes in rows 1 and 3, and the good texts of rows 0, 2, 4."""
    good = ["good one", "中文 ok", "last"]
    txt = tmp_path / "c.txt"
    txt.write_bytes(b"good one\nbad \xff\xfe text\n\xe4\xb8\xad\xe6\x96\x87 ok\ncut \xe4\xb8\nlast")
    jl = tmp_path / "c.jsonl"
    jl.write_bytes(b'{"id": "r0", "text": "good one"}\n{"id": "r1", "text": "caf\xe9"}\n'
                   b'{"id": "r2", "text": "\xe4\xb8\xad\xe6\x96\x87 ok"}\n{"id": "r3", "text": "\xc3"}\n'
                   b'{"id": "r4", "text": "last", "other": "\xff ignored"}\n')
    cs = tmp_path / "c.csv"
    cs.write_bytes(b"id,text\nr0,good one\nr1,bad \xff\nr2,\xe4\xb8\xad\xe6\x96\x87 ok\nr3,\x80\nr4,last\n")
    pqt = tmp_path / "c.parquet"  # string values that are not UTF-8, as a writer that does not check them leaves
    texts = [b"good one", b"bad \xff", "中文 ok".encode(), b"\x80", b"last"]
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(5)],
                             "text": pa.array(texts, pa.binary()).view(pa.string())}), pqt)
    return {"txt": (txt, good), "jsonl": (jl, good), "csv": (cs, good), "parquet": (pqt, good)}


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv", "parquet"])
def test_undecodable_bytes_are_bad_rows(bi, encode, tmp_path, capsys, fmt):
    src, good = bad_bytes_inputs(tmp_path)[fmt]
    out = tmp_path / "o.parquet"
    id_args = [] if fmt == "txt" else ["--id-column", "id"]
    assert run(bi, "--input", src, "--output", out, *id_args) == 1
    one_error(capsys, "Row 1", "is not valid UTF-8 (byte 0x", "--on-bad-row skip", "--on-bad-row empty")
    assert run(bi, "--input", src, "--output", out, *id_args, "--on-bad-row", "skip") == 0  # the advice
    assert "2 bad rows, 2 left out" in capsys.readouterr().err
    ids, emb = read(out)
    assert ids == ([0, 2, 4] if fmt == "txt" else ["r0", "r2", "r4"])
    np.testing.assert_allclose(np.array(emb), encode(good), atol=ATOL)
    assert run(bi, "--input", src, "--output", out, *id_args, "--on-bad-row", "empty", "--overwrite") == 0
    ids, emb = read(out)
    assert ids == (list(range(5)) if fmt == "txt" else [f"r{i}" for i in range(5)])
    assert [e is None for e in emb] == [False, True, False, True, False]


def test_unusable_ids_are_bad_rows(bi, encode, tmp_path, capsys):
    """Ids past int64, non-integral, boolean, null or nested ones, and undecodable string ids: the bad-row policy
    with the row number, never a traceback. "empty" leaves them out too (there is no id to write them under)."""
    ids = [7, 2**70, 8, -(2**70), 1.5, True, None, [1], 9]
    rows = [{"id": i, "text": f"text {n}"} for n, i in enumerate(ids)]
    src = tmp_path / "c.jsonl"
    src.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + b'{"id": "\xff", "text": "x"}\n')
    out = tmp_path / "o.parquet"
    assert run(bi, "--input", src, "--id-column", "id", "--output", out) == 1
    one_error(capsys, "Row 1 has the id 1180591620717411303424, outside the int64 range",
              "pass --on-bad-row skip or --on-bad-row empty to leave it out")
    for policy, extra in (("skip", []), ("empty", ["--overwrite"])):
        assert run(bi, "--input", src, "--id-column", "id", "--output", out, "--on-bad-row", policy, *extra) == 0
        assert "7 bad rows, 7 left out" in capsys.readouterr().err
        got, emb = read(out)
        assert got == [7, 8, 9] and pq.read_schema(out).field("id").type == pa.int64()
        np.testing.assert_allclose(np.array(emb), encode(["text 0", "text 2", "text 8"]), atol=ATOL)

    src = tmp_path / "u.parquet"  # an unsigned 64-bit id column: its top half is past int64 too
    pq.write_table(pa.table({"id": pa.array([1, 2**64 - 1], pa.uint64()), "text": ["one", "two"]}), src)
    assert run(bi, "--input", src, "--id-column", "id", "--output", out, "--overwrite") == 1
    one_error(capsys, "Row 1 has the id 18446744073709551615, outside the int64 range")


def test_jsonl_lines_that_are_not_objects_are_bad_rows(bi, tmp_path, capsys):
    src = tmp_path / "c.jsonl"
    src.write_text('{"text": "fine"}\n\n{"text": \n[1, 2]\n' + "[" * 100_000 + "\n" + '{"text": "also fine"}\n')
    out = tmp_path / "o.parquet"
    assert run(bi, "--input", src, "--output", out) == 1
    one_error(capsys, "Row 1 (line 3) is not JSON (Expecting value)", "--on-bad-row skip")
    assert run(bi, "--input", src, "--output", out, "--on-bad-row", "empty") == 0
    ids, emb = read(out)
    assert ids == [0, 1, 2, 3, 4] and [e is None for e in emb] == [False, True, True, True, False]


def test_ray_embedder_judges_rows_with_the_same_policy(bi, tmp_path):
    """The Ray Data callable uses the same judge: same bad rows, the advice in Python's spelling."""
    from st_runtime.embed import EmbedConfig, EmbedError, embed_file
    from st_runtime.integrations.ray import Embedder

    for make in (lambda: Embedder(bi, on_bad_row="drop"),
                 lambda: embed_file(EmbedConfig(bi, tmp_path / "c.txt", tmp_path / "o.parquet", on_bad_row="drop"))):
        with pytest.raises(EmbedError, match="must be error, skip or empty, got 'drop'"):
            make()
    batch = pa.table({"id": pa.array([1, 2**64 - 1, 3], pa.uint64()), "text": ["one", "two", None]})
    with pytest.raises(EmbedError, match=r"Row 1 of a batch has the id .*on_bad_row='skip' or on_bad_row='empty'"):
        Embedder(bi, id_column="id")(batch)
    out = Embedder(bi, id_column="id", on_bad_row="empty")(batch)
    assert out.column("id").to_pylist() == [1, 3] and out.column("embedding").to_pylist()[1] is None


# --- 6. a full disk ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["shard", "parquet", "npy", "pyarrow message"])
def test_a_full_disk_leaves_no_temporary_file_and_the_rerun_goes_on(bi, encode, tmp_path, capsys, monkeypatch,
                                                                    where):
    import st_runtime.embed.run as embed_run

    texts = corpus(60)
    src = jsonl(tmp_path / "c.jsonl", [{"text": t} for t in texts])
    out = tmp_path / ("o.npy" if where == "npy" else "o.parquet")
    argv = [bi, "--input", src, "--output", out, "--shard-rows", 20]
    if where == "shard":
        fail_savez(monkeypatch, at=2)
    else:
        name = "write_npy" if where == "npy" else "write_parquet"

        def full(path, *args, **kwargs):
            Path(path).write_bytes(b"half an output")
            if where == "pyarrow message":
                raise pa.lib.ArrowIOError("Error writing bytes to file. Detail: [errno 28] No space left on device")
            raise _enospc(path)

        monkeypatch.setattr(embed_run, name, full)
    assert run(*argv) == 1
    one_error(capsys, "No space left on device", "Free some space and run the same command again")
    assert leftovers(tmp_path) == [] and not out.exists()
    assert (tmp_path / f"{out.name}.parts" / "shard-000000.npz").exists()  # finished shards are kept
    monkeypatch.undo()
    assert run(*argv) == 0  # the advice
    assert f"resumed at row {20 if where == 'shard' else 60}" in capsys.readouterr().err
    emb = np.load(out) if where == "npy" else np.array(read(out)[1])
    np.testing.assert_allclose(emb, encode(texts), atol=ATOL)
    assert leftovers(tmp_path) == []


def test_a_real_full_file_system(bi, tmp_path):
    """A 192 KiB tmpfs in a private mount namespace: the run fails with one line and leaves no temporary file;
    grown to 16 MiB, the same command finishes. Skipped where mounting is not allowed."""
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {tmp_path}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.strip()}")
    texts = corpus(3000)
    src = jsonl(tmp_path / "c.jsonl", [{"text": t} for t in texts])
    disk = tmp_path / "disk"
    disk.mkdir()
    embed = (f"{sys.executable} -m st_runtime.embed.cli {bi} --input {src} --output {disk / 'o.parquet'} "
             "--shard-rows 200 --no-progress")
    script = (f"mount -t tmpfs -o size=192k tmpfs {disk} && {embed}; echo rc=$? >&2; "
              f"find {disk} -name '*.tmp' -o -name '*.lock' >&2; mount -o remount,size=16m {disk} && {embed} "
              f"2>/dev/null; echo rc=$? >&2; cp {disk / 'o.parquet'} {tmp_path / 'copy.parquet'}")
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, result.stderr  # the error, its exit code, no leftover file, the rerun's exit code
    assert lines[0].startswith("st-embed: error: Cannot write the embeddings") and "No space left" in lines[0], lines
    assert lines[1:] == ["rc=1", "rc=0"], lines
    np.testing.assert_allclose(np.array(read(tmp_path / "copy.parquet")[1]), st_runtime.SentenceTransformer(
        bi).encode(texts), atol=ATOL)


# --- 7. a resume notices an edited input -------------------------------------------------------------------------


def test_resume_refuses_an_input_edited_in_place(bi, encode, tmp_path, capsys, monkeypatch):
    """An edit in the middle of a 3.5 MB input (past its first and last MiB) that keeps its size and modification
    time: the rerun says the input changed and to start over; --overwrite then embeds the new text."""
    texts = [f"row {i:05d} aaaa" for i in range(3300)]
    src = jsonl(tmp_path / "c.jsonl", [{"id": i, "text": t, "pad": "x" * 1000} for i, t in enumerate(texts)])
    out = tmp_path / "o.parquet"
    argv = [bi, "--input", src, "--id-column", "id", "--output", out, "--shard-rows", 500]
    fail_savez(monkeypatch, at=4)  # a full disk at the fourth shard: a partial run of 1500 rows
    assert run(*argv) == 1
    capsys.readouterr()
    monkeypatch.undo()
    stat = src.stat()
    data = src.read_bytes()
    at = data.index(b"row 01200 aaaa")
    assert 1 << 20 < at < stat.st_size - (1 << 20)
    src.write_bytes(data[:at] + b"row 01200 bbbb" + data[at + 14:])
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert src.stat().st_size == stat.st_size and src.stat().st_mtime_ns == stat.st_mtime_ns
    assert run(*argv) == 1
    one_error(capsys, "changed since the partial run", "first 1500 rows", "Run again with --overwrite")
    assert run(*argv, "--overwrite") == 0  # the advice
    ids, emb = read(out)
    assert ids == list(range(3300))
    np.testing.assert_allclose(emb[1200], encode(["row 01200 bbbb"])[0], atol=ATOL)


def test_resume_of_an_unchanged_input_goes_on(bi, encode, tmp_path, capsys, monkeypatch):
    """The fingerprint does not refuse what it should not: rows appended after a partial run are embedded too."""
    texts = corpus(50)
    src = jsonl(tmp_path / "c.jsonl", [{"text": t} for t in texts[:40]])
    out = tmp_path / "o.parquet"
    argv = [bi, "--input", src, "--output", out, "--shard-rows", 10]
    fail_savez(monkeypatch, at=3, exc=KeyboardInterrupt)
    assert run(*argv) == 130
    monkeypatch.undo()
    assert leftovers(tmp_path) == []
    with open(src, "a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps({"text": t}) + "\n" for t in texts[40:]))
    capsys.readouterr()
    assert run(*argv) == 0
    assert "resumed at row 20" in capsys.readouterr().err
    np.testing.assert_allclose(np.array(read(out)[1]), encode(texts), atol=ATOL)


# --- 8. every advice is a rerun that works ------------------------------------------------------------------------


def test_a_bad_row_error_is_continued_by_the_advised_policy(bi, encode, tmp_path, capsys):
    """The run stopped at a bad row keeps its finished shards; the advised `--on-bad-row skip` (or empty) rerun,
    without --overwrite, goes on from them. After that the partial run is one of that policy."""
    texts = corpus(40)
    rows = [{"id": i, "text": t} for i, t in enumerate(texts)]
    rows[25]["text"] = None
    src = jsonl(tmp_path / "c.jsonl", rows)
    out = tmp_path / "o.parquet"
    argv = [bi, "--input", src, "--id-column", "id", "--output", out, "--shard-rows", 10]
    assert run(*argv) == 1
    one_error(capsys, "Row 25 (id 25) is NoneType", "pass --on-bad-row skip (leave it out) or --on-bad-row empty")
    assert sorted(p.name for p in (tmp_path / "o.parquet.parts").glob("shard-*")) == ["shard-000000.npz",
                                                                                     "shard-000001.npz"]
    assert run(*argv, "--on-bad-row", "skip") == 0
    assert "resumed at row 20" in capsys.readouterr().err
    ids, emb = read(out)
    assert ids == [i for i in range(40) if i != 25]
    np.testing.assert_allclose(np.array(emb), encode(texts[:25] + texts[26:]), atol=ATOL)


def test_the_advice_of_a_refused_partial_run_works(bi, tmp_path, capsys, monkeypatch):
    src = jsonl(tmp_path / "c.jsonl", [{"text": t} for t in corpus(30)])
    out = tmp_path / "o.parquet"
    argv = [bi, "--input", src, "--output", out, "--shard-rows", 10, "--on-bad-row", "skip"]
    fail_savez(monkeypatch, at=2)
    assert run(*argv) == 1
    monkeypatch.undo()
    capsys.readouterr()
    for other in (["--prompt-name", "query"], ["--on-bad-row", "empty"]):  # skip shards cannot go on as empty ones
        assert run(*argv, *other) == 1
        one_error(capsys, "holds a partial run with", "rerun with the same ones, or pass --overwrite")
    assert run(*argv) == 0  # the same ones
    assert "resumed at row 10" in capsys.readouterr().err
    assert run(*argv) == 1
    one_error(capsys, "exists; pass --overwrite to replace it")
    assert run(*argv, "--overwrite") == 0


def test_the_advice_for_a_sparse_model_and_npy_works(tmp_path, mlm_dir, capsys):
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    export(SparseEncoder(modules=[Transformer(str(mlm_dir), transformer_task="fill-mask", max_seq_length=48),
                                  SpladePooling("max")], device="cpu"), tmp_path / "splade")
    src = jsonl(tmp_path / "c.jsonl", [{"text": t} for t in SCRIPTS])
    capsys.readouterr()  # the export's progress
    assert run(tmp_path / "splade", "--input", src, "--output", tmp_path / "s.npy") == 1
    one_error(capsys, "use an --output ending in .parquet (or --format parquet)")
    assert run(tmp_path / "splade", "--input", src, "--output", tmp_path / "s.parquet") == 0
    assert run(tmp_path / "splade", "--input", src, "--output", tmp_path / "s.npy", "--format", "parquet") == 0
    assert pq.read_table(tmp_path / "s.npy").num_rows == len(SCRIPTS)


def test_an_unreadable_shard_is_named_and_overwrite_starts_over(bi, tmp_path, capsys, monkeypatch):
    src = jsonl(tmp_path / "c.jsonl", [{"text": t} for t in corpus(30)])
    out = tmp_path / "o.parquet"
    argv = [bi, "--input", src, "--output", out, "--shard-rows", 10]
    fail_savez(monkeypatch, at=2)
    assert run(*argv) == 1
    monkeypatch.undo()
    (tmp_path / "o.parquet.parts" / "shard-000000.npz").write_bytes(b"not a zip file")
    capsys.readouterr()
    assert run(*argv) == 1
    one_error(capsys, "shard-000000.npz", "cannot be read", "pass --overwrite to start over")
    assert run(*argv, "--overwrite") == 0


def test_an_id_column_for_a_txt_input_is_refused_with_advice_that_works(bi, tmp_path, capsys):
    """A .txt input has no id column: rather than every row a bad row (no id), one line says to leave it out."""
    src = tmp_path / "c.txt"
    src.write_text("\n".join(SCRIPTS) + "\n", encoding="utf-8")
    out = tmp_path / "o.parquet"
    assert run(bi, "--input", src, "--id-column", "id", "--output", out, "--on-bad-row", "skip") == 1
    one_error(capsys, "ids are the line numbers", "leave out --id-column")
    assert run(bi, "--input", src, "--output", out, "--on-bad-row", "skip") == 0
    assert read(out)[0] == list(range(len(SCRIPTS)))


def test_a_partial_run_of_another_version_says_to_start_over(bi, tmp_path, capsys):
    src = jsonl(tmp_path / "c.jsonl", [{"text": t} for t in SCRIPTS])
    parts = tmp_path / "o.parquet.parts"
    parts.mkdir()
    (parts / "state.json").write_text(json.dumps({"version": 1, "input": {}, "settings": {}}))
    assert run(bi, "--input", src, "--output", tmp_path / "o.parquet") == 1
    one_error(capsys, "partial run of another st-embed version", "pass --overwrite to start over")
    assert run(bi, "--input", src, "--output", tmp_path / "o.parquet", "--overwrite") == 0


def test_a_csv_field_past_the_csv_module_limit_is_one_line(bi, tmp_path, capsys):
    src = tmp_path / "c.csv"
    src.write_text("id,text\na,short\nb," + "x" * 200_000 + "\n", encoding="utf-8")
    assert run(bi, "--input", src, "--id-column", "id", "--output", tmp_path / "o.parquet") == 1
    one_error(capsys, "is not a csv file this reader can parse (line 3", "field larger than field limit")
    assert leftovers(tmp_path) == [] and not (tmp_path / "o.parquet.parts").exists()  # no shard: nothing kept
