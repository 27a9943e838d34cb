"""edgeseg: semantic segmentation model zoo for edge devices."""

from edgeseg.errors import EdgesegError
from edgeseg.registry import get_entry, list_models

__all__ = ["EdgesegError", "get_entry", "list_models"]
__version__ = "0.1.0"
