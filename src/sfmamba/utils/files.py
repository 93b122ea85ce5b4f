"""Atomic file writes: a temporary file next to the target, renamed onto it, so that a crash, a kill or a full disk
never leaves a half-written checkpoint, table or result behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call `write(temp_path)` for a temporary file next to `path`, then rename it onto `path` (atomic on POSIX)."""
    atomic_write_all([(path, write)])


def atomic_write_all(files: list[tuple[str | Path, Callable[[str], None]]]) -> None:
    """`atomic_write` for several files: every file is written to its temporary name first, then all are renamed
    into place in order. A failure while writing (disk full) leaves every old file as it was, and a kill can leave a
    mix of old and new files only between the renames (microseconds, not the seconds the writes take). Each file
    gets the mode the old one had, or the umask's for a new file (mkstemp's 0o600 would hide it from other users)."""
    temps: list[str] = []
    try:
        for path, write in files:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps.append(temp)
            os.close(fd)
            write(temp)
            _sync(temp)
            os.chmod(temp, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_UMASK)
        for (path, _), temp in zip(files, temps):
            os.replace(temp, path)
    except BaseException:
        for temp in temps:  # the renamed ones are gone already
            Path(temp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda temp: Path(temp).write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda temp: Path(temp).write_bytes(data))


def _sync(path: str) -> None:
    """The file's data on disk before the rename makes it visible (else a power cut can leave an empty file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set and restore, once, at import (not thread-safe later)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
