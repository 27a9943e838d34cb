"""Pixel agreement of edgeseg's models with an official .tflite, on every frame of a split.

Separates an import error from quantization: the PyTorch FP32 import differs from the official per-tensor
file by the file's 8-bit rounding, while an edgeseg per-tensor export of the same import, with the official
file's learned activation ranges, should agree with it almost everywhere.

    edgeseg export --model deeplab_edgetpu_slim_cityscapes --target imx8mp --output-kind argmax \\
        --activation-ranges qat --data ../shared/camvid -o /tmp/edgetpu_qat.tflite
    .venv/bin/python bench/agreement.py --model deeplab_edgetpu_slim_cityscapes /tmp/edgetpu_qat.tflite
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeseg.data.datasets import open_images
from edgeseg.pipeline import load_image, segment
from edgeseg.runtimes.factory import open_model
from edgeseg.zoo.build import official_tflite

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "camvid"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tflite", nargs="*", type=Path, help="edgeseg exports to compare as well")
    parser.add_argument("--model", default="deeplab_edgetpu_slim_cityscapes", help="zoo model")
    parser.add_argument("--data", type=Path, default=CAMVID)
    parser.add_argument("--split", default="val")
    args = parser.parse_args()
    official = open_model(tflite=official_tflite(args.model)).runtime
    others = {"PyTorch FP32 import": open_model(args.model, backend="torch").runtime}
    others.update({str(path): open_model(tflite=path).runtime for path in args.tflite})
    paths, description = open_images(args.data, args.split)
    same, total = dict.fromkeys(others, 0), 0
    for path in paths:
        pixels = load_image(path)
        reference = segment(pixels, official)
        total += reference.size
        for name, runtime in others.items():
            same[name] += int((segment(pixels, runtime) == reference).sum())
    for name in others:
        print(f"{name}: {100 * same[name] / total:.2f}% of the pixels of {len(paths)} frames of {description} "
              f"agree with the official file")


if __name__ == "__main__":
    main()
