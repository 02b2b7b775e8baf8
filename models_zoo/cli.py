"""`st-zoo list | build NAME | results | resolve NAME`: the zoo's recipes, built offline and validated.

Exit codes: 0 done; 1 failed (no source, a corrupt source, a variant under its floor, an export error: message
on stderr, nothing written); 2 bad command-line usage. Set ST_RUNTIME_DEBUG=1 for tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from models_zoo.recipe import VARIANT_KEYS, Recipe, get_recipe, load_recipes
from models_zoo.results import default_results_file, markdown_table, read_results
from models_zoo.sources import describe, how_to_provide, probe
from st_runtime.errors import run_cli

EXAMPLES = """examples:
  st-zoo list -v                                   # recipes, and which of their sources this machine has
  st-zoo build all-MiniLM-L6-v2 -o exported/all-MiniLM-L6-v2
  st-zoo build all-MiniLM-L6-v2 --variants int8    # only some of the recipe's variants
  st-zoo results --markdown results.md             # the validated results, as a markdown table
  st-zoo resolve all-mpnet-base-v2                 # verify the source, print the folder it gives
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="st-zoo", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Named recipes that export pretrained sentence-transformers models offline (from a local folder, "
                    "the Hugging Face cache or pip packages that ship the weights), with validated variants.")
    parser.add_argument("--recipes", type=Path, help="folder of recipe JSON files (default: the shipped ones)")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="recipes: name, kind, dimension, sources found or not")
    listing.add_argument("-v", "--verbose", action="store_true", help="every source, with where to put the weights")

    build = commands.add_parser("build", help="export a recipe with its variants; check floors; time them")
    build.add_argument("name", help="recipe name (or its Hub id)")
    build.add_argument("-o", "--output", type=Path, help="folder to create (default exported/NAME)")
    build.add_argument("--variants", nargs="+", choices=VARIANT_KEYS, metavar="KEY",
                       help=f"only these of the recipe's variants ({', '.join(VARIANT_KEYS)})")
    build.add_argument("--overwrite", action="store_true", help="replace the output folder if st-export wrote it")
    build.add_argument("--results", type=Path, help=f"results file to append to (default {default_results_file()})")
    build.add_argument("--no-record", action="store_true", help="do not append to the results file")
    build.add_argument("--repeats", type=int, default=3, help="timed runs per variant, the best counts (default 3)")
    build.add_argument("--threads", type=int, help="threads per run for the timing (default: the engine's)")
    build.add_argument("-q", "--quiet", action="store_true", help="print only errors")

    results = commands.add_parser("results", help="the validated results as a markdown table")
    results.add_argument("--results", type=Path, help=f"results file (default {default_results_file()})")
    results.add_argument("--markdown", type=Path, metavar="FILE", help="also write the table to FILE")
    results.add_argument("--all", action="store_true", help="every build, not only the newest per variant and machine")

    resolve = commands.add_parser("resolve", help="find and verify a recipe's source; print the folder to export")
    resolve.add_argument("name")
    return parser


def list_recipes(recipes: dict[str, Recipe], verbose: bool = False) -> str:
    """One line per recipe (name, kind, architecture, dimension, the source that would be used); with
    `verbose`, one line per source and the variants with their floors."""
    lines = [f"{'NAME':<40} {'KIND':<20} {'ARCH':<12} {'DIM':>6}  SOURCE"]
    for recipe in recipes.values():
        probes = [probe(s) for s in recipe.sources]
        first = next((p for p in probes if p.found), None)
        if first is None:
            status = f"not found ({len(probes)} sources; st-zoo list -v says where to put the weights)"
        elif first.state == "broken":
            status = f"BROKEN {describe(first.source)}: {first.detail}"
        else:
            status = f"found: {describe(first.source)}"
        lines.append(f"{recipe.name:<40} {recipe.kind:<20} {recipe.architecture:<12} {recipe.dimension:>6}  {status}")
        if verbose:
            for p in probes:
                where = p.detail if p.found else f"{p.detail}; to use it: {how_to_provide(p.source, recipe)}"
                lines.append(f"    [{p.state}] {describe(p.source)}: {where}")
            floors = ", ".join(f"{v.variant} >= {v.min_score}" for v in recipe.variants) or "none"
            pinned = f"{len(recipe.sha256)} files pinned by sha256" if recipe.sha256 else "no sha256 pinned"
            lines.append(f"    variants: {floors}; {pinned}")
    return "\n".join(lines)


def build_summary(report) -> str:
    lines = [f"Built {report.recipe.name} from {describe(report.resolved.source)} -> {report.output}"]
    for r in report.records:
        score = "reference" if r["score"] is None else f"score {r['score']:.5f} (floor {r['floor']})"
        lines.append(f"  {r['variant']:<28} {r['size_mb']:>8.1f} MB {r['texts_per_s']:>9.1f} texts/s "
                     f"{r['speedup']:>6.2f}x  {score}")
    if report.results_file is not None:
        lines.append(f"Results appended to {report.results_file} (st-zoo results).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run st-zoo; returns the exit code (expected failures: one `st-zoo: error:` line, exit 1)."""
    args = build_parser().parse_args(argv)
    return run_cli("st-zoo", lambda: run(args))


def run(args: argparse.Namespace) -> int:
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("models_zoo", "exporters", "quantizers"):
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.INFO)
    recipes = load_recipes(args.recipes)
    if args.command == "list":
        print(list_recipes(recipes, verbose=args.verbose))
    elif args.command == "results":
        table = markdown_table(read_results(args.results), all_records=args.all)
        if args.markdown:
            args.markdown.write_text(table, encoding="utf-8")
        print(table, end="")
    elif args.command == "resolve":
        from models_zoo.sources import resolve

        resolved = resolve(get_recipe(args.name, recipes))
        print(resolved.folder)
    else:
        from models_zoo.build import build

        report = build(get_recipe(args.name, recipes), args.output, variants=args.variants,
                       overwrite=args.overwrite, results_file=args.results, record_results=not args.no_record,
                       repeats=args.repeats, threads=args.threads)
        if not quiet:
            print(build_summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
