"""st-bench: run the variants of an exported folder and the peers a user would otherwise pick (sentence-transformers;
a bare onnxruntime loop and fastembed on the exported fp32 file), on the same texts and thread settings, each in a
fresh process, and report ratios and accuracy.

Importing this package is cheap (standard library only): `python -m bench.worker` starts from it, and its
import time is part of every row's cold start.
"""

__all__: list[str] = []
