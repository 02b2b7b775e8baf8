"""`st-bench FOLDER [--source ST_MODEL] ...`: benchmark an exported folder's variants against sentence-transformers.

Exit codes: 0 done (and no regression against --baseline); 1 the run failed (message on stderr; ST_RUNTIME_DEBUG=1
shows the traceback); 2 bad command-line usage; 3 a regression against --baseline (named on stderr).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

EXIT_REGRESSION = 3

EXAMPLES = """examples:
  st-bench exported/all-MiniLM-L6-v2 --source path/to/all-MiniLM-L6-v2
  st-bench exported/all-MiniLM-L6-v2 --source ST_MODEL --threads 2 --json now.json --markdown now.md --plot now.png
  st-bench exported/all-MiniLM-L6-v2 --variants fp32 qint8_avx512_vnni --peers torch --max-texts 500 --repeats 5
  st-bench exported/all-MiniLM-L6-v2 --source ST_MODEL --baseline bench/baseline.json --tolerance 10%   # CI gate
"""


def build_parser() -> argparse.ArgumentParser:
    from bench.rows import PEERS

    parser = argparse.ArgumentParser(
        prog="st-bench",
        description="Run every variant of an exported folder through st_runtime, and the peers a user would "
        "otherwise pick (sentence-transformers; for bi-encoders also a bare onnxruntime loop and fastembed on the "
        "exported fp32 file), on the same texts and threads, each row in a fresh process; print "
        "throughput, latency, cold start, memory and accuracy, as ratios to sentence-transformers torch fp32.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", type=Path, help="folder written by st-export")
    parser.add_argument("--source", type=Path,
                        help="the sentence-transformers model folder it was exported from (enables the "
                        "sentence-transformers rows; "
                        "torch fp32 becomes the 1.0 reference)")
    parser.add_argument("--variants", nargs="+", metavar="NAME", help="variants to run (default: all in the manifest)")
    peers = parser.add_mutually_exclusive_group()
    peers.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS),
                       help="peer rows to run (default: all): the sentence-transformers ones need --source; floor "
                       "(bare onnxruntime loop) and fastembed run a bi-encoder's exported fp32 file")
    peers.add_argument("--no-peers", action="store_true", help="run st_runtime rows only")
    parser.add_argument("--threads", type=int, help="threads for every engine (default: all cores of this process)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per row; the median is reported (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes before them (default 1)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every row this many times, rows interleaved, each round in a fresh process; the "
                             "repeats of all rounds make the median (default 1; raise it on a host whose speed drifts)")
    work = parser.add_argument_group("texts")
    work.add_argument("--corpus", type=Path, help="one text per line (default: gensim's Lee background corpus)")
    work.add_argument("--max-texts", type=int, help="use only the first N corpus texts (default: all; 2000 of the Lee corpus)")
    work.add_argument("--latency-n", type=int, default=100, help="batch-1 calls per repeat (default 100)")
    work.add_argument("--rerank-queries", type=int, default=20, help="rerankers: queries, each x 100 documents (default 20)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", type=Path, help="write the full result document")
    out.add_argument("--markdown", type=Path, help="write the table as Markdown")
    out.add_argument("--plot", type=Path, help="write speed-up vs accuracy as a PNG (matplotlib)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    out.add_argument("-q", "--quiet", action="store_true", help="no table on stdout (files and the gate only)")
    gate = parser.add_argument_group("regression gate")
    gate.add_argument("--baseline", type=Path, help="an earlier --json result; exit 3 when a row regressed")
    gate.add_argument("--tolerance", default="10%", help="how far a ratio may fall below the baseline's (default 10%%)")
    gate.add_argument("--accuracy-tolerance", type=float, default=0.002,
                      help="how far an accuracy figure may fall below the baseline's, absolute (default 0.002)")
    gate.add_argument("--fail-on-missing", action="store_true", help="also fail when a baseline row did not run")
    advanced = parser.add_argument_group("advanced")
    advanced.add_argument("--row-timeout", type=float, default=1800.0, help="seconds per row before it is killed")
    advanced.add_argument("--workdir", type=Path, help="keep the workers' specs, outputs and logs here")
    return parser


def _load_baseline(path: Path) -> dict[str, Any]:
    from bench.runner import SCHEMA, BenchError

    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"--baseline {str(path)!r} does not exist; write one with --json first.") from None
    except json.JSONDecodeError as exc:
        raise BenchError(f"--baseline {str(path)!r} is not JSON ({exc}).") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise BenchError(f"--baseline {str(path)!r} is not an st-bench result ({SCHEMA}); write one with --json.")
    return document


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from bench import regression, report
    from bench.runner import BenchConfig, BenchError, run_bench

    try:
        tolerance = regression.parse_tolerance(args.tolerance)
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    baseline = _load_baseline(args.baseline) if args.baseline else None
    config = BenchConfig(folder=args.folder, source=args.source, variants=tuple(args.variants) if args.variants else None,
                         peers=() if args.no_peers else tuple(args.peers), threads=args.threads,
                         batch_size=args.batch_size, repeats=args.repeats, warmup=args.warmup, rounds=args.rounds,
                         corpus=args.corpus,
                         max_texts=args.max_texts, latency_n=args.latency_n, rerank_queries=args.rerank_queries,
                         row_timeout=args.row_timeout, workdir=args.workdir,
                         progress=False if args.no_progress else None)
    document = run_bench(config)
    document["command"] = "st-bench " + shlex.join(argv)
    if not args.quiet:
        sys.stdout.write(report.terminal_table(document))
    for path, write in ((args.json, report.write_json), (args.markdown, report.write_markdown),
                        (args.plot, report.write_plot)):
        if path is not None:
            write(document, path)
            if not args.quiet:
                print(f"wrote {path}")
    if baseline is None:
        return 0
    comparison = regression.compare(document, baseline, tolerance=tolerance, accuracy_tolerance=args.accuracy_tolerance)
    sys.stderr.write(regression.format_comparison(comparison, tolerance=tolerance,
                                                  accuracy_tolerance=args.accuracy_tolerance))
    return EXIT_REGRESSION if comparison.failed(args.fail_on_missing) else 0


def main(argv: list[str] | None = None) -> int:
    """Run st-bench; returns the exit code (expected failures: one `st-bench: error:` line, exit 1)."""
    from st_runtime.errors import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    return run_cli("st-bench", lambda: run(args, argv))


if __name__ == "__main__":
    sys.exit(main())
