"""`st-export MODEL -o OUT_DIR`: the command-line front of `exporters.export`.

Exit codes: 0 exported and verified; 1 the export failed (message on stderr, nothing written);
2 bad command-line usage. Set ST_RUNTIME_DEBUG=1 for tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

EXAMPLES = """examples:
  st-export ./all-MiniLM-L6-v2 -o exported/all-MiniLM-L6-v2
  st-export ./my-model -o exported/my-model --overwrite
  st-export sentence-transformers/all-MiniLM-L6-v2 -o out   (Hub id: needs network access)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="st-export",
        description="Export a sentence-transformers model, its whole pipeline in one ONNX graph, into a folder "
        "that st_runtime runs without torch.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="local sentence-transformers model folder (or a Hub id when online)")
    parser.add_argument("-o", "--output", required=True, help="folder to create")
    parser.add_argument("--overwrite", action="store_true", help="replace the output folder if it was written by st-export")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    parser.add_argument("--atol", type=float, default=None,
                        help="largest difference to sentence-transformers allowed on the probe texts (default 1e-4)")
    parser.add_argument("--external-data", action="store_true",
                        help="store weights in onnx/model.onnx_data (automatic above 2 GiB)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run st-export; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("exporters").setLevel(logging.WARNING if args.quiet else logging.INFO)
    debug = os.environ.get("ST_RUNTIME_DEBUG") == "1"
    try:
        from exporters import export
        from st_runtime.errors import StRuntimeError

        options = {k: v for k, v in {"opset": args.opset, "atol": args.atol}.items() if v is not None}
        manifest = export(args.model, args.output, overwrite=args.overwrite,
                          external_data=True if args.external_data else None, **options)
    except ImportError as exc:
        print(f"st-export: {exc}", file=sys.stderr)
        return 1
    except StRuntimeError as exc:
        if debug:
            raise
        print(f"st-export: error: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        parity = manifest.parity
        print(f"Exported {args.model} -> {args.output} ({manifest.task}, dim {manifest.embedding_dimension}, "
              f"inputs {', '.join(manifest.inputs)}); max |diff| to sentence-transformers "
              f"{parity['max_abs_diff']:.2e} on {parity['texts']} texts.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
