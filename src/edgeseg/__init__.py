"""edgeseg: semantic segmentation model zoo for edge devices.

    import edgeseg
    seg = edgeseg.Segmenter("deeplabv3_mnv2_dm05_voc")
    result = seg("photo.jpg")      # or a PIL image, or an (H, W, 3) uint8 RGB array
"""

from edgeseg.api import Result, Segmenter
from edgeseg.backends import open_model, open_runtime
from edgeseg.errors import EdgesegError
from edgeseg.registry import get_entry, list_models

__all__ = ["EdgesegError", "Result", "Segmenter", "get_entry", "list_models", "open_model", "open_runtime"]
__version__ = "0.1.0"
