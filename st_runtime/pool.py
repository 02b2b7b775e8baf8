"""Encoding on all cores: a pool of worker processes (spawned), each with its own session pinned to a number of
threads, fed token-budget batches. `SentenceTransformer.encode(texts, processes=N)` / `pool=` and `st-embed` use it.

Each worker loads the exported folder itself (nothing is pickled but texts and arrays), runs one graph call per
batch, and sends back float32 rows (dense) or CSR pieces (sparse). The parent counts tokens with the model's own
tokenizer to cut the batches, so a batch holds about `batch_tokens` padded tokens whatever the text lengths.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import queue
import traceback
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from st_runtime.base import check_positive_int, length_sorted_batches
from st_runtime.errors import StRuntimeError
from st_runtime.machine import available_cores
from st_runtime.manifest import Manifest, load_manifest
from st_runtime.tokenizer import TextTokenizer

logger = logging.getLogger("st_runtime")

DEFAULT_BATCH_TOKENS = 16384
POOL_TASKS = ("sentence-embedding", "sparse-embedding")  # the kinds an encode pool runs (classes: st_runtime.kinds)


class PoolError(StRuntimeError, RuntimeError):
    """A worker of an encode pool died, could not load the model, or the pool was used after stop."""


def route_tokenizer_spec(manifest: Manifest, task: str | None) -> Any:
    """The TokenizerSpec of the graph that serves `task` (the top-level one for models without routes)."""
    if manifest.routing is None:
        return manifest.tokenizer
    return manifest.route(manifest.routing.resolve(task)).tokenizer


class TokenCounter:
    """Counts the tokens each text takes in the graph (special tokens included, truncated at max_seq_length), with
    the route's tokenizer as the runtime configures it (`TextTokenizer.token_counts`); used to cut batches by token
    count.

    Args:
        folder: the exported folder.
        manifest: its manifest (default: read from the folder).
        task: route of a Router model ("query", "document"); None: the default route.
        max_seq_length: truncation length (default: the exported one).
    """

    def __init__(self, folder: str | Path, manifest: Manifest | None = None, *, task: str | None = None,
                 max_seq_length: int | None = None) -> None:
        manifest = manifest if manifest is not None else load_manifest(folder)
        self._tokenizer = TextTokenizer(folder, route_tokenizer_spec(manifest, task))
        if max_seq_length is not None:
            self._tokenizer.set_max_seq_length(max_seq_length)

    def count(self, texts: Sequence[str]) -> np.ndarray:
        """(n,) int64 token counts."""
        return self._tokenizer.token_counts(texts)


def token_budget_batches(lengths: Sequence[int] | np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Index arrays of batches over items sorted longest first, each holding at most `batch_tokens` padded tokens
    (batch size x its longest item); an item longer than the budget gets a batch of its own.

    Raises:
        InvalidInputError (a ValueError): batch_tokens is not a positive int.
    """
    batch_tokens = check_positive_int(batch_tokens, "batch_tokens")
    return list(length_sorted_batches(lengths, max(1, len(lengths)), stable=True, max_tokens=batch_tokens))


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return PoolError("".join(traceback.format_exception(exc)))


def _worker(task: str, folder: str, model_kwargs: dict[str, Any], threads: int, inbox: Any, outbox: Any) -> None:
    """Worker process: load the model with `threads` threads, then encode jobs until None arrives."""
    for name in ("OMP_NUM_THREADS", "RAYON_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)  # tokenizers (rayon) and BLAS read these on first use: no oversubscription
    try:
        from st_runtime.kinds import model_class

        kwargs = dict(model_kwargs)
        max_seq_length = kwargs.pop("max_seq_length", None)
        model = model_class(task)(folder, intra_op_num_threads=threads, **kwargs)
        if max_seq_length is not None:
            model.max_seq_length = max_seq_length
    except BaseException as exc:
        outbox.put(("failed", os.getpid(), _picklable(exc)))
        return
    outbox.put(("ready", os.getpid(), None))
    while True:
        job = inbox.get()
        if job is None:
            return
        job_id, texts, kwargs = job
        try:
            result = encode_job(model, texts, kwargs)
        except Exception as exc:
            outbox.put((job_id, None, _picklable(exc)))
        else:
            outbox.put((job_id, result, None))


def encode_job(model: Any, texts: list[str], kwargs: dict[str, Any]) -> Any:
    """One batch through `model`: float32 (n, dim) for a bi-encoder, (indptr, indices, values, dim) for a sparse
    encoder; one graph call unless `batch_size` is in kwargs."""
    kwargs = {"batch_size": max(1, len(texts)), "show_progress_bar": False, **kwargs}
    if model.task == "sparse-embedding":
        emb = model.encode(texts, sparse_format="numpy", convert_to_tensor=True, **kwargs)
        return emb.indptr, emb.indices, emb.data, int(emb.shape[-1])
    return np.asarray(model.encode(texts, **kwargs), dtype=np.float32)


class EncodePool:
    """Worker processes that encode batches of texts with one exported model, each with its own session.

    Args:
        folder: the exported folder (a bi-encoder or a sparse encoder).
        processes: number of worker processes (default: one per available core).
        threads_per_process: onnxruntime (and tokenizer) threads of each worker (default: cores // processes, at
            least 1), so that processes x threads never exceeds the cores.
        model_kwargs: constructor arguments of every worker's model (variant, providers, backend, ...);
            "max_seq_length" is set on the model after loading.
        start_timeout: seconds to wait for every worker to load the model.

    Raises:
        ValueError: a cross-encoder folder, or non-positive counts.
        PoolError: a worker could not load the model (its error is chained).
    """

    def __init__(self, folder: str | Path, *, processes: int | None = None, threads_per_process: int | None = None,
                 model_kwargs: dict[str, Any] | None = None, start_timeout: float = 600.0) -> None:
        self.folder = Path(folder)
        self.manifest = load_manifest(self.folder)
        if self.manifest.task not in POOL_TASKS:
            raise ValueError(f"{str(self.folder)!r} holds a {self.manifest.task!r} model; an encode pool runs "
                             "bi-encoders (SentenceTransformer) and sparse encoders (SparseEncoder) only.")
        cores = available_cores()
        self.processes = _positive(processes if processes is not None else cores, "processes")
        self.threads_per_process = _positive(threads_per_process if threads_per_process is not None
                                             else max(1, cores // self.processes), "threads_per_process")
        self.model_kwargs = dict(model_kwargs or {})
        ctx = mp.get_context("spawn")
        self._inbox, self._outbox = ctx.Queue(), ctx.Queue()
        self._next_id = 0
        self._closed = False
        self._procs = [ctx.Process(target=_worker, daemon=True,
                                   args=(self.manifest.task, str(self.folder), self.model_kwargs,
                                         self.threads_per_process, self._inbox, self._outbox))
                       for _ in range(self.processes)]
        for proc in self._procs:
            proc.start()
        try:
            for _ in self._procs:
                kind, pid, error = self._get(timeout=start_timeout)
                if kind == "failed":
                    raise PoolError(f"A pool worker (pid {pid}) could not load {str(self.folder)!r}: {error}") from error
        except BaseException:
            self.close()
            raise

    @property
    def task(self) -> str:
        return self.manifest.task

    def submit(self, texts: list[str], **encode_kwargs: Any) -> int:
        """Queue one batch; returns its job id (see `result`)."""
        if self._closed:
            raise PoolError("This pool is stopped; start a new one.")
        job_id = self._next_id
        self._next_id += 1
        self._inbox.put((job_id, list(texts), encode_kwargs))
        return job_id

    def result(self, timeout: float | None = None) -> tuple[int, Any]:
        """The next finished job, in completion order: (job id, result).

        Raises:
            the worker's exception, if encoding the batch failed; PoolError if a worker died.
        """
        job_id, result, error = self._get(timeout=timeout)
        if error is not None:
            raise error
        return job_id, result

    def imap(self, jobs: Iterable[tuple[Any, list[str]]], *, max_in_flight: int | None = None,
             **encode_kwargs: Any) -> Iterator[tuple[Any, Any]]:
        """Encode (key, texts) jobs, keeping at most `max_in_flight` queued (default 2 per worker + 2); yields
        (key, result) in completion order."""
        limit = max_in_flight or 2 * self.processes + 2
        keys: dict[int, Any] = {}
        for key, texts in jobs:
            while len(keys) >= limit:
                job_id, result = self.result()
                yield keys.pop(job_id), result
            keys[self.submit(texts, **encode_kwargs)] = key
        while keys:
            job_id, result = self.result()
            yield keys.pop(job_id), result

    def encode(self, texts: Sequence[str], *, batch_tokens: int = DEFAULT_BATCH_TOKENS, chunk_size: int | None = None,
               task: str | None = None, prompt: str | None = None, **encode_kwargs: Any) -> Any:
        """Encode all `texts` on the workers; results in input order.

        Args:
            batch_tokens: padded tokens per batch (batches are cut by token count, longest texts first).
            chunk_size: instead, texts per job in input order (as sentence-transformers' pool); each worker then
                batches its chunk by `batch_size` (in encode_kwargs, default 32).
            task, prompt: as `encode`; the prompt is counted in the token budget.

        Returns:
            float32 (n, dim) for a bi-encoder, st_runtime.SparseEmbeddings (n, vocab) for a sparse encoder.
        """
        texts = list(texts)
        if task is not None:
            encode_kwargs["task"] = task
        if prompt is not None:
            encode_kwargs["prompt"] = prompt
        if chunk_size is not None:
            chunk_size = _positive(chunk_size, "chunk_size")
            batches = [np.arange(s, min(s + chunk_size, len(texts))) for s in range(0, len(texts), chunk_size)]
            encode_kwargs.setdefault("batch_size", 32)
        else:
            counter = TokenCounter(self.folder, self.manifest, task=task,
                                   max_seq_length=self.model_kwargs.get("max_seq_length"))
            batches = token_budget_batches(counter.count([(prompt or "") + t for t in texts]), batch_tokens)
        jobs = ((i, [texts[j] for j in index]) for i, index in enumerate(batches))
        results = dict(self.imap(jobs, **encode_kwargs))
        return assemble([batches[i] for i in range(len(batches))], [results[i] for i in range(len(batches))],
                        len(texts), self.task, self.manifest)

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for proc in self._procs:
            if proc.is_alive():
                self._inbox.put(None)
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        self._inbox.cancel_join_thread()
        self._inbox.close()
        self._outbox.close()

    stop = close

    def __enter__(self) -> EncodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"EncodePool({str(self.folder)!r}, processes={self.processes}, "
                f"threads_per_process={self.threads_per_process}{', closed' if self._closed else ''})")

    def _get(self, timeout: float | None) -> Any:
        """Next message from the workers, checking for dead ones while waiting."""
        waited = 0.0
        while True:
            try:
                return self._outbox.get(timeout=1.0)
            except queue.Empty:
                waited += 1.0
            dead = [p for p in self._procs if not p.is_alive()]
            if dead:
                details = ", ".join(f"pid {p.pid} (exit code {p.exitcode})" for p in dead)
                self.close()
                raise PoolError(f"{len(dead)} pool worker(s) died: {details}. The pool is stopped; start a new one.")
            if timeout is not None and waited >= timeout:
                raise PoolError(f"No answer from the pool workers in {timeout:.0f} s.")


def assemble(batches: list[np.ndarray], results: list[Any], n: int, task: str, manifest: Manifest) -> Any:
    """Put the per-batch results back in input order (see `encode_job` for their forms)."""
    if task == "sparse-embedding":
        from st_runtime.sparse import SparseEmbeddings

        rows_idx: list[np.ndarray] = [np.zeros(0, np.int64)] * n
        rows_val: list[np.ndarray] = [np.zeros(0, np.float32)] * n
        dim = manifest.task_config.vocab_size
        for index, (indptr, indices, values, width) in zip(batches, results, strict=True):
            dim = width
            for row, i in enumerate(index):
                rows_idx[i] = indices[indptr[row] : indptr[row + 1]]
                rows_val[i] = values[indptr[row] : indptr[row + 1]]
        indptr = np.concatenate([[0], np.cumsum([len(v) for v in rows_val])]).astype(np.int64)
        return SparseEmbeddings(indptr, np.concatenate([np.zeros(0, np.int64), *rows_idx]).astype(np.int64),
                                np.concatenate([np.zeros(0, np.float32), *rows_val]).astype(np.float32), (n, dim))
    dim = results[0].shape[1] if results else int(manifest.embedding_dimension or 0)
    out = np.zeros((n, dim), dtype=np.float32)
    for index, rows in zip(batches, results, strict=True):
        out[index] = rows
    return out


def pool_encode(model: Any, inputs: Any, *, pool: EncodePool | None, processes: int | None, chunk_size: int | None,
                prompt_name: str | None, prompt: str | None, batch_size: int, output_value: Any, precision: str,
                convert_to_numpy: bool, convert_to_tensor: bool, normalize_embeddings: bool, truncate_dim: int | None,
                task: str | None) -> Any:
    """`SentenceTransformer.encode(..., pool=pool)` or `processes=N` (a pool started and stopped for this call):
    the same result as encode, computed on the pool's workers."""
    from st_runtime.base import check_texts, check_truncate_dim
    from st_runtime.quantization import PRECISIONS, quantize_embeddings

    if convert_to_tensor or output_value != "sentence_embedding":
        raise ValueError("encode with pool= or processes= returns sentence embeddings as numpy only: use "
                         "output_value='sentence_embedding' and convert_to_tensor=False.")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if pool is not None and Path(pool.folder).resolve() != Path(model.folder).resolve():
        raise ValueError(f"This pool runs {str(pool.folder)!r}, not this model's folder {str(model.folder)!r}.")
    texts, single = check_texts(inputs)
    prompt_text = model._resolve_prompt(prompt, prompt_name) or ""
    truncate_dim = check_truncate_dim(model.truncate_dim if truncate_dim is None else truncate_dim,
                                      model.manifest.embedding_dimension)
    kwargs: dict[str, Any] = {"prompt": prompt_text, "task": task, "normalize_embeddings": normalize_embeddings,
                              "truncate_dim": truncate_dim}
    if chunk_size is not None:
        kwargs["batch_size"] = batch_size
    own = pool is None
    if own:
        pool = start_pool(model, processes=processes)
    try:
        sentence = pool.encode(texts, chunk_size=chunk_size, **kwargs)
    finally:
        if own:
            pool.close()
    if precision != "float32" and len(sentence):
        sentence = quantize_embeddings(sentence, precision)
    if single:
        return sentence[0]
    return sentence if convert_to_numpy else list(sentence)


def start_pool(model: Any, *, processes: int | None = None, threads_per_process: int | None = None) -> EncodePool:
    """An EncodePool running `model`'s folder with its variant (and max_seq_length, when set on the model)."""
    kwargs: dict[str, Any] = {"variant": model.variant.name}
    session = model.session
    if session is not None:
        kwargs["providers"] = [p for p in session.get_providers()]
    if getattr(model, "_max_seq_length", None) is not None:
        kwargs["max_seq_length"] = model._max_seq_length
    return EncodePool(model.folder, processes=processes, threads_per_process=threads_per_process, model_kwargs=kwargs)


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(value)
