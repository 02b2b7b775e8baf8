"""Atomic output folders: build next to the target, then rename into place; never half-written."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from exporters.errors import OutputExistsError
from st_runtime.manifest import MANIFEST_NAME


def check_output_dir(output_dir: str | Path, *, overwrite: bool) -> Path:
    """Refuse, before any work is done, an output folder that exists without `overwrite`, or that is not
    an st-export folder (it would be deleted by the overwrite).

    Raises:
        OutputExistsError: with what to do instead.
    """
    out = Path(output_dir).resolve()
    if not out.exists():
        return out
    if not overwrite:
        raise OutputExistsError(f"{str(out)!r} already exists. Pass --overwrite (overwrite=True) to replace it, "
                                "or choose another output folder.")
    if not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_NAME).is_file()):
        raise OutputExistsError(f"{str(out)!r} exists and is not a folder written by st-export (no {MANIFEST_NAME}); "
                                "refusing to replace it even with --overwrite. Remove it yourself or pick another path.")
    return out


@contextmanager
def staged_output_dir(output_dir: str | Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield an empty staging folder beside `output_dir`; on success it replaces `output_dir` in one rename,
    on any error it is deleted and `output_dir` is left as it was."""
    out = check_output_dir(output_dir, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    try:
        yield staging
        check_output_dir(out, overwrite=overwrite)  # it may have appeared while we worked
        if out.exists():
            backup = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            out.rename(backup)
            staging.rename(out)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
