"""One place for the checks of options that the CLI, the API and the configs share: thread counts and input
sizes. Each raises a one-line EdgesegError naming the range; the CLI's argparse types call the same functions."""

from __future__ import annotations

from numbers import Integral

from edgeseg.errors import EdgesegError

MAX_THREADS = 256  # far above any edge CPU; LiteRT crashes on absurd counts (100000 segfaults)
SIZE_RANGE = (33, 2049)  # input sides: one output-stride-16 cell at least, and 4x the zoo's 513 at most


def check_threads(value: object, name: str = "threads") -> int | None:
    """A LiteRT thread count: None (LiteRT's choice) or a whole number in 1..MAX_THREADS."""
    if value is None:
        return None
    if not isinstance(value, Integral) or isinstance(value, bool) or not 1 <= value <= MAX_THREADS:
        raise EdgesegError(f"{name} must be a whole number in 1..{MAX_THREADS}, got {value!r}")
    return int(value)


def parse_size(text: str, low: int = SIZE_RANGE[0], high: int = SIZE_RANGE[1]) -> tuple[int, int]:
    """Parses '513' or 'HxW' (e.g. '360x480'); each side must lie in low..high."""
    parts = text.lower().split("x")
    try:
        if len(parts) not in (1, 2):
            raise ValueError
        height, width = (int(parts[0]),) * 2 if len(parts) == 1 else map(int, parts)
    except ValueError:
        raise EdgesegError(f"input size must be N or HxW (e.g. 513 or 360x480), got {text!r}") from None
    if not (low <= height <= high and low <= width <= high):
        raise EdgesegError(f"input size sides must be {low}..{high}, got {text!r}")
    return height, width


def checked_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a size given as N or (H, W); each side a whole number in SIZE_RANGE, as on the CLI."""
    if isinstance(size, Integral):
        pair: tuple = (size, size)
    else:  # a tuple, list or array of two sides; anything else (a string, say) fails the check below
        pair = tuple(size) if hasattr(size, "__iter__") and not isinstance(size, str | bytes) else ()
    low, high = SIZE_RANGE
    whole = all(isinstance(v, Integral) and not isinstance(v, bool) for v in pair)
    if len(pair) != 2 or not whole or not all(low <= v <= high for v in pair):
        raise EdgesegError(f"input size must be N or (height, width) with sides {low}..{high}, got {size!r}")
    return int(pair[0]), int(pair[1])
