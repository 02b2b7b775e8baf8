"""Dynamic batching across requests: one worker thread per model merges the queued inputs of concurrent requests
into length-sorted batches under a token and a size budget, runs them off the event loop and hands each request
its own results back.

The event loop enqueues (`submit`) and awaits an asyncio future; the worker thread counts tokens, packs, runs the
model and resolves the futures with `loop.call_soon_threadsafe`. `run_now` is the one path past the queue: a lone
request on an idle batcher, run by the caller (st-serve's app decides when).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from st_runtime.errors import StRuntimeError

logger = logging.getLogger("st_runtime.serve")


class QueueFullError(StRuntimeError):
    """The model's queue holds --max-queue inputs already (answered 429 with Retry-After)."""


class RequestTooLargeError(StRuntimeError):
    """A request over a limit it can never fit (answered 413)."""


class ShuttingDownError(StRuntimeError):
    """The batcher is stopping and takes no more work (answered 503)."""


@dataclass(eq=False)
class Job:
    """One request's inputs, queued for one model; `future` resolves to (results per input, token count)."""

    key: Hashable  # inputs with the same key may share a graph run (same kind, prompt, route, ...)
    items: Sequence[Any]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    options: dict[str, Any] = field(default_factory=dict)  # per-request checks for count_tokens (truncate=False)
    lengths: np.ndarray | None = None  # tokens per input, counted by the worker
    results: list[Any] = field(default_factory=list)
    taken: int = 0  # inputs handed to batches so far
    finished: int = 0  # inputs with a result
    dropped: bool = False  # the client went away or the job failed: its remaining inputs are skipped

    def remaining(self) -> int:
        return len(self.items) - self.taken


@dataclass(frozen=True)
class BatchLimits:
    """Batch budget: at most `max_batch_tokens` padded tokens (inputs x longest) and `max_batch_size` inputs per graph
    run; at most `max_queue` inputs waiting per model; at most `max_input_tokens` tokens in one request; at most
    `max_uncut_chars` characters of text in one request that the tokenizer cannot cut before tokenizing
    (`TextTokenizer.token_counts`).

    The queue holds two requests of st-serve's default --max-client-batch-size (2048), so that any request the client
    limit lets through can be queued."""

    max_batch_tokens: int = 16384
    max_batch_size: int = 64
    max_queue: int = 4096
    max_input_tokens: int | None = None
    # characters of one request that must be tokenized whole (no exact cut found): about 500 bytes each in tokenizers
    max_uncut_chars: int = 1 << 20


class Batcher:
    """A queue and one worker thread for one model.

    Args:
        name: the model's name (thread name, log lines).
        run: (key, inputs) -> one result per input; the graph run of one batch.
        count_tokens: (key, inputs, options) -> tokens per input; raises RequestTooLargeError (or an input error)
            to refuse the job.
        limits: the batch and queue budget.
        on_batch: called after each graph run with (inputs, padded tokens, seconds), for metrics.
    """

    def __init__(self, name: str, run: Callable[[Hashable, list[Any]], Sequence[Any]],
                 count_tokens: Callable[[Hashable, Sequence[Any], dict[str, Any]], np.ndarray], limits: BatchLimits,
                 on_batch: Callable[[int, int, float], None] | None = None) -> None:
        self.name, self._run, self._count, self.limits = name, run, count_tokens, limits
        self._on_batch = on_batch or (lambda n, tokens, seconds: None)
        self._pending: list[Job] = []
        self._queued = 0  # inputs not yet taken into a batch, over all pending jobs
        self._cond = threading.Condition()
        self._busy = False  # the worker is forming or running a batch
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name=f"st-serve-{name}", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        """Inputs waiting for a batch."""
        return self._queued

    @property
    def idle(self) -> bool:
        """Nothing queued and no batch forming or running."""
        return not self._pending and not self._busy

    def run_now(self, key: Hashable, items: Sequence[Any], options: dict[str, Any] | None = None) -> tuple[list[Any], int]:
        """Count and run one request's inputs on the calling thread, past the queue: for a lone request on an idle
        batcher, which no other request could share a batch with (st-serve's path at concurrency 1).

        Returns:
            (one result per input, input tokens)

        Raises:
            RequestTooLargeError, InvalidInputError: as a queued job would fail; any error of the model.
        """
        lengths = np.asarray(self._count(key, items, options or {}), dtype=np.int64)
        self._check_request_tokens(lengths)
        start = time.perf_counter()
        try:
            outputs = list(self._run(key, list(items)))
        except Exception:
            logger.exception("st-serve model %r failed on a request of %d inputs", self.name, len(items))
            raise
        self._on_batch(len(items), len(items) * int(lengths.max(initial=0)), time.perf_counter() - start)
        return outputs, int(lengths.sum())

    def submit(self, key: Hashable, items: Sequence[Any], options: dict[str, Any] | None = None) -> Job:
        """Queue a request's inputs (call from the event loop); await `job.future`.

        Raises:
            RequestTooLargeError: more inputs than the whole queue holds.
            QueueFullError: the queue has no room for them now.
            ShuttingDownError: the batcher is stopping.
        """
        if len(items) > self.limits.max_queue:
            raise RequestTooLargeError(f"{len(items)} inputs in one request; this server queues at most "
                                       f"{self.limits.max_queue} per model (--max-queue). Send fewer per request.")
        loop = asyncio.get_running_loop()
        job = Job(key, items, loop.create_future(), loop, options or {})
        with self._cond:
            if self._stopping:
                raise ShuttingDownError("the server is shutting down")
            if self._queued + len(items) > self.limits.max_queue:
                raise QueueFullError(f"model {self.name!r} has {self._queued} inputs queued (--max-queue "
                                     f"{self.limits.max_queue}); retry later")
            self._pending.append(job)
            self._queued += len(items)
            self._cond.notify()
        return job

    def drop(self, job: Job) -> None:
        """Skip the job's inputs that no batch took yet (its client went away)."""
        with self._cond:
            if not job.dropped:
                job.dropped = True
                self._queued -= job.remaining()
                job.taken = len(job.items)
                if job in self._pending:
                    self._pending.remove(job)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then end the worker thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    # -- worker thread ------------------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    return  # stopping, and nothing left
                key = self._pending[0].key
                group = [job for job in self._pending if job.key == key]
                self._busy = True
            try:
                self._step(key, group)
            except Exception:  # a bug here must not end the thread and strand every later request
                logger.exception("st-serve batcher for %r failed", self.name)
                for job in group:
                    self._fail(job, RuntimeError("internal batching error"))
            finally:
                self._busy = False

    def _step(self, key: Hashable, group: list[Job]) -> None:
        for job in group:
            if job.lengths is None and not job.dropped:
                try:
                    job.lengths = np.asarray(self._count(key, job.items, job.options), dtype=np.int64)
                    self._check_request_tokens(job.lengths)
                except Exception as exc:
                    self._fail(job, exc)
        units: list[tuple[Job, int]] = []  # (job, input index): a pool of at most max_batch_size inputs, oldest first
        with self._cond:
            for job in group:
                if job.dropped:
                    continue
                take = min(job.remaining(), self.limits.max_batch_size - len(units))
                units.extend((job, i) for i in range(job.taken, job.taken + take))
                job.taken += take
                self._queued -= take
                if job.remaining() == 0:
                    self._pending.remove(job)
                if len(units) >= self.limits.max_batch_size:
                    break
        units.sort(key=lambda unit: -int(unit[0].lengths[unit[1]]))  # longest first; stable
        for batch in _pack(units, self.limits.max_batch_tokens):
            batch = [(job, i) for job, i in batch if not job.dropped]
            if not batch:
                continue
            inputs = [job.items[i] for job, i in batch]
            start = time.perf_counter()
            try:
                outputs = self._run(key, inputs)
            except Exception as exc:
                logger.exception("st-serve model %r failed on a batch of %d inputs", self.name, len(inputs))
                for job in {job for job, _ in batch}:
                    self._fail(job, exc)
                continue
            self._on_batch(len(inputs), len(inputs) * int(batch[0][0].lengths[batch[0][1]]), time.perf_counter() - start)
            for (job, i), output in zip(batch, outputs, strict=True):
                if job.dropped:
                    continue
                if not job.results:
                    job.results = [None] * len(job.items)
                job.results[i] = output
                job.finished += 1
                if job.finished == len(job.items):
                    _resolve(job, (job.results, int(job.lengths.sum())), None)

    def _check_request_tokens(self, lengths: np.ndarray) -> None:
        limit = self.limits.max_input_tokens
        if limit is not None and int(lengths.sum()) > limit:
            raise RequestTooLargeError(f"the request has {int(lengths.sum())} tokens, more than --max-input-tokens "
                                       f"{limit}. Send fewer or shorter inputs.")

    def _fail(self, job: Job, exc: BaseException) -> None:
        self.drop(job)
        _resolve(job, None, exc)


def _pack(units: list[tuple[Job, int]], max_tokens: int) -> list[list[tuple[Job, int]]]:
    """Cut longest-first units into batches whose padded size (inputs x the first, longest input) fits max_tokens;
    an input longer than the budget runs alone."""
    batches: list[list[tuple[Job, int]]] = []
    for unit in units:
        if batches and (len(batches[-1]) + 1) * int(batches[-1][0][0].lengths[batches[-1][0][1]]) <= max_tokens:
            batches[-1].append(unit)
        else:
            batches.append([unit])
    return batches


def _resolve(job: Job, result: Any, exc: BaseException | None) -> None:
    def settle() -> None:
        if job.future.done():  # cancelled: the request ended first
            return
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the event loop is closed (shutdown): nobody waits any more
        job.loop.call_soon_threadsafe(settle)
