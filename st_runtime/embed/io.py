"""Corpus readers (txt, jsonl, csv, parquet: rows of (id, text) in input order) and the output writers (parquet,
npy). Only parquet needs pyarrow (the `embed` extra); it is imported when a parquet file is read or written."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from st_runtime.errors import StRuntimeError

INPUT_FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}


class EmbedError(StRuntimeError, ValueError):
    """st-embed cannot go on: bad arguments, an unreadable input, a bad row under --on-bad-row error, or a partial
    run made with other settings."""


def pyarrow_modules() -> tuple[Any, Any]:
    """(pyarrow, pyarrow.parquet), or an ImportError naming the extra."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError('Parquet files need pyarrow: pip install "st-runtime[embed]".') from exc
    return pa, pq


def input_format(path: Path) -> str:
    fmt = INPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise EmbedError(f"Unknown input format {path.suffix!r} of {str(path)!r}; use .txt (one text a line), .jsonl, "
                         ".csv or .parquet.")
    return fmt


def fingerprint(path: Path) -> dict[str, Any]:
    """Size, modification time and a hash of the first and last MiB: changes whenever the file does."""
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        digest.update(fh.read(1 << 20))
        if stat.st_size > 2 << 20:
            fh.seek(-(1 << 20), os.SEEK_END)
            digest.update(fh.read(1 << 20))
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "head_tail_sha256": digest.hexdigest()}


def count_rows(path: Path, fmt: str) -> int:
    """Number of rows `read_rows` yields (for the progress bar)."""
    if fmt == "parquet":
        return pyarrow_modules()[1].ParquetFile(path).metadata.num_rows
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8") as fh:
            return max(0, sum(1 for _ in csv.reader(fh)) - 1)
    with open(path, "rb") as fh:
        if fmt == "jsonl":
            return sum(1 for line in fh if line.strip())
        return sum(1 for _ in fh)


def read_rows(path: Path, fmt: str, *, column: str, id_column: str | None, start: int = 0) -> Iterator[tuple[Any, Any]]:
    """(id, text) of every row from row `start` on; the id is the row number (from 0) when id_column is None. The
    text is whatever the file holds (None, a number, ...): the caller applies --on-bad-row.

    Raises:
        EmbedError: the column or id column is missing, a jsonl line is not a JSON object, or a row has no id.
    """
    rows = _raw_rows(path, fmt, column=column, id_column=id_column)
    for number, (row_id, text) in enumerate(rows):
        if number < start:
            continue
        if id_column is None:
            row_id = number
        elif row_id is None:
            raise EmbedError(f"Row {number} of {str(path)!r} has no {id_column!r} (--id-column); every row needs one.")
        yield row_id, text


def _raw_rows(path: Path, fmt: str, *, column: str, id_column: str | None) -> Iterator[tuple[Any, Any]]:
    if fmt == "txt":
        with open(path, encoding="utf-8", newline="") as fh:
            for line in fh:
                yield None, line.rstrip("\r\n")
    elif fmt == "jsonl":
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise EmbedError(f"Line {line_no} of {str(path)!r} is not JSON ({exc.msg}).") from None
                if not isinstance(obj, dict):
                    raise EmbedError(f"Line {line_no} of {str(path)!r} is a JSON {type(obj).__name__}, not an object "
                                     f"with a {column!r} field.")
                yield (obj.get(id_column) if id_column else None), obj.get(column)
    elif fmt == "csv":
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            _check_columns(path, reader.fieldnames or [], column, id_column)
            for row in reader:
                yield (row.get(id_column) if id_column else None), row.get(column)
    else:
        _, pq = pyarrow_modules()
        parquet = pq.ParquetFile(path)
        _check_columns(path, parquet.schema_arrow.names, column, id_column)
        columns = [column] + ([id_column] if id_column else [])
        for batch in parquet.iter_batches(batch_size=4096, columns=columns):
            texts = batch.column(column).to_pylist()
            ids = batch.column(id_column).to_pylist() if id_column else [None] * len(texts)
            yield from zip(ids, texts, strict=True)


def _check_columns(path: Path, names: list[str], column: str, id_column: str | None) -> None:
    for name, flag in ((column, "--column"), (id_column, "--id-column")):
        if name is not None and name not in names:
            raise EmbedError(f"{str(path)!r} has no column {name!r} ({flag}); its columns: {', '.join(names)}.")


def ids_array(ids: list[Any]) -> np.ndarray:
    """int64 when every id is an int, else str."""
    if all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
        return np.asarray(ids, dtype=np.int64)
    return np.asarray([str(i) for i in ids], dtype=str) if ids else np.zeros(0, dtype=str)


def load_shard(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _string_ids(shards: list[Path]) -> bool:
    for path in shards:
        with np.load(path, allow_pickle=False) as data:
            if data["ids"].dtype.kind != "i":
                return True
    return False


def write_parquet(path: Path, shards: list[Path], *, sparse: bool, dim: int) -> None:
    """One row group per shard: id, embedding (fixed-size list of float32; null for an 'empty' bad row), or for a
    sparse model id, indices (list of int32), values (list of float32)."""
    pa, pq = pyarrow_modules()
    string_ids = _string_ids(shards)
    id_type = pa.string() if string_ids else pa.int64()
    if sparse:
        schema = pa.schema([("id", id_type), ("indices", pa.list_(pa.int32())), ("values", pa.list_(pa.float32()))])
    else:
        schema = pa.schema([("id", id_type), ("embedding", pa.list_(pa.float32(), dim))])
    with pq.ParquetWriter(path, schema) as writer:
        for shard_path in shards:
            shard = load_shard(shard_path)
            ids = shard["ids"].astype(str) if string_ids else shard["ids"]
            valid = shard["valid"]
            mask = pa.array(~valid) if not valid.all() else None
            if sparse:
                offsets = pa.array(shard["indptr"].astype(np.int32))
                columns = [pa.array(ids, type=id_type),
                           pa.ListArray.from_arrays(offsets, pa.array(shard["indices"].astype(np.int32))),
                           pa.ListArray.from_arrays(offsets, pa.array(shard["values"].astype(np.float32)))]
            else:
                values = pa.array(shard["embedding"].reshape(-1).astype(np.float32))
                columns = [pa.array(ids, type=id_type), pa.FixedSizeListArray.from_arrays(values, dim, mask=mask)]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))


def write_npy(path: Path, ids_path: Path, shards: list[Path], *, dim: int) -> None:
    """(n, dim) float32 embeddings (zeros for an 'empty' bad row) and the ids as a second .npy file."""
    ids = [load_shard(p)["ids"] for p in shards]
    n = sum(len(i) for i in ids)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    start = 0
    for shard_path in shards:
        embedding = load_shard(shard_path)["embedding"]
        out[start : start + len(embedding)] = embedding
        start += len(embedding)
    out.flush()
    del out
    if any(i.dtype.kind != "i" for i in ids):
        ids = [i.astype(str) for i in ids]
    with open(ids_path, "wb") as fh:
        np.save(fh, np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64), allow_pickle=False)
