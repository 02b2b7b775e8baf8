"""`st-embed`: embed a whole corpus file (txt, jsonl, csv, parquet) into a parquet or npy file, on all cores, in
token-budget batches, resumably (`embed_file`); `st_runtime.integrations.ray` runs the same on a Ray cluster.

The runtime core never imports this package; parquet needs the `embed` extra (pyarrow).
"""

from st_runtime.embed.io import EmbedError
from st_runtime.embed.run import EmbedConfig, EmbedSummary, embed_file

__all__ = ["EmbedConfig", "EmbedError", "EmbedSummary", "embed_file"]
