"""Ray Data: embed a dataset on a cluster, one model per actor.

    import ray
    from st_runtime.integrations.ray import Embedder

    ds = ray.data.read_parquet("s3://bucket/corpus/")
    ds = ds.map_batches(Embedder, fn_constructor_kwargs={"folder": "/models/minilm", "id_column": "id"},
                        concurrency=8, num_cpus=4, batch_size=4096, batch_format="pyarrow")
    ds.write_parquet("s3://bucket/embeddings/")

GPU actors: `fn_constructor_kwargs={"providers": "cuda", ...}, num_gpus=1`. The model folder must be readable at the
same path on every node (a shared file system, or copied there first). Needs the `ray` extra (ray[data]).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from st_runtime.embed.badrows import BadRows
from st_runtime.embed.io import EmbedError, Row, pyarrow_modules
from st_runtime.embed.run import EmbedSummary, _prompt_and_task
from st_runtime.manifest import load_manifest
from st_runtime.pool import DEFAULT_BATCH_TOKENS, TokenCounter, assemble, encode_job, token_budget_batches


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ImportError('Ray Data is needed: pip install "st-runtime[ray]".') from exc
    return ray


class Embedder:
    """A callable class for `ray.data.Dataset.map_batches`: each actor loads the model once and turns batches into
    a pyarrow table of `id_column` (when given), `embedding` (fixed-size float32 list), or for a sparse encoder
    `indices` and `values` lists — the same columns `st-embed` writes.

    Args:
        folder: exported folder (bi-encoder or sparse encoder), at the same path on every node.
        column: text column of the batches.
        id_column: column copied to the output as "id" (None: no id column).
        variant, providers: as the runtime classes (providers="cuda" with num_gpus=1 actors for GPUs).
        threads: onnxruntime threads of the actor (match map_batches' num_cpus).
        prompt_name: stored prompt to prepend (query, document, ...).
        batch_tokens: padded tokens per graph call inside a Ray batch.
        on_bad_row: "error" (raise), "skip" (drop the row) or "empty" (null embedding / empty lists).

    Raises:
        EmbedError: a cross-encoder folder, an unknown prompt name or policy.
    """

    def __init__(self, folder: str | Path, *, column: str = "text", id_column: str | None = None,
                 variant: str | None = None, providers: Sequence[str] | str | None = None, threads: int | None = None,
                 prompt_name: str | None = None, batch_tokens: int = DEFAULT_BATCH_TOKENS,
                 on_bad_row: str = "error") -> None:
        import st_runtime

        self.folder = Path(folder)
        manifest = load_manifest(self.folder)
        if manifest.task == "text-ranking":
            raise EmbedError(f"{str(folder)!r} is a cross-encoder: it scores pairs and has no embeddings.")
        self.bad = BadRows(on_bad_row, id_column=id_column is not None, option="on_bad_row")  # checks the policy
        self.sparse = manifest.task == "sparse-embedding"
        cls = st_runtime.SparseEncoder if self.sparse else st_runtime.SentenceTransformer
        self.model = cls(self.folder, variant=variant, providers=providers, intra_op_num_threads=threads)
        self.manifest = manifest
        self.column, self.id_column, self.batch_tokens = column, id_column, batch_tokens
        self.prompt, self.task = _prompt_and_task(manifest, prompt_name)
        self.counter = TokenCounter(self.folder, manifest, task=self.task)

    def __call__(self, batch: Any) -> Any:
        pa, _ = pyarrow_modules()
        table = _as_table(batch)
        texts_in = table.column(self.column).to_pylist()
        ids = table.column(self.id_column).to_pylist() if self.id_column else None
        keep, valid, texts = [], [], []
        for i, text in enumerate(texts_in):
            verdict = self.bad.judge(Row(i, ids[i] if ids is not None else None, text), of=" of a batch")
            if verdict == "skip":
                continue
            keep.append(i)
            valid.append(verdict == "keep")
            if verdict == "keep":
                texts.append(text)
        batches = token_budget_batches(self.counter.count([self.prompt + t for t in texts]), self.batch_tokens)
        kwargs = {"prompt": self.prompt, "task": self.task}
        results = [encode_job(self.model, [texts[i] for i in b], kwargs) for b in batches]
        encoded = assemble(batches, results, len(texts), self.model.task, self.manifest)
        valid_mask = np.asarray(valid, dtype=bool)
        columns, names = [], []
        if ids is not None:
            columns.append(pa.array([ids[i] for i in keep]))
            names.append("id")
        good = np.flatnonzero(valid_mask)
        if self.sparse:
            lengths = np.zeros(len(keep), dtype=np.int64)
            lengths[good] = np.diff(encoded.indptr)
            offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
            columns += [pa.ListArray.from_arrays(offsets, pa.array(encoded.indices.astype(np.int32))),
                        pa.ListArray.from_arrays(offsets, pa.array(encoded.data.astype(np.float32)))]
            names += ["indices", "values"]
        else:
            dim = encoded.shape[1] if len(texts) else int(self.manifest.embedding_dimension or 0)
            full = np.zeros((len(keep), dim), dtype=np.float32)
            full[good] = encoded
            mask = pa.array(~valid_mask) if not valid_mask.all() else None
            columns.append(pa.FixedSizeListArray.from_arrays(pa.array(full.reshape(-1)), dim, mask=mask))
            names.append("embedding")
        return pa.Table.from_arrays(columns, names=names)


def _as_table(batch: Any) -> Any:
    pa, _ = pyarrow_modules()
    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, dict):
        return pa.table({k: list(v) if isinstance(v, np.ndarray) and v.dtype == object else v for k, v in batch.items()})
    return pa.Table.from_pandas(batch, preserve_index=False)


def embed_dataset(ds: Any, folder: str | Path, *, concurrency: int = 1, num_cpus: float = 1, num_gpus: float = 0,
                  batch_size: int = 4096, **embedder_kwargs: Any) -> Any:
    """`ds.map_batches(Embedder, ...)` with `concurrency` actors of `num_cpus` CPUs (and `num_gpus` GPUs) each.

    Args:
        embedder_kwargs: the other `Embedder` arguments (column, id_column, variant, providers, prompt_name, ...).
    """
    kwargs = {"folder": str(folder), "threads": max(1, int(num_cpus)), **embedder_kwargs}
    return ds.map_batches(Embedder, fn_constructor_kwargs=kwargs, concurrency=concurrency, num_cpus=num_cpus,
                          num_gpus=num_gpus or None, batch_size=batch_size, batch_format="pyarrow")


def embed_with_ray(folder: str | Path, input: str, output: str, *, address: str = "auto", concurrency: int = 1,
                   num_cpus: float = 1, num_gpus: float = 0, **embedder_kwargs: Any) -> EmbedSummary:
    """`st-embed --ray`: read parquet or jsonl (a file, a folder, or an object-store URI) with Ray Data, embed it
    on `concurrency` actors, and write a folder of parquet files to `output`, rows in input order.

    Args:
        address: the cluster ("auto": the one `ray start` runs here; "ray://head:10001"; "local": start one in this
            process). An already initialized Ray is used as it is.

    Raises:
        EmbedError: an input that is neither parquet nor jsonl.
    """
    import time

    ray = _ray()
    started = time.perf_counter()
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    lowered = str(input).lower().rstrip("/")
    if lowered.endswith((".jsonl", ".json", ".ndjson")):
        ds = ray.data.read_json(input)
    elif lowered.endswith(".parquet") or "." not in lowered.rsplit("/", 1)[-1]:
        ds = ray.data.read_parquet(input)
    else:
        raise EmbedError(f"With --ray the input is parquet or jsonl (a file, a folder of parquet files or a URI), got "
                         f"{input!r}.")
    out = embed_dataset(ds, folder, concurrency=concurrency, num_cpus=num_cpus, num_gpus=num_gpus, **embedder_kwargs)
    out.write_parquet(output)
    rows = ray.data.read_parquet(output).count()
    return EmbedSummary(output=str(output), rows=rows, texts=rows, total_rows=rows,
                        seconds=time.perf_counter() - started)
