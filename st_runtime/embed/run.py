"""`embed_file`: a corpus file to an embeddings file, resumably, one run per output at a time.

The run holds an exclusive lock on `<output>.lock` from start to end (a second run on the same output fails at once,
naming the first). Rows are cut into shards of `shard_rows` input rows. Each finished shard is written to
`<output>.parts/` under a temporary name of this process and renamed into place, next to a state file holding the
settings that change the result; each shard records how many input rows were read through its end and a fingerprint
(hash) of those rows. A rerun of the same command (after a crash, a full disk or kill -9) checks the state, reads the
input up to the last finished shard, checks those rows against the fingerprint (an input edited since is refused) and
goes on; when the input is exhausted the shards are joined into the output (again through a temporary file and a
rename) and the parts folder is removed. So the output holds every row once, in input order.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import zipfile
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from st_runtime.embed.badrows import BadRowPolicy, BadRows, check_policy
from st_runtime.embed.io import (
    EmbedError,
    Row,
    RowReader,
    count_rows,
    ids_array,
    input_format,
    load_shard,
    pyarrow_modules,
    write_npy,
    write_parquet,
)
from st_runtime.embed.output import check_paths, disk_full, lock_path, output_lock, remove_temporaries
from st_runtime.errors import one_line
from st_runtime.machine import available_cores
from st_runtime.manifest import load_manifest, sha256_file
from st_runtime.pool import DEFAULT_BATCH_TOKENS, EncodePool, TokenCounter, encode_job, token_budget_batches
from st_runtime.staging import atomic_file

STATE_VERSION = 2


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
    left_out: int = 0  # bad rows not written at all (all of them under "skip"; under "empty" those without an id)
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
        left_out = f", {self.left_out} left out" if self.left_out else ""
        return (f"st-embed: {self.texts} texts ({self.bad_rows} bad rows{left_out}), {self.tokens} tokens in "
                f"{self.seconds:.1f} s: {self.texts_per_s:.1f} texts/s{resumed}; {self.total_rows} rows -> {self.output}")


def embed_file(config: EmbedConfig) -> EmbedSummary:
    """Embed every row of `config.input` into `config.output`, continuing a partial run of the same settings.

    Raises:
        EmbedError: bad settings, a cross-encoder folder, a bad row under on_bad_row="error", an output that exists
            (without overwrite), that is the input, or that another run is writing, a partial run of other settings
            or of an input changed since, a full disk.
        ImportError: parquet without pyarrow.
    """
    started = time.perf_counter()
    manifest = load_manifest(config.folder)
    if manifest.task == "text-ranking":
        raise EmbedError(f"{str(config.folder)!r} is a cross-encoder (text-ranking): it scores (query, document) pairs "
                         "and has no embeddings; use st_runtime.CrossEncoder.predict/rank, or export a bi-encoder.")
    sparse = manifest.task == "sparse-embedding"
    check_policy(config.on_bad_row)
    fmt = config.format or ("npy" if config.output.suffix.lower() == ".npy" else "parquet")
    if fmt not in ("parquet", "npy"):
        raise EmbedError(f"--format must be parquet or npy, got {fmt!r}.")
    if sparse and fmt == "npy":
        raise EmbedError("A sparse encoder's embeddings are written as parquet (indices and values lists); use an "
                         "--output ending in .parquet (or --format parquet).")
    if fmt == "parquet":
        pyarrow_modules()
    if config.shard_rows < 1 or config.batch_tokens < 1 or config.processes < 1:
        raise EmbedError("--shard-rows, --batch-tokens and --processes must be positive.")
    if not config.input.is_file():
        raise EmbedError(f"Input file {str(config.input)!r} does not exist.")
    if input_format(config.input) == "txt" and config.id_column is not None:
        raise EmbedError("A .txt input has one text a line and no columns: its ids are the line numbers (from 0); "
                         "leave out --id-column, or use a .jsonl, .csv or .parquet input with an id column.")
    _prompt_and_task(manifest, config.prompt_name)
    parts = config.output.with_name(config.output.name + ".parts")
    written = [config.output, lock_path(config.output)] + ([_ids_path(config.output)] if fmt == "npy" else [])
    check_paths(config.input, config.output, config.folder, parts=parts, written=written)
    config.output.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(config.output):
        try:
            summary = _embed_locked(config, manifest, parts, fmt, sparse)
        except BaseException as exc:
            if parts.is_dir() and not any(parts.glob("shard-*.npz")):
                shutil.rmtree(parts, ignore_errors=True)  # nothing to go on from: leave nothing behind
            if not isinstance(exc, Exception) or not disk_full(exc):
                raise
            raise EmbedError(f"Cannot write the embeddings: {one_line(exc)}. Free some space and run the same command "
                             f"again: it goes on from the finished shards in {str(parts)!r}.") from exc
    summary.seconds = time.perf_counter() - started
    return summary


def _embed_locked(config: EmbedConfig, manifest: Any, parts: Path, fmt: str, sparse: bool) -> EmbedSummary:
    """The run, with the output's lock held: resume or start, embed the remaining shards, join them."""
    prompt, task = _prompt_and_task(manifest, config.prompt_name)
    state = {"version": STATE_VERSION,
             "settings": {"folder": str(config.folder.resolve()),
                          "manifest_sha256": sha256_file(config.folder / "st_runtime.json"),
                          "variant": config.variant, "column": config.column, "id_column": config.id_column,
                          "prompt_name": config.prompt_name, "on_bad_row": config.on_bad_row,
                          "shard_rows": config.shard_rows, "format": fmt}}
    _prepare(config, parts, state)
    done, start_row, digest = _resume_point(parts)
    in_fmt = input_format(config.input)
    reader = RowReader(config.input, in_fmt, column=config.column, id_column=config.id_column)
    rows = iter(reader)
    if start_row:
        deque(islice(rows, start_row), maxlen=0)
        if reader.rows_read != start_row or reader.digest != digest:
            raise EmbedError(f"{str(config.input)!r} changed since the partial run in {str(parts)!r} was made: its "
                             f"first {start_row} rows are not the ones embedded then. Run again with --overwrite to "
                             "start over.")
    total = count_rows(config.input, in_fmt)
    summary = EmbedSummary(output=str(config.output), resumed_at_row=start_row)
    bad = BadRows(config.on_bad_row, id_column=config.id_column is not None)
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
        jobs = _jobs(rows, reader, config, bad, counter, prompt, done, shards, summary, bar)
        next_to_write = done
        for (number, batch), result in encoder.imap(jobs, **kwargs):
            shard = shards[number]
            shard.put(batch, result)
            bar.update(len(batch))
            while next_to_write in shards and shards[next_to_write].complete:
                shards.pop(next_to_write).write(parts, _shard_name(next_to_write), sparse)
                next_to_write += 1
        for number in sorted(shards):  # shards without any good row complete without a job
            if number == next_to_write and shards[number].complete:
                shards.pop(number).write(parts, _shard_name(number), sparse)
                next_to_write += 1
        if shards:
            raise EmbedError(f"Internal error: shards {sorted(shards)} were not finished.")
    finally:
        bar.close()
        encoder.close()
    summary.bad_rows, summary.left_out = bad.count, bad.left_out

    shard_files = [parts / _shard_name(i) for i in range(next_to_write)]
    dim = _dimension(manifest, shard_files, sparse)
    if fmt == "parquet":
        with atomic_file(config.output, parts) as tmp:
            write_parquet(tmp, shard_files, sparse=sparse, dim=dim)
    else:
        with atomic_file(_ids_path(config.output), parts) as ids_tmp, atomic_file(config.output, parts) as tmp:
            write_npy(tmp, ids_tmp, shard_files, dim=dim)
    summary.total_rows = sum(len(load_shard(p)["ids"]) for p in shard_files)
    shutil.rmtree(parts)
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
    """Check or start the parts folder and its state file (with the output's lock held)."""
    state_file = parts / "state.json"
    if config.overwrite:
        if parts.exists():
            shutil.rmtree(parts)
        for path in [config.output] + ([_ids_path(config.output)] if state["settings"]["format"] == "npy" else []):
            if path.exists() or path.is_symlink():
                path.unlink()
    elif parts.exists() and state_file.exists():
        try:
            old = json.loads(state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        changed = _differences(old, state)
        if changed == ["version"]:
            raise EmbedError(f"{str(parts)!r} holds a partial run of another st-embed version, which this one cannot "
                             "go on from; pass --overwrite to start over.")
        if changed:
            raise EmbedError(f"{str(parts)!r} holds a partial run with other settings (differs in: "
                             f"{', '.join(changed)}); rerun with the same ones, or pass --overwrite to start over.")
        remove_temporaries(parts)
        if old != state:  # on from "error" shards under another policy: the next rerun must match that one
            _write_state(parts, state)
        return
    elif config.output.exists():
        raise EmbedError(f"{str(config.output)!r} exists; pass --overwrite to replace it.")
    parts.mkdir(parents=True, exist_ok=True)
    remove_temporaries(parts)
    _write_state(parts, state)


def _differences(old: Any, new: dict[str, Any]) -> list[str]:
    """The settings in which a partial run's state differs from this run's (["version"]: of another format).
    Shards made under on_bad_row "error" hold no bad row, so any policy can go on from them."""
    if not isinstance(old, dict) or old.get("version") != new["version"] or not isinstance(old.get("settings"), dict):
        return ["version"]
    changed = [key for key, value in new["settings"].items() if old["settings"].get(key) != value]
    if "on_bad_row" in changed and old["settings"]["on_bad_row"] == "error":
        changed.remove("on_bad_row")
    return changed


def _write_state(parts: Path, state: dict[str, Any]) -> None:
    with atomic_file(parts / "state.json", parts) as tmp:
        tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")


def _resume_point(parts: Path) -> tuple[int, int, str | None]:
    """(finished shards, input rows read through the last of them, the fingerprint of those rows)."""
    done = 0
    while (parts / _shard_name(done)).exists():
        done += 1
    if not done:
        return 0, 0, None
    last = parts / _shard_name(done - 1)
    try:
        with np.load(last, allow_pickle=False) as data:
            return done, int(data["rows_read"]), str(data["input_digest"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise EmbedError(f"{str(last)!r} of a partial run cannot be read ({one_line(exc)}); pass --overwrite to start "
                         "over.") from None


class _Shard:
    """One shard being filled: its ids, the good rows' positions, and results per batch."""

    def __init__(self, ids: list[Any], good: list[int], valid: np.ndarray, batches: int, *, rows_read: int,
                 digest: str) -> None:
        self.ids, self.good, self.valid = ids, good, valid
        self.pending = batches
        self.rows_read, self.digest = rows_read, digest  # the input read through this shard, for a resume
        self.parts: list[tuple[np.ndarray, Any]] = []

    @property
    def complete(self) -> bool:
        return self.pending == 0

    def put(self, batch: np.ndarray, result: Any) -> None:
        self.parts.append((batch, result))
        self.pending -= 1

    def write(self, parts: Path, name: str, sparse: bool) -> None:
        """Write to `parts/name` atomically: a temporary file of this process, fsync, rename."""
        n = len(self.ids)
        arrays: dict[str, np.ndarray] = {"ids": ids_array(self.ids), "valid": self.valid,
                                         "rows_read": np.asarray(self.rows_read, dtype=np.int64),
                                         "input_digest": np.asarray(self.digest)}
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
        with atomic_file(parts / name, parts) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def _jobs(rows: Iterator[Row], reader: RowReader, config: EmbedConfig, bad: BadRows, counter: TokenCounter,
          prompt: str, first: int, shards: dict[int, _Shard], summary: EmbedSummary, bar: Any
          ) -> Iterator[tuple[tuple[int, np.ndarray], list[str]]]:
    """Read the input shard by shard, judge each row by the bad-row policy, and yield ((shard, batch positions),
    texts) jobs of token-budget batches."""
    number = first
    while True:
        chunk = list(islice(rows, config.shard_rows))
        if not chunk:
            return
        ids, texts, good, valid = [], [], [], []
        for row in chunk:
            verdict = bad.judge(row)
            if verdict == "skip":
                continue
            if verdict == "keep":
                good.append(len(ids))
                texts.append(row.text)
            ids.append(row.id)
            valid.append(verdict == "keep")
        summary.rows += len(chunk)
        lengths = counter.count([prompt + t for t in texts])
        summary.tokens += int(lengths.sum())
        summary.texts += len(texts)
        batches = token_budget_batches(lengths, config.batch_tokens)
        shards[number] = _Shard(ids, good, np.asarray(valid, dtype=bool), len(batches), rows_read=reader.rows_read,
                                digest=reader.digest)
        bar.update(len(chunk) - len(texts))
        for batch in batches:
            yield (number, batch), [texts[i] for i in batch]
        number += 1


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
