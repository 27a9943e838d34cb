"""PyTorch FP32 runtime (needs the `torch` extra)."""

from __future__ import annotations

import numpy as np
import torch

from edgeseg.pipeline import DEEPLAB, Size, input_hw, normalize_and_pad
from edgeseg.zoo.registry import Preprocess


class TorchRuntime:
    """Runs a DeepLabV3 torch module on the CPU (or `device`), under inference mode."""

    def __init__(
        self, model: torch.nn.Module, *, num_classes: int, input_size: Size | None = None,
        preprocess: Preprocess = DEEPLAB, device: str = "cpu", name: str = "torch",
    ) -> None:
        """input_size defaults to the preprocessing's; frames are enlarged to fit it if preprocess.upscale."""
        self.model = model.eval().to(device)
        self.device = device
        self.input_size = input_hw(preprocess.input_size if input_size is None else input_size)
        self.upscale = preprocess.upscale
        self.num_classes = num_classes
        self.name = name
        self._preprocess = preprocess

    @torch.inference_mode()
    def predict(self, pixels: np.ndarray) -> np.ndarray:
        height, width = pixels.shape[:2]
        x = torch.from_numpy(normalize_and_pad(pixels, self.input_size, self._preprocess))
        logits = self.model(x.permute(2, 0, 1)[None].to(self.device))[0]
        return logits[:, :height, :width].argmax(0).cpu().numpy()

    @torch.inference_mode()
    def predict_scores(self, pixels: np.ndarray) -> np.ndarray:
        """Returns float32 class probabilities (H, W, C) for pixels that fit inside input_size."""
        height, width = pixels.shape[:2]
        x = torch.from_numpy(normalize_and_pad(pixels, self.input_size, self._preprocess))
        logits = self.model(x.permute(2, 0, 1)[None].to(self.device))[0, :, :height, :width]
        return logits.softmax(0).permute(1, 2, 0).cpu().numpy().astype(np.float32)
