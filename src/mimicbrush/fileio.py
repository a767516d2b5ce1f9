"""Atomic file writes: a reader (or a job resumed after a kill) never sees a half-written file."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from .errors import InputError


def write_atomic(path: str | os.PathLike, data: bytes | str, *, force: bool = True) -> Path:
    """Write `data` to `path` through a temp file, fsync, then rename; a crash leaves at most a
    hidden `.NAME.*.tmp`. Without `force` an existing `path` is an error, never overwritten."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    if path.exists() and not force:
        raise InputError(f"{path} already exists (pass --force to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    # os.open rather than mkstemp: the file gets the user's umask (mkstemp's 0600 would survive the rename)
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())  # the data is on disk before the name points at it
        if force:
            os.replace(temporary, path)
        else:
            _link_without_overwrite(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _link_without_overwrite(temporary: Path, path: Path) -> None:
    """Give `temporary` the name `path` unless `path` exists, atomically where the filesystem
    allows (a hard link fails if the name is taken, so two writers cannot both win)."""
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise InputError(f"{path} already exists (pass --force to overwrite)") from None
    except OSError:  # no hard links here (FAT, some network filesystems): check, then rename
        if path.exists():
            raise InputError(f"{path} already exists (pass --force to overwrite)") from None
        os.replace(temporary, path)
