"""The files of the sentence-transformers peers, made the way a user would make them, in a child process (it
imports torch and optimum, which the parent never does): `python -m bench.peers SOURCE TASK OUT --isa ISA [--onnx]
[--openvino]`.

- OUT/onnx: `Cls(source, backend="onnx")` + `save()` (sentence-transformers' own ONNX export through optimum,
  or the source's own onnx/model.onnx when it ships one), then
  `export_dynamic_quantized_onnx_model(model, ISA, OUT/onnx)` adds onnx/model_qint8_<ISA>.onnx.
- OUT/openvino: `Cls(source, backend="openvino")` + `save()` (needs optimum-intel).

Prints one JSON line: {"onnx": {"fp32": file, "int8": file} | {"error": ...}, "openvino": {...}}.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Any

from st_runtime.kinds import TASK_CLASSES


def _model_class(task: str) -> Any:
    """The sentence-transformers class of `task` (st_runtime's classes carry the same names)."""
    import sentence_transformers

    return getattr(sentence_transformers, TASK_CLASSES[task])


def export_onnx(source: str, task: str, out: Path, isa: str) -> dict[str, str]:
    """sentence-transformers' ONNX file and its dynamic int8 file for `isa`; returns their names under `out`."""
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model

    model = _model_class(task)(source, backend="onnx", device="cpu", model_kwargs={"provider": "CPUExecutionProvider"})
    model.save(str(out))
    files = {"fp32": "onnx/model.onnx"}
    if not (out / files["fp32"]).is_file():
        raise FileNotFoundError(f"sentence-transformers saved no {files['fp32']} in {out}")
    export_dynamic_quantized_onnx_model(model, isa, str(out))
    int8 = sorted(p.relative_to(out).as_posix() for p in (out / "onnx").glob(f"model_*{isa}*.onnx"))
    if not int8:
        raise FileNotFoundError(f"export_dynamic_quantized_onnx_model wrote no onnx/model_*{isa}.onnx in {out}")
    files["int8"] = int8[0]
    return files


def export_openvino(source: str, task: str, out: Path) -> dict[str, str]:
    """sentence-transformers' OpenVINO IR (through optimum-intel); returns its file name under `out`."""
    model = _model_class(task)(source, backend="openvino", device="cpu")
    model.save(str(out))
    found = sorted(p.relative_to(out).as_posix() for p in out.rglob("openvino_model.xml"))
    if not found:
        raise FileNotFoundError(f"sentence-transformers saved no openvino_model.xml in {out}")
    return {"fp32": found[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("task", choices=sorted(TASK_CLASSES))
    parser.add_argument("out", type=Path)
    parser.add_argument("--isa", required=True)
    parser.add_argument("--onnx", action="store_true")
    parser.add_argument("--openvino", action="store_true")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {}
    jobs = [("onnx", lambda: export_onnx(args.source, args.task, args.out / "onnx", args.isa))] if args.onnx else []
    if args.openvino:
        jobs.append(("openvino", lambda: export_openvino(args.source, args.task, args.out / "openvino")))
    for name, job in jobs:
        try:
            result[name] = job()
        except Exception as exc:  # reported per peer: one failing export must not hide the other rows
            traceback.print_exc(file=sys.stderr)
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
