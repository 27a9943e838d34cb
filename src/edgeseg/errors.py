"""What edgeseg reports as failures and as warnings.

An EdgesegError is a user-facing error that the CLI turns into one line and exit code 2. An EdgesegWarning is an
ordinary Python warning (filter it, or turn it into an error, as any other); the CLI prints each as one
`warning:` line. The library itself does not print them.
"""

from __future__ import annotations

import warnings


class EdgesegError(Exception):
    """A user-facing error: bad input, missing file, checksum mismatch, wrong model."""


class EdgesegWarning(UserWarning):
    """Something the user should know that does not stop the work: a damaged cache rebuilt, fewer calibration
    images than asked, an image skipped, a missing optional package."""


def warn(message: str) -> None:
    """Issues an EdgesegWarning from the caller of the function that calls this."""
    warnings.warn(message, EdgesegWarning, stacklevel=3)
