"""Where st-embed writes, guarded: one run per output at a time (a lock file beside it), never over a file the run
reads, and temporary files that name their process and do not outlive a failure."""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from st_runtime.embed.io import EmbedError

FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # the disk or the quota is full: free space and run again


def lock_path(output: Path) -> Path:
    return output.with_name(output.name + ".lock")


@contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<output>.lock` (flock) for the block: a second run on the same output fails at once.
    The lock file holds the owner's pid, host and start time for that message, and is removed when the block ends
    (while still locked; a run that opened it just before checks that it locked the file now at that path).

    Raises:
        EmbedError: another process holds the lock.
        OSError: the lock file cannot be created (a read-only folder) or the file system has no locks.
    """
    import fcntl

    path = lock_path(output)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise EmbedError(f"{str(output)!r} is being written by another st-embed run ({holder}, lock file "
                             f"{str(path)!r}); wait for it to end or stop it, then run again.") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # its owner removed it after we opened it: lock the one now at that path
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield
    finally:
        with suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _holder(fd: int) -> str:
    """The lock owner as "pid 123 on host, started ..." from the lock file's record."""
    try:
        record = json.loads(os.pread(fd, 4096, 0))
        return f"pid {int(record['pid'])} on {record['host']}, started {record['started']}"
    except (OSError, ValueError, TypeError, KeyError):
        return "its owner has not recorded itself yet"


def check_paths(input: Path, output: Path, folder: Path, *, parts: Path, written: Sequence[Path]) -> None:
    """Refuse a run that would replace or delete what it reads: a file it writes (`written`: the output, its ids file,
    the lock file) that is the input under any name (a symlink or a hard link: same device and inode), an input or a
    model folder inside `parts` (deleted when the run ends or by --overwrite), or an output inside the model folder.

    Raises:
        EmbedError: naming both paths and what to change.
    """
    if output.is_dir():
        raise EmbedError(f"--output {str(output)!r} is a folder; give the path of a file in it (such as "
                         f"{str(output / 'embeddings.parquet')!r}).")
    source = input.stat()
    for path in written:
        try:
            same = os.path.samestat(path.stat(), source)
        except OSError:  # does not exist (yet)
            continue
        if same:
            raise EmbedError(f"--output {str(output)!r} would replace {str(path)!r}, which is the input file "
                             f"{str(input)!r} (the same file, under another name or through a link); choose another "
                             "--output.")
    real_parts, real_folder = parts.resolve(), folder.resolve()
    for what, path in (("The input", input.resolve()), ("The model folder", real_folder)):
        if path.is_relative_to(real_parts):
            raise EmbedError(f"{what} {str(path)!r} is inside {str(parts)!r}, where st-embed keeps a partial run and "
                             "which it deletes when done; move it out of there, or choose another --output.")
    if output.resolve().is_relative_to(real_folder):
        raise EmbedError(f"--output {str(output)!r} is inside the model folder {str(folder)!r}; write the embeddings "
                         "somewhere else (choose another --output).")


def remove_temporaries(folder: Path) -> None:
    """Remove the temporary files a killed run left in `folder` (call with the output's lock held: no other run
    writes there)."""
    for path in folder.glob("*.tmp"):
        path.unlink(missing_ok=True)


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` says the disk or quota is full (an OSError's errno, or the message of a native writer)."""
    if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
        return True
    return any(os.strerror(code) in str(exc) for code in FULL_ERRNOS)
