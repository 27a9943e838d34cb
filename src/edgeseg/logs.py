"""Other libraries' output: quiet by default, shown with `edgeseg -v`. The one place that silences anything.

While edgeseg converts and quantizes a model, litert-torch, torchao, torch, absl and TensorFlow's C++ code write
dozens of lines (library load failures that look like errors, FutureWarnings, per-pass timings). `third_party_output`
sends all of it, Python and native, stdout and stderr, to a log file that is deleted when the step succeeds;
edgeseg's own progress bars go to `progress_stream()`, the real stderr, meanwhile. With `set_verbose(True)`
(`edgeseg -v`) nothing is diverted. An unexpected error inside becomes one line that names the kept log.

Two narrower tools serve single calls: `native_stderr` filters what C++ code (LiteRT) writes to file descriptor
2, and `discarded_stderr` drops Python-level stderr (the quantizer's per-op progress bars, thousands of lines
that would fill the log).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from edgeseg.errors import EdgesegError

_verbose = False
_progress: TextIO | None = None  # the real stderr while third-party output is diverted


def set_verbose(verbose: bool) -> None:
    """Shows (True) or diverts (False, the default) other libraries' output."""
    global _verbose
    _verbose = bool(verbose)


def is_verbose() -> bool:
    return _verbose


def progress_stream() -> TextIO:
    """Where edgeseg's progress bars and status lines go: stderr, even while third-party output is diverted."""
    return _progress or sys.stderr


class _Sink(io.TextIOBase):
    """Python-level stdout/stderr while diverted: writes to the log; once closed, to the current sys.stderr
    (a logging handler created meanwhile keeps a reference to it, and must keep working afterwards)."""

    def __init__(self, log: TextIO) -> None:
        self._log: TextIO | None = log

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        target = self._log if self._log is not None else sys.stderr
        if target is self:  # pragma: no cover - only if someone kept us as sys.stderr
            return len(text)
        target.write(text)
        return len(text)

    def flush(self) -> None:
        target = self._log if self._log is not None else sys.stderr
        if target is not self:
            target.flush()

    def detach_log(self) -> None:
        self._log = None


def _flush(*streams: object) -> None:
    for stream in streams:
        with contextlib.suppress(Exception):
            stream.flush()  # type: ignore[attr-defined]


# Errors that already read well (or that the CLI turns into one line itself) pass through unchanged.
_PASS_THROUGH = (EdgesegError, ImportError, OSError, MemoryError)


@contextlib.contextmanager
def third_party_output(step: str = "export") -> Iterator[None]:
    """Diverts everything written to stdout and stderr to a log file for the duration (see the module doc).

    An exception other than EdgesegError, ImportError, OSError or MemoryError is written to the log, the log
    is kept, and a one-line EdgesegError naming `step` and the log replaces it. Nested calls divert once.
    """
    global _progress
    if _verbose or _progress is not None:
        yield
        return
    _flush(sys.stdout, sys.stderr)
    log = tempfile.NamedTemporaryFile("w+", prefix=f"edgeseg-{step}-", suffix=".log", delete=False)
    saved: dict[int, int] = {}  # fd -> a copy of what it was
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            saved[fd] = os.dup(fd)
    progress: TextIO = sys.stderr
    with contextlib.suppress(OSError, KeyError):
        progress = os.fdopen(os.dup(saved[2]), "w", buffering=1)  # the real stderr, whatever fd 2 becomes
    sink = _Sink(log)
    keep = False
    _progress = progress
    try:
        for fd in saved:
            os.dup2(log.fileno(), fd)
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            try:
                yield
            except _PASS_THROUGH:
                raise
            except Exception as exc:
                keep = True
                traceback.print_exc(file=log)
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                raise EdgesegError(f"{step} failed: {type(exc).__name__}{': ' + first if first else ''} "
                                   f"(full log: {log.name}; -v shows it as it happens)") from None
    finally:
        _flush(sys.stdout, sys.stderr, log)
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        sink.detach_log()
        _progress = None
        if progress is not sys.stderr:
            progress.close()
        log.close()
        if not keep:
            Path(log.name).unlink(missing_ok=True)


def _everything(line: str) -> bool:
    return True


@contextlib.contextmanager
def native_stderr(drop: Callable[[str], bool] = _everything) -> Iterator[None]:
    """Filters what native code writes to file descriptor 2 for the duration: its lines for which `drop` is
    true are discarded, the others written on when the block ends. With -v nothing is dropped."""
    if _verbose:
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr: nothing to filter
        yield
        return
    _flush(sys.stderr)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not drop(line))
            if kept:
                sys.stderr.write(kept)
                _flush(sys.stderr)


@contextlib.contextmanager
def discarded_stderr() -> Iterator[None]:
    """Drops what Python code writes to sys.stderr for the duration (not edgeseg's own bars: they write to
    `progress_stream()`)."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        yield


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """For the commands: each EdgesegWarning is one `warning: ...` line on stderr (above any progress bar), every
    time it is raised; other warnings as Python shows them."""
    from edgeseg.errors import EdgesegWarning

    python_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if not issubclass(category, EdgesegWarning):
            python_show(message, category, filename, lineno, file, line)
        elif "tqdm" in sys.modules:  # written between progress-bar updates, not through them
            sys.modules["tqdm"].tqdm.write(f"warning: {message}", file=sys.stderr)
        else:
            print(f"warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", EdgesegWarning)
        warnings.showwarning = show
        yield


@contextlib.contextmanager
def status(description: str) -> Iterator[None]:
    """Shows `description: <elapsed>` on the progress stream while a step without its own progress runs."""
    from tqdm import tqdm

    if _verbose:  # the libraries' own lines say what is happening
        yield
        return
    bar = tqdm(desc=description, bar_format="{desc}: {elapsed}", file=progress_stream(), leave=False)
    done = threading.Event()

    def tick() -> None:
        while not done.wait(1.0):
            bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        bar.close()


__all__ = ["discarded_stderr", "is_verbose", "native_stderr", "progress_stream", "set_verbose", "status",
           "third_party_output", "warnings_as_lines"]
