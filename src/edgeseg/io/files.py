"""Atomic file output: write to a temp file beside the target, rename only when complete."""

from __future__ import annotations

import json
import os
import re
import signal
import tempfile
import threading
import time
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


def _temp_for(path: Path) -> Path:
    """Creates the hidden temp file `.<stem>.<pid>.<random><suffix>.part` beside `path`. The writer's
    process id in the name lets a later write of the same target tell a leftover of a killed process."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.{os.getpid()}.",
                                   suffix=path.suffix + ".part")
    except OSError as exc:
        raise EdgesegError(f"cannot write in {path.parent} ({exc.strerror})") from None
    os.close(fd)
    return Path(tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid < 2**31  # another user's live process (or a name that is not a process id)
    return True


# `.<stem>.<pid>.<8 random><suffix>.part` as _temp_for names them (older edgeseg: no `<pid>.`), and
# `.<stem>.<pid>.<8 random>.part.mp4` as video.VideoWriter does (FFmpeg picks the muxer by the suffix).
_PART = re.compile(r"\..+?\.(?:(\d+)\.)?[a-z0-9_]{8}(?:(?:\.[A-Za-z0-9]+)?\.part|\.part\.mp4)")
_SCANNED: dict[Path, float] = {}  # folder -> when it was last cleaned, so that writing many files stays cheap
RESCAN_SECONDS = 5.0


def remove_stale_parts(folder: str | Path, *, force: bool = False) -> list[Path]:
    """Removes the temp files left in `folder` by writers that were killed mid-write (kill -9, power
    loss): those whose process is gone, or that carry no process id (older edgeseg). Returns them.
    Called after each successful atomic write; a folder is listed at most every RESCAN_SECONDS."""
    folder = Path(folder)
    now = time.monotonic()
    if not force and now - _SCANNED.get(folder, -RESCAN_SECONDS) < RESCAN_SECONDS:
        return []
    _SCANNED[folder] = now
    removed: list[Path] = []
    try:
        names = [entry.name for entry in os.scandir(folder) if entry.name.endswith((".part", ".part.mp4"))]
    except OSError:
        return removed
    for name in names:
        match = _PART.fullmatch(name)
        if match is None:
            continue
        pid = match.group(1)
        if pid is not None and (int(pid) == os.getpid() or _alive(int(pid))):
            continue
        try:
            (folder / name).unlink()
            removed.append(folder / name)
        except OSError:
            pass
    return removed


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temp path to write; on success it replaces `path` (and leftovers of killed earlier
    writers of `path` are removed), on failure it is removed."""
    path = check_output_file(path)
    tmp = _temp_for(path)
    try:
        try:
            yield Path(tmp)
        except OSError as exc:  # a full disk or a vanished folder while writing: one line, nothing left
            if exc.errno is None:  # not the file system (e.g. urllib's URLError): the caller says more
                raise
            raise EdgesegError(f"cannot write {path} ({exc.strerror or exc})") from None
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
            os.replace(tmp, path)
        except OSError as exc:
            raise EdgesegError(f"cannot write {path} ({exc.strerror or exc})") from None
        remove_stale_parts(path.parent)
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
            tmps.append(_temp_for(path))
        try:
            yield list(tmps)
        except OSError as exc:
            if exc.errno is None:  # not the file system (e.g. urllib's URLError)
                raise
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
        for path in targets:
            remove_stale_parts(path.parent)
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


_HOLDING = {"active": False, "raised": False}  # the one SIGINT handler below is installed at a time


def _first_interrupt_only(signum: int, frame: object) -> None:
    if _HOLDING["raised"]:
        return  # held: the cleanup that the first Ctrl-C started must run to its end
    _HOLDING["raised"] = True
    raise KeyboardInterrupt


@contextmanager
def interrupts_as_requests(requested: threading.Event | None = None) -> Iterator[threading.Event]:
    """Inside the block Ctrl-C raises nothing: it sets the yielded event, which the caller checks at safe points
    (between video frames). A KeyboardInterrupt raised inside a queue or lock operation can leave a pipeline's
    threads waiting on each other forever; a flag cannot. The interrupt counts as the first for an enclosing
    `interrupts_held_after_first`, so later ones stay held through the cleanup. Outside the main thread, or
    where SIGINT has a handler of someone else's, the event is never set and Ctrl-C behaves as before."""
    requested = requested or threading.Event()
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) not in (signal.default_int_handler, _first_interrupt_only):
        yield requested
        return

    def request(signum: int, frame: object) -> None:
        requested.set()
        _HOLDING["raised"] = True

    previous = signal.signal(signal.SIGINT, request)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def interrupts_held_after_first(*, exiting: bool = False) -> Iterator[None]:
    """Inside the block the first Ctrl-C (SIGINT) raises KeyboardInterrupt as usual and any later one is
    ignored until the block ends, so the cleanup the first one starts (committing the playable video, writing
    the JSON report) runs to its end: a second Ctrl-C 0.1 s after the first used to leave only a `.part` file.
    With `exiting` (the process ends after the block) an interrupted block leaves SIGINT ignored, so that a
    late Ctrl-C cannot kill the exiting interpreter either. Nested blocks share the outermost one. Does
    nothing outside the main thread (where Python cannot set signal handlers) or where SIGINT already has a
    handler other than Python's default."""
    if (_HOLDING["active"] or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    _HOLDING.update(active=True, raised=False)
    previous = signal.signal(signal.SIGINT, _first_interrupt_only)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN if exiting and _HOLDING["raised"] else previous)
        _HOLDING.update(active=False, raised=False)
