"""Atomic file output: write to a temp file beside the target, rename only when complete."""

from __future__ import annotations

import json
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


def check_output_file(path: str | Path) -> Path:
    """Returns the path if a file can be written there (its folder is created), else raises one line."""
    path = Path(path)
    if path.is_dir():
        raise EdgesegError(f"{path} is a folder; expected a file name")
    ensure_writable_dir(path.parent)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temp path to write; on success it replaces `path`, on failure it is removed."""
    path = check_output_file(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix + ".part")
    except OSError as exc:
        raise EdgesegError(f"cannot write in {path.parent} ({exc.strerror})") from None
    os.close(fd)
    try:
        try:
            yield Path(tmp)
        except OSError as exc:  # a full disk or a vanished folder while writing: one line, nothing left
            raise EdgesegError(f"cannot write {path} ({exc.strerror or exc})") from None
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
            os.replace(tmp, path)
        except OSError as exc:
            raise EdgesegError(f"cannot write {path} ({exc.strerror or exc})") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def atomic_paths(paths: list[str | Path]) -> Iterator[list[Path]]:
    """Yields one temp path per target, for outputs that belong together (an image's label map and its
    overlay): when the block succeeds all of them replace their targets, and on any failure none is left."""
    targets = [check_output_file(p) for p in paths]
    tmps: list[Path] = []
    try:
        for path in targets:
            try:
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix + ".part")
            except OSError as exc:
                raise EdgesegError(f"cannot write in {path.parent} ({exc.strerror})") from None
            os.close(fd)
            tmps.append(Path(tmp))
        try:
            yield list(tmps)
        except OSError as exc:
            failed = next((t for t, tmp in zip(targets, tmps) if str(tmp) == str(exc.filename)), targets[0])
            raise EdgesegError(f"cannot write {failed} ({exc.strerror or exc})") from None
        done: list[Path] = []
        mode = 0o666 & ~_umask()
        for path, tmp in zip(targets, tmps):
            try:
                os.chmod(tmp, mode)
                os.replace(tmp, path)
            except OSError as exc:
                for written in done:  # all or none
                    written.unlink(missing_ok=True)
                raise EdgesegError(f"cannot write {path} ({exc.strerror or exc})") from None
            done.append(path)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


@contextmanager
def removing_new_folders(folders: list[str | Path]) -> Iterator[None]:
    """On any failure inside the block, removes those of `folders` (and of their parents) that did not
    exist when it began and are empty now: a failed command leaves no empty output folder behind."""
    new: set[Path] = set()
    for folder in folders:
        folder = Path(folder).absolute()
        for path in (folder, *folder.parents):
            if path.exists():
                break
            new.add(path)
    try:
        yield
    except BaseException:
        for path in sorted(new, key=lambda p: len(p.parts), reverse=True):
            try:
                path.rmdir()
            except OSError:  # not empty (it holds results), or already gone
                pass
        raise


def write_json(path: str | Path, data: object) -> None:
    """Writes `data` as indented JSON, atomically (NaN is written as null, which JSON can hold)."""
    text = json.dumps(_nan_to_none(data), indent=2)
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _nan_to_none(value: object) -> object:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    return value
