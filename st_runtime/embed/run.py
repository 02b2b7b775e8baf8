"""`embed_file`: a corpus file to an embeddings file, resumably.

Rows are cut into shards of `shard_rows` input rows. Each finished shard is written to `<output>.parts/` under a
temporary name and renamed into place, next to a state file holding the input's fingerprint and the settings that
change the result. A rerun of the same command (after a crash or kill -9) checks the state, skips the input rows of
the complete shards and goes on; when the input is exhausted the shards are joined into the output (again through a
temporary file and a rename) and the parts folder is removed. So the output holds every row once, in input order.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from st_runtime.embed.io import (
    EmbedError,
    count_rows,
    fingerprint,
    ids_array,
    input_format,
    pyarrow_modules,
    read_rows,
    write_npy,
    write_parquet,
)
from st_runtime.machine import available_cores
from st_runtime.manifest import load_manifest, sha256_file
from st_runtime.pool import DEFAULT_BATCH_TOKENS, EncodePool, TokenCounter, encode_job, token_budget_batches

STATE_VERSION = 1
BadRowPolicy = Literal["error", "skip", "empty"]


@dataclass(frozen=True)
class EmbedConfig:
    """Settings of one st-embed run (see `st-embed --help`)."""

    folder: Path
    input: Path
    output: Path
    column: str = "text"
    id_column: str | None = None
    format: str | None = None  # parquet | npy; default from the output suffix
    variant: str | None = None
    providers: tuple[str, ...] | None = None
    processes: int = 1
    threads_per_process: int | None = None
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    prompt_name: str | None = None
    on_bad_row: BadRowPolicy = "error"
    shard_rows: int = 10_000
    overwrite: bool = False
    progress: bool = True


@dataclass
class EmbedSummary:
    """What a run did: rows written, bad rows, tokens, time (this invocation only), and where."""

    output: str
    rows: int = 0  # input rows handled by this invocation
    texts: int = 0  # texts embedded by this invocation
    bad_rows: int = 0
    tokens: int = 0
    seconds: float = 0.0
    resumed_at_row: int = 0
    total_rows: int = 0  # rows in the output file
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def texts_per_s(self) -> float:
        return self.texts / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        resumed = f", resumed at row {self.resumed_at_row}" if self.resumed_at_row else ""
        return (f"st-embed: {self.texts} texts ({self.bad_rows} bad rows), {self.tokens} tokens in {self.seconds:.1f} s: "
                f"{self.texts_per_s:.1f} texts/s{resumed}; {self.total_rows} rows -> {self.output}")


def embed_file(config: EmbedConfig) -> EmbedSummary:
    """Embed every row of `config.input` into `config.output`, continuing a partial run of the same settings.

    Raises:
        EmbedError: bad settings, a cross-encoder folder, a bad row under on_bad_row="error", an output that exists
            (without overwrite), or a partial run of other settings or another input.
        ImportError: parquet without pyarrow.
    """
    started = time.perf_counter()
    manifest = load_manifest(config.folder)
    if manifest.task == "text-ranking":
        raise EmbedError(f"{str(config.folder)!r} is a cross-encoder (text-ranking): it scores (query, document) pairs "
                         "and has no embeddings; use st_runtime.CrossEncoder.predict/rank, or export a bi-encoder.")
    sparse = manifest.task == "sparse-embedding"
    if config.on_bad_row not in ("error", "skip", "empty"):
        raise EmbedError(f"--on-bad-row must be error, skip or empty, got {config.on_bad_row!r}.")
    fmt = config.format or ("npy" if config.output.suffix.lower() == ".npy" else "parquet")
    if fmt not in ("parquet", "npy"):
        raise EmbedError(f"--format must be parquet or npy, got {fmt!r}.")
    if sparse and fmt == "npy":
        raise EmbedError("A sparse encoder's embeddings are written as parquet (indices and values lists); use "
                         "--format parquet.")
    if fmt == "parquet":
        pyarrow_modules()
    if config.shard_rows < 1 or config.batch_tokens < 1 or config.processes < 1:
        raise EmbedError("--shard-rows, --batch-tokens and --processes must be positive.")
    if not config.input.is_file():
        raise EmbedError(f"Input file {str(config.input)!r} does not exist.")
    in_fmt = input_format(config.input)
    prompt, task = _prompt_and_task(manifest, config.prompt_name)

    parts = config.output.with_name(config.output.name + ".parts")
    state = {"version": STATE_VERSION, "input": fingerprint(config.input),
             "settings": {"folder": str(config.folder.resolve()),
                          "manifest_sha256": sha256_file(config.folder / "st_runtime.json"),
                          "variant": config.variant, "column": config.column, "id_column": config.id_column,
                          "prompt_name": config.prompt_name, "on_bad_row": config.on_bad_row,
                          "shard_rows": config.shard_rows, "format": fmt}}
    _prepare(config, parts, state)

    done = 0
    while (parts / _shard_name(done)).exists():
        done += 1
    start_row = done * config.shard_rows
    total = count_rows(config.input, in_fmt)
    summary = EmbedSummary(output=str(config.output), resumed_at_row=start_row)
    counter = TokenCounter(config.folder, manifest, task=task)
    threads = config.threads_per_process or max(1, available_cores() // config.processes)
    kwargs: dict[str, Any] = {"prompt": prompt, "task": task}
    model_kwargs: dict[str, Any] = {"variant": config.variant}
    if config.providers:
        model_kwargs["providers"] = list(config.providers)
    encoder = (_Inline(config.folder, threads, model_kwargs) if config.processes == 1 else
               EncodePool(config.folder, processes=config.processes, threads_per_process=threads,
                          model_kwargs=model_kwargs))
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=min(start_row, total), unit="text", unit_scale=True, dynamic_ncols=True,
               disable=not config.progress, file=sys.stderr, desc="st-embed")
    try:
        shards: dict[int, _Shard] = {}
        rows = read_rows(config.input, in_fmt, column=config.column, id_column=config.id_column, start=start_row)
        jobs = _jobs(rows, config, counter, prompt, done, shards, summary, bar)
        next_to_write = done
        for (number, batch), result in encoder.imap(jobs, **kwargs):
            shard = shards[number]
            shard.put(batch, result)
            bar.update(len(batch))
            while next_to_write in shards and shards[next_to_write].complete:
                shards.pop(next_to_write).write(parts / _shard_name(next_to_write), sparse)
                next_to_write += 1
        for number in sorted(shards):  # shards without any good row complete without a job
            if number == next_to_write and shards[number].complete:
                shards.pop(number).write(parts / _shard_name(number), sparse)
                next_to_write += 1
        if shards:
            raise EmbedError(f"Internal error: shards {sorted(shards)} were not finished.")
    finally:
        bar.close()
        encoder.close()

    shard_files = [parts / _shard_name(i) for i in range(next_to_write)]
    dim = _dimension(manifest, shard_files, sparse)
    tmp = config.output.with_name(config.output.name + ".tmp")
    if fmt == "parquet":
        write_parquet(tmp, shard_files, sparse=sparse, dim=dim)
    else:
        ids_path = _ids_path(config.output)
        ids_tmp = ids_path.with_name(ids_path.name + ".tmp")
        write_npy(tmp, ids_tmp, shard_files, dim=dim)
        os.replace(ids_tmp, ids_path)
    summary.total_rows = sum(int(np.load(p, allow_pickle=False)["ids"].shape[0]) for p in shard_files)
    os.replace(tmp, config.output)
    shutil.rmtree(parts)
    summary.seconds = time.perf_counter() - started
    return summary


def _ids_path(output: Path) -> Path:
    return output.with_name(output.stem + ".ids.npy")


def _shard_name(number: int) -> str:
    return f"shard-{number:06d}.npz"


def _prompt_and_task(manifest: Any, prompt_name: str | None) -> tuple[str, str | None]:
    """The prompt text for --prompt-name and the route task it selects on a Router model."""
    if prompt_name is None:
        default = manifest.default_prompt_name
        return (manifest.prompts.get(default, "") if default else ""), None
    task = prompt_name if manifest.routing is not None and prompt_name in manifest.routing.tasks else None
    if prompt_name not in manifest.prompts and task is None:
        raise EmbedError(f"--prompt-name {prompt_name!r} is not one of the model's prompts "
                         f"({', '.join(sorted(manifest.prompts)) or 'it has none'}).")
    return manifest.prompts.get(prompt_name, ""), task


def _prepare(config: EmbedConfig, parts: Path, state: dict[str, Any]) -> None:
    """Check or start the parts folder and its state file."""
    state_file = parts / "state.json"
    if config.overwrite:
        if parts.exists():
            shutil.rmtree(parts)
        if config.output.exists():
            config.output.unlink()
    elif parts.exists() and state_file.exists():
        old = json.loads(state_file.read_text())
        if old != state:
            changed = [k for k in ("input",) if old.get(k) != state[k]] + [
                k for k in state["settings"] if old.get("settings", {}).get(k) != state["settings"][k]]
            raise EmbedError(f"{str(parts)!r} holds a partial run with another input or settings "
                             f"(differs in: {', '.join(changed) or 'version'}); rerun with the same ones, or pass "
                             "--overwrite to start over.")
        return
    elif config.output.exists():
        raise EmbedError(f"{str(config.output)!r} exists; pass --overwrite to replace it.")
    parts.mkdir(parents=True, exist_ok=True)
    tmp = state_file.with_name("state.json.tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, state_file)


class _Shard:
    """One shard being filled: its ids, the good rows' positions, and results per batch."""

    def __init__(self, ids: list[Any], good: list[int], valid: np.ndarray, batches: int) -> None:
        self.ids, self.good, self.valid = ids, good, valid
        self.pending = batches
        self.parts: list[tuple[np.ndarray, Any]] = []

    @property
    def complete(self) -> bool:
        return self.pending == 0

    def put(self, batch: np.ndarray, result: Any) -> None:
        self.parts.append((batch, result))
        self.pending -= 1

    def write(self, path: Path, sparse: bool) -> None:
        """Write atomically: a temporary file, fsync, rename."""
        n = len(self.ids)
        arrays: dict[str, np.ndarray] = {"ids": ids_array(self.ids), "valid": self.valid}
        positions = np.asarray(self.good, dtype=np.int64)
        if sparse:
            rows_idx: list[np.ndarray] = [np.zeros(0, np.int32)] * n
            rows_val: list[np.ndarray] = [np.zeros(0, np.float32)] * n
            for batch, (indptr, indices, values, _) in self.parts:
                for row, i in enumerate(positions[batch]):
                    rows_idx[i] = indices[indptr[row] : indptr[row + 1]]
                    rows_val[i] = values[indptr[row] : indptr[row + 1]]
            arrays["indptr"] = np.concatenate([[0], np.cumsum([len(v) for v in rows_val])]).astype(np.int64)
            arrays["indices"] = np.concatenate([np.zeros(0, np.int32), *rows_idx]).astype(np.int32)
            arrays["values"] = np.concatenate([np.zeros(0, np.float32), *rows_val]).astype(np.float32)
        else:
            dim = self.parts[0][1].shape[1] if self.parts else 0
            embedding = np.zeros((n, dim), dtype=np.float32)
            for batch, result in self.parts:
                embedding[positions[batch]] = result
            arrays["embedding"] = embedding
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


def _jobs(rows: Iterator[tuple[Any, Any]], config: EmbedConfig, counter: TokenCounter, prompt: str, first: int,
          shards: dict[int, _Shard], summary: EmbedSummary, bar: Any) -> Iterator[tuple[tuple[int, np.ndarray], list[str]]]:
    """Read the input shard by shard and yield ((shard, batch positions), texts) jobs of token-budget batches."""
    number = first
    while True:
        chunk = [row for _, row in zip(range(config.shard_rows), rows, strict=False)]
        if not chunk:
            return
        ids, texts, good, valid = [], [], [], []
        for offset, (row_id, text) in enumerate(chunk):
            problem = _bad(text)
            summary.rows += 1
            if problem is not None:
                summary.bad_rows += 1
                if config.on_bad_row == "error":
                    raise EmbedError(f"Row {number * config.shard_rows + offset} (id {row_id!r}) {problem}; pass "
                                     "--on-bad-row skip (leave it out) or empty (keep it with an empty embedding).")
                if config.on_bad_row == "skip":
                    continue
                ids.append(row_id)
                valid.append(False)
                continue
            good.append(len(ids))
            ids.append(row_id)
            valid.append(True)
            texts.append(text)
        lengths = counter.count([prompt + t for t in texts])
        summary.tokens += int(lengths.sum())
        summary.texts += len(texts)
        batches = token_budget_batches(lengths, config.batch_tokens)
        shards[number] = _Shard(ids, good, np.asarray(valid, dtype=bool), len(batches))
        bar.update(len(chunk) - len(texts))
        for batch in batches:
            yield (number, batch), [texts[i] for i in batch]
        number += 1


def _bad(text: Any) -> str | None:
    """Why a row cannot be embedded, or None."""
    if not isinstance(text, str):
        return f"is {type(text).__name__} ({text!r:.40}), not a string"
    if not text.strip():
        return "is empty"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "is not valid Unicode (a lone surrogate)"
    return None


def _dimension(manifest: Any, shard_files: list[Path], sparse: bool) -> int:
    if sparse:
        return manifest.task_config.vocab_size
    for path in shard_files:
        with np.load(path, allow_pickle=False) as data:
            if data["embedding"].shape[1]:
                return int(data["embedding"].shape[1])
    return int(manifest.embedding_dimension or 0)


class _Inline:
    """The one-process path: the model in this process, with the EncodePool interface."""

    def __init__(self, folder: Path, threads: int, model_kwargs: dict[str, Any]) -> None:
        import st_runtime

        task = load_manifest(folder).task
        cls = st_runtime.SparseEncoder if task == "sparse-embedding" else st_runtime.SentenceTransformer
        self.model = cls(folder, intra_op_num_threads=threads, **model_kwargs)

    def imap(self, jobs: Any, **kwargs: Any) -> Iterator[tuple[Any, Any]]:
        for key, texts in jobs:
            yield key, encode_job(self.model, texts, kwargs)

    def close(self) -> None:
        pass


def summary_dict(summary: EmbedSummary) -> dict[str, Any]:
    return {**asdict(summary), "texts_per_s": summary.texts_per_s}
