"""The one error boundary of every console script (st_runtime.errors.run_cli): an expected failure is one
`PROG: error: ...` line on stderr and exit 1, with the traceback only under ST_RUNTIME_DEBUG=1; Ctrl-C is exit 130; a
bug keeps its traceback. Every error class of the project derives from StRuntimeError."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
from pathlib import Path

import pytest

import bench.runner
import exporters.errors
import models_zoo.errors
import quantizers.errors
import st_runtime.errors
import st_runtime.pool
from st_runtime.errors import EXIT_INTERRUPTED, InvalidInputError, StRuntimeError, run_cli

ROOT = Path(__file__).resolve().parent.parent


# --- the boundary itself -------------------------------------------------------------------------------------------

def _raise(exc: BaseException):
    def body(*args, **kwargs):
        raise exc
    return body


def test_an_expected_error_is_one_line_and_exit_1(capsys, monkeypatch):
    monkeypatch.delenv("ST_RUNTIME_DEBUG", raising=False)
    for exc in (InvalidInputError("bad\n  input"), FileNotFoundError("no such file"), ImportError("pip install x")):
        assert run_cli("st-test", _raise(exc)) == 1
        err = capsys.readouterr().err
        assert err.splitlines() == [f"st-test: error: {' '.join(str(exc).split())}"]
    assert run_cli("st-test", _raise(StRuntimeError())) == 1  # no message: its type name
    assert capsys.readouterr().err == "st-test: error: StRuntimeError\n"


def test_the_body_sets_the_exit_code_and_a_bug_keeps_its_traceback(monkeypatch):
    monkeypatch.delenv("ST_RUNTIME_DEBUG", raising=False)
    assert run_cli("st-test", lambda: 3) == 3
    assert run_cli("st-test", lambda: None) == 0
    with pytest.raises(ZeroDivisionError):
        run_cli("st-test", lambda: 1 / 0)
    with pytest.raises(SystemExit):  # argparse's exit 2, uvicorn's own exit: not the boundary's business
        run_cli("st-test", _raise(SystemExit(2)))


def test_ctrl_c_is_exit_130(capsys, monkeypatch):
    monkeypatch.delenv("ST_RUNTIME_DEBUG", raising=False)
    assert run_cli("st-test", _raise(KeyboardInterrupt())) == EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err == "st-test: interrupted\n"


def test_debug_prints_the_traceback_above_the_same_line(capsys, monkeypatch):
    monkeypatch.setenv("ST_RUNTIME_DEBUG", "1")
    assert run_cli("st-test", _raise(InvalidInputError("bad input"))) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "InvalidInputError: bad input" in err
    assert err.splitlines()[-1] == "st-test: error: bad input"


def test_every_project_error_derives_from_st_runtime_error():
    modules = [st_runtime.errors, st_runtime.pool, exporters.errors, quantizers.errors, models_zoo.errors, bench.runner,
               importlib.import_module("st_runtime.embed.io")]
    with contextlib.suppress(ImportError):  # no serve extra
        modules += [importlib.import_module("st_runtime.serve.batcher"), importlib.import_module("st_runtime.serve.app")]
    errors = [cls for module in modules for _, cls in inspect.getmembers(module, inspect.isclass)
              if issubclass(cls, BaseException) and cls.__module__ == module.__name__]
    assert len(errors) >= 25
    assert [cls.__name__ for cls in errors if not issubclass(cls, StRuntimeError)] == []
    assert issubclass(bench.runner.BenchError, RuntimeError)  # the builtins callers catch stay


# --- every console script ------------------------------------------------------------------------------------------

def _serve_main():
    pytest.importorskip("uvicorn")
    return importlib.import_module("st_runtime.serve.cli").main


CLIS = {  # console script -> (its main, argv of an expected failure, words of the message)
    "st-export": (lambda: importlib.import_module("exporters.cli").main,
                  lambda tmp: [str(tmp / "nowhere"), "-o", str(tmp / "out"), "-q"], ["nowhere"]),
    "st-bench": (lambda: importlib.import_module("bench.cli").main,
                 lambda tmp: [str(tmp / "nowhere"), "--no-peers", "-q"], ["nowhere", "is not a folder"]),
    "st-zoo": (lambda: importlib.import_module("models_zoo.cli").main,
               lambda tmp: ["resolve", "no-such-recipe"], ["no-such-recipe"]),
    "st-serve": (_serve_main, lambda tmp: [str(tmp)], ["no st_runtime.json"]),
    "st-embed": (lambda: importlib.import_module("st_runtime.embed.cli").main,
                 lambda tmp: [str(tmp / "nowhere"), "--input", str(tmp / "in.txt"), "--output", str(tmp / "o.npy")],
                 ["nowhere"]),
}


def test_every_console_script_is_covered():
    text = (ROOT / "pyproject.toml").read_text()
    scripts = text.split("[project.scripts]")[1].split("\n[")[0]
    assert sorted(line.split("=")[0].strip() for line in scripts.strip().splitlines()) == sorted(CLIS)


@pytest.mark.parametrize("prog", sorted(CLIS))
def test_an_expected_failure_of_each_cli_is_one_error_line(prog, tmp_path, capsys, monkeypatch):
    get_main, argv, words = CLIS[prog]
    main = get_main()
    monkeypatch.delenv("ST_RUNTIME_DEBUG", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(argv(tmp_path)) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    assert "Traceback" not in err and all(w in lines[0] for w in words), lines[0]

    monkeypatch.setenv("ST_RUNTIME_DEBUG", "1")
    assert main(argv(tmp_path)) == 1  # the same exit code, the traceback above the same line
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err and err.strip().splitlines()[-1] == lines[0]


@pytest.mark.parametrize("prog", sorted(CLIS))
def test_ctrl_c_in_each_cli_is_exit_130(prog, tmp_path, capsys, monkeypatch):
    get_main, argv, _ = CLIS[prog]
    main = get_main()
    monkeypatch.delenv("ST_RUNTIME_DEBUG", raising=False)
    monkeypatch.setattr(sys.modules[main.__module__], "run", _raise(KeyboardInterrupt()))
    assert main(argv(tmp_path)) == 130
    assert capsys.readouterr().err == f"{prog}: interrupted\n"


# --- st-export --calibration with no text ------------------------------------------------------------------------

def test_an_empty_calibration_file_is_one_error_line_and_writes_nothing(tiny_bi_encoder, tmp_path, capsys,
                                                                        monkeypatch):
    from exporters.cli import main as st_export

    monkeypatch.delenv("ST_RUNTIME_DEBUG", raising=False)
    tiny_bi_encoder().save(str(tmp_path / "src"))
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n  \n\t\n")
    for name in ("empty.txt", "blank.txt"):
        argv = [str(tmp_path / "src"), "-o", str(tmp_path / "out"), "--quantize", "int8-static", "--calibration",
                str(tmp_path / name)]
        assert st_export(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert err.splitlines() == [f"st-export: error: --calibration {str(tmp_path / name)!r} holds no text: give one "
                                    "calibration text per line, or omit --calibration to use the built-in calibration "
                                    "texts."]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.txt", "empty.txt", "src"]  # no out, no staging
    monkeypatch.setenv("ST_RUNTIME_DEBUG", "1")
    assert st_export(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err and "InvalidArgumentError" in err
    assert err.strip().splitlines()[-1].startswith("st-export: error: --calibration ")
