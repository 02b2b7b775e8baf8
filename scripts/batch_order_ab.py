"""A/B of how `encode` forms its batches, on st-bench's corpus: by characters (sentence-transformers' order, which
st_runtime keeps for graphs marked `padding_sensitive`) against by tokens (st_runtime's default), alternating in one
process so that a host whose speed drifts treats both alike. Prints the padded tokens of each order and texts/s.

    .venv/bin/python scripts/batch_order_ab.py /tmp/bench-minilm --variants fp32 openvino_bf16 --rounds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import st_runtime
from bench.workloads import build_workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--variants", nargs="+", default=["fp32"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    texts = list(build_workload("sentence-embedding").corpus)
    for variant in args.variants:
        model = st_runtime.SentenceTransformer(args.folder, variant=variant, intra_op_num_threads=args.threads)
        tokenizer = model.routes.graph(None).tokenizer
        padded = {}
        for sensitive in (True, False):
            tokenizer.spec = dataclasses.replace(tokenizer.spec, padding_sensitive=sensitive)
            seen: list[int] = []
            run = model.backend.run
            model.backend.run = lambda outputs, feeds, run=run, seen=seen: seen.append(feeds["input_ids"].size) or run(
                outputs, feeds)
            model.encode(texts, batch_size=args.batch_size)  # warm-up, and counts the padded tokens
            del model.backend.run
            padded["characters" if sensitive else "tokens"] = sum(seen)
        print(f"{variant}: padded tokens by characters {padded['characters']:,}, by tokens {padded['tokens']:,}")
        for round_ in range(args.rounds):
            for sensitive in (True, False):
                tokenizer.spec = dataclasses.replace(tokenizer.spec, padding_sensitive=sensitive)
                start = time.perf_counter()
                model.encode(texts, batch_size=args.batch_size)
                rate = len(texts) / (time.perf_counter() - start)
                print(f"{variant} round {round_ + 1}: by {'characters' if sensitive else 'tokens'} {rate:.0f} texts/s",
                      flush=True)


if __name__ == "__main__":
    main()
