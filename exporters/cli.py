"""`st-export MODEL -o OUT_DIR [--optimize O3] [--quantize int8] ...`: export, then add variants.

Exit codes: 0 exported, verified (and every variant above --min-accuracy); 1 the export failed (message on
stderr, nothing written); 2 bad command-line usage. Set ST_RUNTIME_DEBUG=1 for tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

EXAMPLES = """examples:
  st-export ./all-MiniLM-L6-v2 -o exported/all-MiniLM-L6-v2
  st-export ./all-MiniLM-L6-v2 -o out --quantize int8                      # + dynamic int8 for this CPU
  st-export ./all-MiniLM-L6-v2 -o out --optimize O3 --quantize int8 int8-static --calibration texts.txt
  st-export ./all-MiniLM-L6-v2 -o out --backend onnx openvino --quantize int8-static --bf16 --min-accuracy 0.99
  st-export all-MiniLM-L6-v2 -o out --quantize int8       (a models_zoo recipe: its local weights, offline)
  st-export sentence-transformers/all-MiniLM-L6-v2 -o out   (Hub id: needs network access unless a recipe has it)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="st-export",
        description="Export a sentence-transformers model, its whole pipeline in one ONNX graph, into a folder "
        "that st_runtime runs without torch; optionally add optimized and quantized variants.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="local sentence-transformers model folder, a models_zoo recipe name (st-zoo list), "
                        "or a Hub id when online")
    parser.add_argument("-o", "--output", required=True, help="folder to create")
    parser.add_argument("--overwrite", action="store_true", help="replace the output folder if it was written by st-export")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    parser.add_argument("--atol", type=float, default=None,
                        help="largest difference to sentence-transformers allowed on the probe texts (default 1e-4)")
    parser.add_argument("--external-data", action="store_true",
                        help="store weights in onnx/model.onnx_data (automatic above 2 GiB)")
    variants = parser.add_argument_group("variants (each measured against fp32 on held-out texts)")
    variants.add_argument("--backend", nargs="+", choices=["onnx", "openvino"], default=["onnx"],
                          help="where the variants go: onnx/ (onnxruntime) and/or openvino/ (IR; adds the fp32 IR)")
    variants.add_argument("--optimize", choices=["O1", "O2", "O3", "O4"], help="onnxruntime optimization level")
    variants.add_argument("--quantize", nargs="+", choices=["int8", "int8-static"], default=[],
                          help="int8: dynamic (onnx) / int8 weights (openvino); int8-static: calibrated QDQ (onnx) / NNCF")
    variants.add_argument("--isa", choices=["arm64", "avx2", "avx512", "avx512_vnni"],
                          help="int8 preset (default: detected from this CPU)")
    variants.add_argument("--calibration", type=Path, help="calibration texts, one per line (default: the shipped set)")
    variants.add_argument("--calibration-method", choices=["minmax", "entropy", "percentile"], default="minmax")
    variants.add_argument("--fp16", action="store_true", help="fp16 variant (for GPUs; IR with fp16 weights for openvino)")
    variants.add_argument("--bf16", action="store_true",
                          help="OpenVINO bf16 inference variant (CPUs with AVX-512 BF16 / AMX); implies --backend openvino")
    variants.add_argument("--min-accuracy", type=float,
                          help="fail (exit 1, write nothing) when a variant's accuracy score is below this")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    return parser


def variant_configs(args: argparse.Namespace) -> list:
    """The quantizer configurations the flags ask for, fp32 IR before the variants that reuse it."""
    from exporters.errors import InvalidArgumentError
    from quantizers import (
        DynamicInt8,
        Fp16,
        OpenVino,
        OpenVinoInt8Weights,
        OpenVinoStaticInt8,
        Optimize,
        StaticInt8,
    )
    from quantizers.texts import read_texts

    try:
        calibration = read_texts(args.calibration) if args.calibration else None
    except (OSError, ValueError) as exc:  # missing, empty, not UTF-8 (UnicodeDecodeError is a ValueError)
        reason = f"it is not UTF-8 text ({exc.reason} at byte {exc.start})" if isinstance(exc, UnicodeDecodeError) else exc
        raise InvalidArgumentError(f"--calibration {str(args.calibration)!r}: {reason}") from exc
    backends = set(args.backend) | ({"openvino"} if args.bf16 else set())
    configs: list = []
    if "onnx" in backends:
        if args.optimize:
            configs.append(Optimize(args.optimize))
        if "int8" in args.quantize:
            configs.append(DynamicInt8(isa=args.isa))
        if "int8-static" in args.quantize:
            configs.append(StaticInt8(calibration_texts=calibration, method=args.calibration_method, isa=args.isa))
        if args.fp16:
            configs.append(Fp16())
    if "openvino" in backends:
        configs.append(OpenVino("fp32"))
        if args.bf16:
            configs.append(OpenVino("bf16"))
        if args.fp16:
            configs.append(OpenVino("fp16"))
        if "int8" in args.quantize:
            configs.append(OpenVinoInt8Weights())
        if "int8-static" in args.quantize:
            configs.append(OpenVinoStaticInt8(calibration_texts=calibration))
    return configs


def main(argv: list[str] | None = None) -> int:
    """Run st-export; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("exporters", "quantizers", "models_zoo"):
        logging.getLogger(name).setLevel(logging.WARNING if args.quiet else logging.INFO)
    logging.getLogger("nncf").setLevel(logging.WARNING)  # its per-layer statistics tables
    if args.quiet:
        quiet_libraries()
    debug = os.environ.get("ST_RUNTIME_DEBUG") == "1"
    try:
        from exporters import export
        from st_runtime.errors import StRuntimeError

        configs = variant_configs(args)
        post_process = None
        if configs:
            from quantizers import quantize

            def post_process(folder: Path):
                return quantize(folder, configs, min_accuracy=args.min_accuracy)

        model = args.model
        if not Path(model).exists():  # a models_zoo recipe name (st-zoo list) resolves offline to its local weights
            from models_zoo import resolve_for_export

            resolved = resolve_for_export(model)
            model = model if resolved is None else resolved
        options = {k: v for k, v in {"opset": args.opset, "atol": args.atol}.items() if v is not None}
        manifest = export(model, args.output, overwrite=args.overwrite,
                          external_data=True if args.external_data else None, post_process=post_process, **options)
    except (ImportError, OSError, StRuntimeError) as exc:  # every expected failure: one line, exit 1
        if debug:
            raise
        print(f"st-export: error: {one_line(exc)}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(summary(args.model, args.output, manifest))
    return 0


def quiet_libraries() -> None:
    """-q: no progress bars or info lines from transformers / huggingface_hub either (only errors are printed)."""
    logging.getLogger("sentence_transformers").setLevel(logging.ERROR)
    for module, calls in (("huggingface_hub.utils", ("disable_progress_bars",)),
                          ("transformers.utils.logging", ("disable_progress_bar", "set_verbosity_error"))):
        try:
            library = importlib.import_module(module)
        except ImportError:
            continue
        for name in calls:
            getattr(library, name, lambda: None)()


def one_line(exc: BaseException) -> str:
    """The error's message on one line (some library messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def summary(model: str, output: str, manifest) -> str:
    """What was written, one line per variant with its accuracy."""
    parity = manifest.parity
    lines = [f"Exported {model} -> {output} ({manifest.task}, inputs {', '.join(manifest.inputs)}); max |diff| to "
             f"sentence-transformers {parity['max_abs_diff']:.2e} on {parity['texts']} texts."]
    for variant in manifest.variants:
        acc = variant.accuracy or {}
        detail = ", ".join(f"{k} {v:.5f}" for k, v in acc.items() if k not in ("score", "texts")) or "reference"
        lines.append(f"  {variant.name:<28} {variant.file:<48} {variant.precision:<12} {detail}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
