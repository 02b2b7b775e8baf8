"""Atomic output folders: build next to the target, then rename into place; never half-written.

The staging folder `.OUT.partial-<host>-<pid>-<start>-<random>` names the machine and process that build it (pid
and start time, so a reused pid is told apart); an export that finds one of this machine whose process is gone
(killed with -9, power loss) removes it. `--overwrite` swaps the new folder with the old one in one step (Linux
renameat2 RENAME_EXCHANGE), so OUT is always one of the two; elsewhere the old folder is parked as
`.OUT.old-<host>-<pid>-<start>-<random>` for the moment between two renames, and an export that finds OUT missing
and such a folder of a dead process puts it back.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from exporters.errors import OutputExistsError, OutputLocationError
from st_runtime.errors import StRuntimeError
from st_runtime.manifest import MANIFEST_NAME, sha256_file
from st_runtime.staging import host_tag, make_staging_dir, owner_tag, process_alive, staging_prefix

logger = logging.getLogger(__name__)

# Errors of writing the output that the user can act on (free space, pick a writable folder).
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def check_output_dir(output_dir: str | Path, *, overwrite: bool) -> Path:
    """Refuse, before any work is done, an output folder that exists without `overwrite`, or that is not
    an st-export folder (it would be deleted by the overwrite).

    Also refuses a place that cannot be written (under a file, read-only, no permission), and first cleans up
    after an export to the same place that was killed (see `recover_interrupted`).

    Raises:
        OutputExistsError: with what to do instead; for --overwrite, naming the files st-export did not write.
        OutputLocationError: the folder cannot be created there.
    """
    out = Path(output_dir).resolve()
    recover_interrupted(out)
    _check_location(out)
    if not out.exists():
        return out
    if not overwrite:
        raise OutputExistsError(f"{str(out)!r} already exists. Pass --overwrite (overwrite=True) to replace it, "
                                "or choose another output folder.")
    if not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_NAME).is_file()):
        raise OutputExistsError(f"{str(out)!r} exists and is not a folder written by st-export (no {MANIFEST_NAME}); "
                                "refusing to replace it even with --overwrite. Remove it yourself or pick another path.")
    strangers = foreign_files(out)
    if strangers:
        shown = ", ".join(strangers[:5]) + (f" and {len(strangers) - 5} more" if len(strangers) > 5 else "")
        raise OutputExistsError(f"{str(out)!r} holds files that st-export did not write, or that changed since "
                                f"(not as listed in its {MANIFEST_NAME}): {shown}. --overwrite would delete them; "
                                "move them out of the folder, or choose another output folder.")
    return out


def foreign_files(folder: Path) -> list[str]:
    """Files of an earlier export folder that its manifest does not list with this sha256 (added or edited by
    someone else), as relative paths; "(changed)" marks an edited one."""
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        return []
    try:
        listed = json.loads(manifest.read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        listed = None
    if not isinstance(listed, dict):
        return [f"{MANIFEST_NAME} (unreadable: nothing in the folder can be checked)"]
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if rel == MANIFEST_NAME or (path.is_dir() and not path.is_symlink()):
            continue
        if rel not in listed:
            found.append(rel)
        elif path.is_symlink() or not path.is_file() or sha256_file(path) != listed[rel]:
            found.append(f"{rel} (changed)")
    return found


def _check_location(out: Path) -> None:
    """Refuse an output path below a file, or in a folder that cannot be written (read-only, no permission, full
    inode table), before the model is loaded: a probe folder is created and removed at once."""
    ancestor = out.parent
    while not ancestor.exists() and not ancestor.is_symlink() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputLocationError(f"Cannot create {str(out)!r}: {str(ancestor)!r} is a file, not a folder. "
                                  "Choose an output path that is not inside a file.")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=staging_prefix(out.name), dir=ancestor))  # named as staging:
        # if this process dies right here, the next export removes it
    except OSError as exc:
        raise OutputLocationError(f"Cannot create {str(out)!r}: {str(ancestor)!r} is not writable "
                                  f"({exc.strerror or exc}). Choose a folder you can write to.") from exc


def recover_interrupted(out: Path) -> None:
    """Clean up beside `out` after exports whose process died (kill -9, power loss): remove their staging
    folders, and put back a parked earlier export when `out` is missing (killed in the middle of an --overwrite
    without RENAME_EXCHANGE); folders of running exports and of other names are left alone."""
    if not out.parent.is_dir():
        return
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(partial|old)-{host_tag()}-(\d+)-(\d+)-")
    parked = []
    for entry in out.parent.iterdir():
        match = pattern.match(entry.name)
        if match is None or not entry.is_dir() or process_alive(int(match[2]), int(match[3])):
            continue
        if match[1] == "old":
            parked.append(entry)
        else:
            logger.info("Removing %s, left by an export that was interrupted (process %s).", entry, match[2])
            shutil.rmtree(entry, ignore_errors=True)
    if parked and not out.exists() and not out.is_symlink():
        newest = max(parked, key=lambda p: p.stat().st_mtime)
        try:
            newest.rename(out)
            parked.remove(newest)
            logger.warning("Restored %s from %s, parked by an --overwrite that was interrupted.", out, newest.name)
        except OSError:
            pass  # another export restored it first
    for entry in parked:
        shutil.rmtree(entry, ignore_errors=True)


def _renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without it (glibc < 2.28, musl)
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


_RENAMEAT2 = _renameat2()


def exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE): no moment exists in which
    either is missing. Returns False where the system or filesystem cannot (the caller then renames twice).

    Raises:
        OSError: the exchange was possible but failed (permissions, ...).
    """
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _publish(staging: Path, out: Path) -> None:
    """Put `staging` in place of `out`; an existing `out` is swapped into `staging` (the caller deletes it) or,
    without RENAME_EXCHANGE, parked beside it and deleted."""
    if not out.exists():
        staging.rename(out)
        return
    if exchange(staging, out):
        return
    parked = out.with_name(f".{out.name}.old-{owner_tag()}-{uuid.uuid4().hex[:8]}")
    out.rename(parked)
    try:
        staging.rename(out)  # killed before this line: the next export to `out` restores `parked`
    except BaseException:
        parked.rename(out)
        raise
    shutil.rmtree(parked, ignore_errors=True)


@contextmanager
def staged_output_dir(output_dir: str | Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield an empty staging folder beside `output_dir`; on success it replaces `output_dir` in one rename,
    on any error it is deleted and `output_dir` is left as it was."""
    out = check_output_dir(output_dir, overwrite=overwrite)
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # removed again on failure
    published = False
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = make_staging_dir(out)
    except OSError as exc:
        _remove_empty(created)
        raise OutputLocationError(f"Cannot create {str(out)!r}: {exc.strerror or exc}. Choose a folder you can "
                                  "write to.") from exc
    try:
        yield staging
        check_output_dir(out, overwrite=overwrite)  # it may have appeared while we worked
        _publish(staging, out)
        published = True
    except Exception as exc:
        code = None if isinstance(exc, StRuntimeError) else write_errno(exc)
        if code is None:
            raise
        hint = ("Free some space there" if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
                else "Choose a folder you can write to")
        where = getattr(exc, "filename", None) or staging
        raise OutputLocationError(f"Writing the export of {str(out)!r} failed: {os.strerror(code)} ({where}). "
                                  f"{hint}; nothing was written.") from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if not published:
            _remove_empty(created)


def write_errno(exc: BaseException) -> int | None:
    """The errno in WRITE_ERRNOS behind a failed write, or None: an OSError's own, or the one that native writers
    (safetensors, onnx, protobuf) put in their message ("... (os error 28)", "No space left on device")."""
    if isinstance(exc, OSError):
        return exc.errno if exc.errno in WRITE_ERRNOS else None
    text = str(exc)
    match = re.search(r"os error (\d+)", text)
    if match and int(match[1]) in WRITE_ERRNOS:
        return int(match[1])
    return next((code for code in WRITE_ERRNOS if os.strerror(code) in text), None)


def _remove_empty(folders: list[Path]) -> None:
    """Remove folders this export created (deepest first) when it failed, if nothing else was put in them."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return
