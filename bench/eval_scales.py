"""mIoU by input handling, PyTorch FP32: each frame resized by a factor, padded to the next 16k+1, predicted,
and the logits brought back to the frame's own size (factor 1: native size, no 513 padding).

    .venv/bin/python bench/eval_scales.py --weights runs/camvid_dm05_mf/best.safetensors --scales 1,1.5,2
    .venv/bin/python bench/eval_scales.py --model deeplab_edgetpu_slim_cityscapes --class-map cityscapes-to-camvid

The 513-padded protocol (DeepLab's) is what `edgeseg evaluate` measures; this compares the alternatives.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from edgeseg.data.datasets import open_dataset
from edgeseg.data.labelsets import load_mapping, mapping_lut
from edgeseg.runtimes.factory import load_torch_model

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "camvid"


def predict(model: torch.nn.Module, image: np.ndarray, scale: float) -> np.ndarray:
    """Returns the label map at the image's size, the model run on the image resized by `scale`."""
    h, w = image.shape[:2]
    height, width = round(h * scale), round(w * scale)
    pixels = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR), np.float32)
    x = torch.from_numpy(pixels * 2 / 255 - 1).permute(2, 0, 1)[None]
    padded_h, padded_w = -(-(height - 1) // 16) * 16 + 1, -(-(width - 1) // 16) * 16 + 1
    x = F.pad(x, (0, padded_w - width, 0, padded_h - height))  # pad with the mean pixel (0 after scaling)
    with torch.no_grad():
        logits = F.interpolate(model.forward_logits(x), size=(padded_h, padded_w), mode="bilinear",
                               align_corners=True)[:, :, :height, :width]
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    return logits.argmax(1)[0].numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="zoo model name")
    parser.add_argument("--weights", type=Path, help="a fine-tuned checkpoint")
    parser.add_argument("--data", type=Path, default=CAMVID)
    parser.add_argument("--split", default="val")
    parser.add_argument("--scales", default="1,1.5,2")
    parser.add_argument("--class-map", help="score the model's classes as the data's through this mapping")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, entry = load_torch_model(args.model, args.weights)
    model.eval()
    names, lut = entry.class_names, None
    if args.class_map:
        mapping = load_mapping(args.class_map)
        lut, names = mapping_lut(mapping, entry.class_names), mapping.dataset_classes
    dataset = open_dataset(args.data, args.split)
    n = len(names)
    print(f"{'scale':>5} {'mIoU':>6}  per-class IoU % ({', '.join(names)})")
    for scale in map(float, args.scales.split(",")):
        confusion = np.zeros((n, n), np.int64)
        for sample in dataset.samples:
            image, mask = dataset.load(sample)
            labels = predict(model, image, scale)
            labels = labels if lut is None else lut[labels]
            keep = mask != 255
            confusion += np.bincount(n * mask[keep].astype(np.int64) + labels[keep], minlength=n * n).reshape(n, n)
        iou = np.diag(confusion) / np.maximum(confusion.sum(0) + confusion.sum(1) - np.diag(confusion), 1)
        print(f"{scale:>5g} {100 * iou.mean():>6.2f}  {' '.join(f'{100 * v:.1f}' for v in iou)}", flush=True)


if __name__ == "__main__":
    main()
