"""Atomic file output: write to a temp file beside the target, rename only when complete."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgeseg.errors import EdgesegError


def ensure_writable_dir(folder: str | Path) -> Path:
    """Returns the folder, created if needed, or raises a one-line error if it cannot be written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgesegError(f"cannot create output folder {folder} ({exc.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise EdgesegError(f"output folder {folder} is not writable")
    return folder


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temp path to write; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    ensure_writable_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix + ".part")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
