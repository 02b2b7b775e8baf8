"""What the machine's cores allow a second process, without st-embed: an onnxruntime session (1 intra-op thread) on
fixed batches, for a few seconds in one process alone, then in two processes at once (docs/perf/embed.md).

    .venv/bin/python scripts/cpu_scaling.py /tmp/embed-minilm/onnx/model_qint8_avx512_vnni.onnx
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def texts_per_s(model: str, seconds: float, batch: int, tokens: int) -> float:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.ones((batch, tokens), np.int64) for i in session.get_inputs()}
    session.run(None, feeds)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, feeds)
        runs += 1
    return runs * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an ONNX graph whose inputs are int64 (batch, tokens)")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(texts_per_s(args.model, args.seconds, args.batch, args.tokens))
        return
    command = [sys.executable, __file__, args.model, "--child", "--seconds", str(args.seconds), "--batch",
               str(args.batch), "--tokens", str(args.tokens)]
    one = float(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    two = sum(float(child.communicate()[0]) for child in children)
    print(json.dumps({"one_process": round(one, 1), "two_processes": round(two, 1), "scaling": round(two / one, 2)}))


if __name__ == "__main__":
    main()
