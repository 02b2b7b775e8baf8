"""`st-export MODEL -o OUT_DIR [--optimize O3] [--quantize int8] ...`: export, then add variants.

Exit codes: 0 exported, verified (and every variant above --min-accuracy); 1 the export failed (message on
stderr, nothing written); 2 bad command-line usage. Set ST_RUNTIME_DEBUG=1 for tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

EXAMPLES = """examples:
  st-export ./all-MiniLM-L6-v2 -o exported/all-MiniLM-L6-v2
  st-export ./all-MiniLM-L6-v2 -o out --quantize int8                      # + dynamic int8 for this CPU
  st-export ./all-MiniLM-L6-v2 -o out --optimize O3 --quantize int8 int8-static --calibration texts.txt
  st-export ./all-MiniLM-L6-v2 -o out --backend onnx openvino --quantize int8-static --bf16 --min-accuracy 0.99
  st-export ./Qwen3-Embedding-0.6B -o out --backend onnx openvino --quantize int8-weights int4-weights
  st-export all-MiniLM-L6-v2 -o out --quantize int8       (a models_zoo recipe: its local weights, offline)
  st-export sentence-transformers/all-MiniLM-L6-v2 -o out   (Hub id: needs network access unless a recipe has it)
"""


def build_parser() -> argparse.ArgumentParser:
    from quantizers.variants import quantize_flag_values

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
    variants.add_argument("--quantize", nargs="+", choices=quantize_flag_values(), default=[],
                          help="int8: dynamic (onnx) / int8 weights (openvino); int8-static: calibrated QDQ (onnx) / NNCF; "
                          "int8-weights, int4-weights: weight-only, activations in float (onnx MatMulNBits / openvino "
                          "NNCF weight compression), for decoder-sized models")
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
    """The quantizer configurations the flags ask for: the variants they name in quantizers/variants.py's table (the
    one vocabulary of st-export and the zoo), in its order (the fp32 IR before the variants that reuse it)."""
    from quantizers.variants import VARIANTS, VariantOptions, expand_flags

    calibration = read_calibration(args.calibration)
    backends = set(args.backend) | ({"openvino"} if args.bf16 else set())
    flags = {args.optimize, *args.quantize, "fp16" if args.fp16 else None, "bf16" if args.bf16 else None} - {None}
    options = VariantOptions(isa=args.isa, method=args.calibration_method, calibration_texts=calibration)
    return [VARIANTS[key].config(options) for key in expand_flags(backends, flags)]


def main(argv: list[str] | None = None) -> int:
    """Run st-export; returns the exit code (expected failures: one `st-export: error:` line, exit 1)."""
    from st_runtime.errors import run_cli

    args = build_parser().parse_args(argv)
    return run_cli("st-export", lambda: run(args))


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("exporters", "quantizers", "models_zoo"):
        logging.getLogger(name).setLevel(logging.WARNING if args.quiet else logging.INFO)
    logging.getLogger("nncf").setLevel(logging.WARNING)  # its per-layer statistics tables
    if args.quiet:
        quiet_libraries()
    from exporters import export

    configs = variant_configs(args)
    post_process = None
    if configs:
        from quantizers import quantize

        def post_process(folder: Path):
            return quantize(folder, configs, min_accuracy=args.min_accuracy)

    model = args.model
    if not model.strip():  # Path("") is the current folder
        from exporters.errors import InvalidArgumentError

        raise InvalidArgumentError(f"MODEL is empty ({model!r}); give a model folder, a models_zoo recipe name "
                                   "(st-zoo list) or a Hub id.")
    if not Path(model).exists():  # a models_zoo recipe name (st-zoo list) resolves offline to its local weights
        from models_zoo import resolve_for_export

        resolved = resolve_for_export(model)
        model = model if resolved is None else resolved
    options = {k: v for k, v in {"opset": args.opset, "atol": args.atol}.items() if v is not None}
    manifest = export(model, args.output, overwrite=args.overwrite,
                      external_data=True if args.external_data else None, post_process=post_process, **options)
    if not args.quiet:
        print(summary(args.model, args.output, manifest))
    return 0


def read_calibration(path: Path | None) -> tuple[str, ...] | None:
    """--calibration's texts (None without the flag: the quantizers use their built-in set).

    Raises:
        InvalidArgumentError: the file is missing, not UTF-8 text, or has no text line.
    """
    from exporters.errors import InvalidArgumentError
    from quantizers.texts import read_texts

    if path is None:
        return None
    flag = f"--calibration {str(path)!r}"
    try:
        return read_texts(path)
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"{flag}: it is not UTF-8 text ({exc.reason} at byte {exc.start}).") from exc
    except OSError as exc:  # missing, a folder, unreadable
        raise InvalidArgumentError(f"{flag}: {exc}") from exc
    except ValueError as exc:  # empty, or only blank lines
        raise InvalidArgumentError(f"{flag} holds no text: give one calibration text per line, or omit --calibration "
                                   "to use the built-in calibration texts.") from exc


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


def summary(model: str, output: str, manifest) -> str:
    """What was written, one line per variant with its accuracy."""
    parity = manifest.parity
    lines = [f"Exported {model} -> {output} ({manifest.task}, inputs {', '.join(manifest.inputs)}); max |diff| to "
             f"sentence-transformers {parity['max_abs_diff']:.2e} on {parity['texts']} texts{source_dtype(parity)}."]
    for variant in manifest.variants:
        acc = variant.accuracy or {}
        detail = ", ".join(f"{k} {v:.5f}" for k, v in acc.items() if k not in ("score", "texts")) or "reference"
        lines.append(f"  {variant.name:<28} {variant.file:<48} {variant.precision:<12} {detail}")
    return "\n".join(lines)


def source_dtype(parity: dict) -> str:
    """"; source in bfloat16, exported in fp32 (max |diff| to it in bfloat16 4.02e-03)" for a bf16/fp16 source."""
    dtype = parity.get("source_dtype")
    if dtype is None:
        return ""
    diff = parity.get("source_dtype_max_abs_diff")
    measured = f"max |diff| to it in {dtype} {diff:.2e}" if diff is not None else parity.get("source_dtype_note", "")
    return f"; source in {dtype}, exported in fp32 ({measured})"


if __name__ == "__main__":
    sys.exit(main())
