"""Corpus readers (txt, jsonl, csv, parquet: rows of (id, text) in input order) and the output writers (parquet,
npy). Only parquet needs pyarrow (the `embed` extra); it is imported when a parquet file is read or written."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class Row:
    """One input row: its number (from 0, in input order), id, text, and what the reader found wrong with it (a
    jsonl line that is not a JSON object), if anything. `line` is its line in the file (txt, jsonl, csv)."""

    number: int
    id: Any
    text: Any
    problem: str | None = None
    line: int | None = None


class RowReader:
    """The rows of a corpus file, from the first, with a running fingerprint of what was read.

    `digest` is a blake2b hash of every row read so far (id, text and any problem, exactly as read: undecodable
    bytes included), and `rows_read` their number: a resumed run compares both with those recorded when its finished
    shards were written, so an input edited since (even in place, with the same size and modification time) is told
    apart. The id is the row number when `id_column` is None.

    Text files are split at "\n" only ("\r\n" ends a line too; a lone "\r" is part of the text), and read as UTF-8
    with undecodable bytes kept as U+DC80..U+DCFF ("surrogateescape"), so that such a row is reported, with its number,
    by the bad-row policy instead of stopping the read.

    Raises (while iterating):
        EmbedError: the text or id column is missing, or a csv file is malformed.
    """

    def __init__(self, path: Path, fmt: str, *, column: str, id_column: str | None) -> None:
        self.path, self.fmt, self.column, self.id_column = path, fmt, column, id_column
        self.rows_read = 0
        self._hash = hashlib.blake2b(digest_size=32)

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()

    def __iter__(self) -> Iterator[Row]:
        for number, (row_id, text, problem, line) in enumerate(_raw_rows(self.path, self.fmt, column=self.column,
                                                                         id_column=self.id_column)):
            if self.id_column is None:
                row_id = number
            record = repr((row_id, text, problem)).encode("utf-8", "backslashreplace")
            self._hash.update(len(record).to_bytes(8, "little") + record)
            self.rows_read += 1
            yield Row(number, row_id, text, problem, line)


def count_rows(path: Path, fmt: str) -> int:
    """Number of rows `RowReader` yields (for the progress bar), without parsing them where that can be avoided."""
    if fmt == "parquet":
        return pyarrow_modules()[1].ParquetFile(path).metadata.num_rows
    if fmt == "csv":
        return max(0, sum(1 for _ in _csv_records(path)) - 1)  # the header is no row
    if fmt == "jsonl":
        return sum(1 for line in _lines(path) if not _blank(line))
    return sum(1 for _ in _lines(path))


def _lines(path: Path) -> Iterator[bytes]:
    """The lines of a file, split at b"\n" only, without their "\n" or "\r\n"."""
    with open(path, "rb") as fh:
        for line in fh:  # a binary file splits at b"\n" only
            if line.endswith(b"\n"):
                line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
            yield line


def _blank(line: bytes) -> bool:
    return not line.strip(b" \t\r")


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _raw_rows(path: Path, fmt: str, *, column: str, id_column: str | None
              ) -> Iterator[tuple[Any, Any, str | None, int | None]]:
    """(id, text, problem, line) of every row; id None when id_column is None."""
    if fmt == "txt":
        for line_no, line in enumerate(_lines(path), 1):
            yield None, _decode(line), None, line_no
    elif fmt == "jsonl":
        for line_no, line in enumerate(_lines(path), 1):
            if _blank(line):
                continue
            obj, problem = _json_object(_decode(line), column)
            yield (obj.get(id_column) if id_column else None), obj.get(column), problem, line_no
    elif fmt == "csv":
        records = _csv_records(path)
        header = next(records, (0, []))[1]
        _check_columns(path, header, column, id_column)
        where = {name: i for i, name in enumerate(header)}  # the last of equal names, as csv.DictReader
        for line_no, record in records:
            yield (_field(record, where, id_column), _field(record, where, column), None, line_no)
    else:
        _, pq = pyarrow_modules()
        parquet = pq.ParquetFile(path)
        _check_columns(path, parquet.schema_arrow.names, column, id_column)
        columns = [column] + ([id_column] if id_column else [])
        for batch in parquet.iter_batches(batch_size=4096, columns=columns):
            texts = _values(batch.column(column))
            ids = _values(batch.column(id_column)) if id_column else [None] * len(texts)
            for row_id, text in zip(ids, texts, strict=True):
                yield row_id, text, None, None


def _values(array: Any) -> list[Any]:
    """A parquet column's values; a string column holding bytes that are not UTF-8 (written by a tool that does not
    check) is decoded value by value as in `_decode`, so that only those rows are bad."""
    try:
        return array.to_pylist()
    except UnicodeDecodeError:
        pa, _ = pyarrow_modules()
        binary = pa.large_binary() if pa.types.is_large_string(array.type) else pa.binary()
        return [None if v is None else _decode(v) for v in array.cast(binary).to_pylist()]


def _json_object(line: str, column: str) -> tuple[dict[str, Any], str | None]:
    """A jsonl line's object, or ({}, why it is not one)."""
    try:
        obj = json.loads(line)
    except ValueError as exc:  # JSONDecodeError, and ints past Python's digit limit
        return {}, f"is not JSON ({getattr(exc, 'msg', None) or exc})"
    except RecursionError:
        return {}, "is not JSON this reader can parse (nested too deeply)"
    if not isinstance(obj, dict):
        return {}, f"is a JSON {type(obj).__name__}, not an object with a {column!r} field"
    return obj, None


def _csv_records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every non-empty csv record, the header first; the csv module's own line endings
    (a record ends at "\n", "\r\n" or "\r" outside quotes), undecodable bytes kept as in `_decode`."""
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        reader = csv.reader(fh)
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise EmbedError(f"{str(path)!r} is not a csv file this reader can parse (line {reader.line_num}: "
                                 f"{exc}); fix that line or convert the file to jsonl or parquet.") from None
            if record:  # a blank line, skipped as csv.DictReader does
                yield reader.line_num, record


def _field(record: list[str], where: dict[str, int], name: str | None) -> str | None:
    if name is None:
        return None
    i = where[name]
    return record[i] if i < len(record) else None


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


def _embedding(shard: dict[str, np.ndarray], dim: int) -> np.ndarray:
    """A dense shard's (rows, dim) little-endian float32 embeddings; zeros for a shard with no good row (which has
    no dimension of its own)."""
    embedding = shard["embedding"]
    if embedding.shape[1] == 0 and dim:
        return np.zeros((embedding.shape[0], dim), dtype="<f4")
    return np.ascontiguousarray(embedding, dtype="<f4")


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
                values = pa.array(_embedding(shard, dim).reshape(-1))
                columns = [pa.array(ids, type=id_type), pa.FixedSizeListArray.from_arrays(values, dim, mask=mask)]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))


def write_npy(path: Path, ids_path: Path, shards: list[Path], *, dim: int) -> None:
    """(n, dim) float32 embeddings (zeros for an 'empty' bad row) and the ids as a second .npy file. Written with
    plain writes, shard by shard (no memory map: a full disk is then an ENOSPC error, not a SIGBUS)."""
    ids = [load_shard(p)["ids"] for p in shards]
    n = sum(len(i) for i in ids)
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")),
                                                  "fortran_order": False, "shape": (n, dim)})
        for shard_path in shards:
            fh.write(_embedding(load_shard(shard_path), dim).tobytes())
    if any(i.dtype.kind != "i" for i in ids):
        ids = [i.astype(str) for i in ids]
    with open(ids_path, "wb") as fh:
        np.save(fh, np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64), allow_pickle=False)
