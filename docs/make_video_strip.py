"""Makes docs/video_strip.png: four frames of `edgeseg predict clip.mp4`'s overlay video, side by side.

The clip is 20 consecutive CamVid frames (0016E5 sequence, frames 128-147 of the shared train split, 480x360,
encoded here with PyAV); the strip shows output frames 0, 6, 12 and 18 at half size.

    .venv/bin/python docs/make_video_strip.py
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import av
import numpy as np
from PIL import Image

from edgeseg.cli import main

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "camvid" / "train" / "images"
os.environ.setdefault("EDGESEG_MIRROR", str(REPO.parent / "shared" / "models"))


def run() -> Path:
    work = Path(tempfile.mkdtemp(prefix="video-strip-"))
    names = sorted(CAMVID.glob("0016E5_*.jpg"))[128:148]
    clip = work / "drive.mp4"
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 480, 360, "yuv420p"
        for name in names:
            frame = av.VideoFrame.from_ndarray(np.asarray(Image.open(name).convert("RGB")), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert main(["predict", str(clip), "-o", str(work), "--threads", "2"]) == 0
    with av.open(str(work / "drive_overlay.mp4")) as container:
        frames = [f.to_image() for f in container.decode(video=0)]
    picked = [frames[i].resize((240, 180), Image.LANCZOS) for i in (0, 6, 12, 18)]
    strip = Image.new("RGB", (4 * 240 + 3 * 4, 180), "white")
    for i, frame in enumerate(picked):
        strip.paste(frame, (i * 244, 0))
    out = REPO / "docs" / "video_strip.png"
    strip.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return out


if __name__ == "__main__":
    print(f"wrote {run()}")
