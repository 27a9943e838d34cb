"""edgeseg: semantic segmentation model zoo for edge devices.

    import edgeseg
    seg = edgeseg.Segmenter("deeplabv3_mnv2_dm05_voc")
    result = seg("photo.jpg")      # or a PIL image, or an (H, W, 3) uint8 RGB array
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgeseg.api import Result, Segmenter
    from edgeseg.errors import EdgesegError, EdgesegWarning
    from edgeseg.runtimes.factory import open_model, open_runtime
    from edgeseg.zoo.registry import get_entry, list_models

__all__ = ["EdgesegError", "EdgesegWarning", "Result", "Segmenter", "get_entry", "list_models", "open_model",
           "open_runtime"]
__version__ = "0.1.0"

# Imported on first use (PEP 562): `import edgeseg` and the `edgeseg` command start without numpy and LiteRT,
# so the command's Ctrl-C handling is in place before they load.
_HOMES = {"Result": "edgeseg.api", "Segmenter": "edgeseg.api", "open_model": "edgeseg.runtimes.factory",
          "open_runtime": "edgeseg.runtimes.factory", "EdgesegError": "edgeseg.errors",
          "EdgesegWarning": "edgeseg.errors", "get_entry": "edgeseg.zoo.registry",
          "list_models": "edgeseg.zoo.registry"}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
