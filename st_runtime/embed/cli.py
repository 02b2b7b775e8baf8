"""st-embed: a corpus file in, an embeddings file out.

Examples:
  st-embed exported/minilm --input corpus.jsonl --id-column id --output embeddings.parquet
  st-embed exported/minilm --input corpus.txt --output emb.npy --variant qint8_avx2 --processes 4
  st-embed exported/splade --input docs.parquet --column body --output sparse.parquet --prompt-name document
  st-embed exported/minilm --ray auto --input s3://bucket/corpus/ --id-column id --output s3://bucket/emb/
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from st_runtime.embed.badrows import POLICIES
from st_runtime.pool import DEFAULT_BATCH_TOKENS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="st-embed", description=__doc__.split("\n")[0],
                                     epilog="\n".join(__doc__.split("\n")[2:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a folder written by st-export (bi-encoder or sparse encoder)")
    parser.add_argument("--input", required=True,
                        help="corpus: .txt (one text a line; only \\n and \\r\\n end a line), .jsonl, .csv or .parquet")
    parser.add_argument("--output", required=True, help="embeddings file (.parquet or .npy)")
    parser.add_argument("--column", default="text", help="text column of jsonl/csv/parquet input (default: text)")
    parser.add_argument("--id-column", help="id column copied to the output (default: the row number)")
    parser.add_argument("--format", choices=("parquet", "npy"), help="output format (default: from --output's suffix)")
    parser.add_argument("--variant", help="variant of the folder to run (e.g. qint8_avx2; default fp32)")
    parser.add_argument("--providers", help="onnxruntime providers, comma-separated (default CPU)")
    parser.add_argument("--processes", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--threads-per-process", type=int,
                        help="threads of each process's session (default: cores // processes)")
    parser.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS,
                        help=f"padded tokens per batch (default {DEFAULT_BATCH_TOKENS})")
    parser.add_argument("--prompt-name", help="stored prompt to prepend (query, document, ...)")
    parser.add_argument("--on-bad-row", choices=POLICIES, default="error",
                        help="a row that cannot be embedded (text not a string, empty or not UTF-8; id missing or not "
                             "an int64 or string; a jsonl line that is not a JSON object): stop (default), leave it "
                             "out, or keep it with an empty (null) embedding (a row without a usable id is left out)")
    parser.add_argument("--shard-rows", type=int, default=10_000, help="input rows per resumable shard (default 10000)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the output and any partial run (never the input: that is refused)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    ray = parser.add_argument_group("Ray Data (a cluster)")
    ray.add_argument("--ray", metavar="ADDRESS", help="run on a Ray cluster ('auto', ray://host:10001, or 'local')")
    ray.add_argument("--concurrency", type=int, default=1, help="model actors with --ray (default 1)")
    ray.add_argument("--num-gpus", type=float, default=0, help="GPUs per actor with --ray (use --providers cuda)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run st-embed; returns the exit code (expected failures: one `st-embed: error:` line, exit 1)."""
    from st_runtime.errors import EXPECTED_ERRORS, run_cli

    args = build_parser().parse_args(argv)
    # ValueError too: the readers (pyarrow, csv, json) report a malformed input file as one (pyarrow's ArrowInvalid).
    return run_cli("st-embed", lambda: run(args), expected=(*EXPECTED_ERRORS, ValueError))


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    providers = tuple(p.strip() for p in args.providers.split(",")) if args.providers else None
    if args.ray:
        from st_runtime.integrations.ray import embed_with_ray

        summary = embed_with_ray(args.folder, args.input, args.output, address=args.ray, column=args.column,
                                 id_column=args.id_column, variant=args.variant, providers=providers,
                                 prompt_name=args.prompt_name, on_bad_row=args.on_bad_row,
                                 batch_tokens=args.batch_tokens, concurrency=args.concurrency,
                                 num_cpus=args.threads_per_process or 1, num_gpus=args.num_gpus)
    else:
        from st_runtime.embed import EmbedConfig, embed_file

        summary = embed_file(EmbedConfig(
            folder=args.folder, input=Path(args.input), output=Path(args.output), column=args.column,
            id_column=args.id_column, format=args.format, variant=args.variant, providers=providers,
            processes=args.processes, threads_per_process=args.threads_per_process,
            batch_tokens=args.batch_tokens, prompt_name=args.prompt_name, on_bad_row=args.on_bad_row,
            shard_rows=args.shard_rows, overwrite=args.overwrite, progress=not args.no_progress))
    print(summary.line(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
