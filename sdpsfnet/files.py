"""Atomic file writes for every file sdpsfnet produces (checkpoints, images, figures, JSON), and
:func:`refuse_overwrite`, the check that no output of a command is one of its inputs.

A writer gets a temporary file ``.NAME.RANDOM.tmp`` in the destination folder (NAME: the first 32
characters of the file's name, so a legal long name stays legal); on success it is
flushed, fsynced, given the permissions a plain ``open(path, "w")`` would give (``0o666`` minus
the process umask; ``tempfile.mkstemp`` alone would leave ``0o600``) and renamed over ``path``
with ``os.replace``. A reader therefore sees the old file or the new one, never a partial one;
an exception removes the temporary file, and an ``OSError`` (disk full, permissions) is raised
naming the destination, not the temporary file. A process killed mid-write leaves its ``.*.tmp``
behind: :func:`remove_stale_temps` deletes those.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

__all__ = ["atomic_write", "remove_stale_temps", "refuse_overwrite", "check_writable", "TEMP_PATTERN"]

# ``.NAME.RANDOM.tmp``: what atomic_write creates (RANDOM is tempfile's 8-character name part).
TEMP_PATTERN = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """``with atomic_write(path) as f: f.write(...)``: ``path`` appears complete or not at all.

    Parent folders are created. The file ends up with mode ``0o666 & ~umask``.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:32]}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(e, OSError):  # name the file the user asked for, not our temporary one
            raise (OSError(e.errno, f"cannot write {path}: {e.strerror}") if e.errno and e.strerror
                   else OSError(f"cannot write {path}: {e}")) from e
        raise


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write` left in ``folder`` (not recursive)
    when its process was killed mid-write; returns what was removed. Call it only when no other
    process is writing into ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        if p.is_file() and TEMP_PATTERN.match(p.name):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def _identity(path: str | os.PathLike) -> set:
    """What makes two paths one file: the resolved path, and (device, inode) if it exists, which
    also catches hard links."""
    keys: set = {os.path.realpath(path)}
    with contextlib.suppress(OSError):
        st = os.stat(path)
        keys.add((st.st_dev, st.st_ino))
    return keys


def check_writable(path: str | os.PathLike, folder: bool = False) -> None:
    """Before any work: ValueError or PermissionError naming ``path`` if it cannot be written as a
    file (``folder=False``: it is a folder) or as a folder (it is a file), or if the nearest folder
    that exists above it is not a folder or not writable."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"cannot write into {path}: it is a file, not a folder")
    if not folder and path.is_dir():
        raise ValueError(f"cannot write {path}: it is a folder; give a file name")
    above = path if folder else path.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise ValueError(f"cannot write {path}: {above} is a file, not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: permission denied in {above}")


def refuse_overwrite(outputs, inputs) -> None:
    """Before anything is written: ValueError naming the file if one of ``outputs`` is one of
    ``inputs`` (the same path after resolving ``..`` and symbolic links, or a hard link to it), and
    :func:`check_writable` on each output. Every sdpsfnet command calls this, so no command writes
    over one of its inputs or finds an unwritable output only after its work."""
    seen = {}
    for p in inputs:
        for key in _identity(p):
            seen[key] = p
    for out in outputs:
        for key in _identity(out):
            if key in seen:
                raise ValueError(f"refusing to write {out}: it is the input {seen[key]}; choose another output path")
        check_writable(out)
