"""Staging folders and files: built beside their target under a name that says which machine and process build them,
then renamed into place when complete (st-export's output folders, the zoo's cache entries, the manifest, st-embed's
files), so a target is never half-written and the leftovers of a killed process can be told from those of a live
one."""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def process_start_time(pid: int) -> int:
    """When process `pid` started (clock ticks since boot, Linux /proc), or 0 where that cannot be read."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def host_tag() -> str:
    """This machine, short: staging folders on a shared filesystem are judged only by the machine that made them."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def owner_tag() -> str:
    """`host-pid-start` of this process (the start time tells a reused pid apart)."""
    return f"{host_tag()}-{os.getpid()}-{process_start_time(os.getpid())}"


def process_alive(pid: int, start: int) -> bool:
    """Whether the process that wrote `pid-start` into a folder name still runs (a reused pid does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    except OSError:
        return True  # cannot tell: keep its folder
    now = process_start_time(pid)
    return start == 0 or now == 0 or now == start


def staging_prefix(name: str) -> str:
    """The name of a staging folder for target `name`, up to its random tail: `.NAME.partial-HOST-PID-START-`."""
    return f".{name}.partial-{owner_tag()}-"


def make_staging_dir(target: Path) -> Path:
    """A new empty staging folder beside `target` (whose parent must exist), with the permissions the umask gives a
    new folder (mkdtemp's 0700 would hide a shared cache or output from other users)."""
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(target.name), dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    return staging


@contextmanager
def atomic_file(target: Path, folder: Path | None = None) -> Iterator[Path]:
    """A temporary path `TARGET.HOST-PID-START.tmp` in `folder` (default: beside `target`; on the same file system)
    to write `target` under: fsynced and renamed to `target` when the block ends, removed when it fails in any way (a
    full disk, Ctrl-C). A file the block creates gets the permissions the umask gives any new file."""
    tmp = (folder or target.parent) / f"{target.name}.{owner_tag()}.tmp"
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
