"""Backends behind one interface (`edgeseg.pipeline.Runtime`): LiteRT for .tflite, PyTorch for FP32."""

from edgeseg.runtimes.litert import LiteRTRuntime

__all__ = ["LiteRTRuntime"]
