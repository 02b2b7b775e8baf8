"""A/B of the token budget per batch of `encode` (the backend's `batch_tokens`: at most that many padded tokens per
graph run, on top of batch_size), on st-bench's sentences and on the 50 Lee documents (twice), alternating in one
process so that a host whose speed drifts treats every budget alike. Prints texts/s per budget and round.

    .venv/bin/python scripts/batch_tokens_ab.py /tmp/perf5/minilm --variants fp32 qint8_avx512_vnni --budgets none 1024 512 256
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import st_runtime
from bench.workloads import build_workload, gensim_test_data, lee_documents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--variants", nargs="+", default=["fp32"])
    parser.add_argument("--budgets", nargs="+", default=["none", "1024", "512", "256"], help="'none': batch_size alone")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    budgets = [None if b == "none" else int(b) for b in args.budgets]
    data = gensim_test_data()
    workloads = {"sentences": list(build_workload("sentence-embedding").corpus),
                 "documents": lee_documents(data) * 2 if data else []}
    for variant in args.variants:
        model = st_runtime.SentenceTransformer(args.folder, variant=variant, intra_op_num_threads=args.threads)
        rates: dict[tuple[str, int | None], list[float]] = {}
        for round_ in range(args.rounds + 1):  # round 0 warms every shape up, untimed
            for budget in budgets if round_ % 2 else budgets[::-1]:
                model.backend.batch_tokens = budget
                for name, texts in workloads.items():
                    start = time.perf_counter()
                    model.encode(texts, batch_size=args.batch_size)
                    if round_:
                        rates.setdefault((name, budget), []).append(len(texts) / (time.perf_counter() - start))
        for (name, budget), values in rates.items():
            print(f"{variant} {name} budget {budget}: median {statistics.median(values):.1f} texts/s "
                  f"({', '.join(f'{v:.1f}' for v in values)})", flush=True)


if __name__ == "__main__":
    main()
