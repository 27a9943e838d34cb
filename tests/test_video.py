"""Video files and cameras through `edgeseg predict` (extra `video`: PyAV). The clip is built here from
consecutive CamVid frames (0016E5 sequence, 480x360), so nothing large lives in the repo."""

import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeseg.cli import main

av = pytest.importorskip("av")

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "camvid" / "train" / "images"
FRAMES = 12


def _write_clip(path: Path, frames: list[np.ndarray], rate: int = 30) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _read(path: Path) -> tuple[list[np.ndarray], Fraction]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [f.to_ndarray(format="rgb24") for f in container.decode(stream)], stream.average_rate


@pytest.fixture(scope="module")
def camvid_frames() -> list[np.ndarray]:
    names = sorted(CAMVID.glob("0016E5_*.jpg"))[:FRAMES]
    return [np.asarray(Image.open(p).convert("RGB")) for p in names]


@pytest.fixture(scope="module")
def clip(tmp_path_factory, camvid_frames) -> Path:
    path = tmp_path_factory.mktemp("video") / "drive.mp4"
    _write_clip(path, camvid_frames)
    return path


def _no_leftovers(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".part")]


def test_video_gives_an_overlay_video_of_the_same_size_rate_and_frame_count(clip, camvid_frames, tmp_path,
                                                                             capsys):
    out = tmp_path / "out"
    assert main(["predict", str(clip), "-o", str(out), "--threads", "2", "--json", str(out / "r.json")]) == 0
    printed = capsys.readouterr().out
    assert "12 frames in" in printed and " fps; median ms per frame: decode" in printed
    for stage in ("preprocess", "invoke", "postprocess", "encode"):
        assert f"{stage} " in printed
    assert "[deeplabv3_mnv2_dm05_voc, litert]" in printed
    frames, rate = _read(out / "drive_overlay.mp4")
    assert len(frames) == FRAMES and rate == 30 and frames[0].shape == (360, 480, 3)
    # Order kept: output frame i looks like input frame i (the overlay leaves background pixels as they were).
    for i, frame in enumerate(frames):
        distance = [np.abs(frame.astype(int) - source).mean() for source in camvid_frames]
        assert int(np.argmin(distance)) == i
    assert _no_leftovers(out)
    assert '"backend": "litert"' in (out / "r.json").read_text()


def test_every_and_max_frames(clip, tmp_path, capsys):
    assert main(["predict", str(clip), "-o", str(tmp_path), "--every", "3", "--max-frames", "3",
                 "--frame-labels", "--no-progress"]) == 0
    frames, rate = _read(tmp_path / "drive_overlay.mp4")
    assert len(frames) == 3 and rate == 10  # every 3rd frame: a third of the frame rate, same duration
    assert sorted(p.name for p in (tmp_path / "drive_labels").iterdir()) == ["000000.png", "000003.png",
                                                                              "000006.png"]


def test_ctrl_c_keeps_a_playable_file_with_the_frames_so_far(clip, tmp_path, capsys, monkeypatch):
    from edgeseg.runtimes.litert import LiteRTRuntime

    calls = []
    invoke = LiteRTRuntime.invoke

    def interrupted_invoke(self):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        invoke(self)

    monkeypatch.setattr(LiteRTRuntime, "invoke", interrupted_invoke)
    assert main(["predict", str(clip), "-o", str(tmp_path), "--no-progress"]) == 130
    captured = capsys.readouterr()
    assert "interrupted: 4 frames" in captured.out and "Traceback" not in captured.err
    frames, _ = _read(tmp_path / "drive_overlay.mp4")
    assert len(frames) == 4 and _no_leftovers(tmp_path)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "audio only"])
def test_bad_video_is_one_line_and_leaves_nothing(kind, clip, tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    if kind == "garbage":
        bad.write_bytes(b"not a video at all" * 100)
    elif kind == "truncated":
        bad.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    else:
        with av.open(str(bad), "w") as container:
            stream = container.add_stream("aac", rate=8000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 8000
            for packet in [*stream.encode(frame), *stream.encode()]:
                container.mux(packet)
    out = tmp_path / "out"
    assert main(["predict", str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgeseg: error: ") and err.count("\n") == 1 and "bad.mp4" in err
    assert not list(out.rglob("*"))


def test_unwritable_output_is_one_line_before_any_work(clip, tmp_path, capsys):
    (tmp_path / "drive_overlay.mp4").mkdir()
    assert main(["predict", str(clip), "-o", str(tmp_path)]) == 2
    assert "is a folder; expected a file name" in capsys.readouterr().err
    assert _no_leftovers(tmp_path)


def test_missing_camera_and_missing_extra_are_one_line(tmp_path, capsys, monkeypatch):
    assert main(["predict", "--camera", "7", "-o", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "edgeseg: error: camera /dev/video7 not found (no such device)\n"
    monkeypatch.setitem(sys.modules, "av", None)  # as if the `video` extra were not installed
    assert main(["predict", "--camera", "0", "-o", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "edgeseg: error: video needs PyAV: pip install 'edgeseg[video]'\n"


def test_api_stream_yields_frames_in_order(clip, camvid_frames):
    import edgeseg

    seg = edgeseg.Segmenter(threads=2)
    got = list(seg.stream(clip, every=2, max_frames=3))
    assert len(got) == 3 and all(r.labels.shape == (360, 480) and r.backend == "litert" for _, r in got)
    for (frame, _), source in zip(got, camvid_frames[::2]):
        assert np.abs(frame.astype(int) - source).mean() < 8  # decoded frame i is source frame i


def test_folder_keeps_its_layout_and_json_names_model_and_backend(tmp_path, capsys):
    import json

    photos = tmp_path / "photos"
    (photos / "day" / "2").mkdir(parents=True)
    names = sorted(CAMVID.glob("0016E5_*.jpg"))[:3]
    Image.open(names[0]).save(photos / "a.jpg")
    Image.open(names[1]).save(photos / "day" / "b.png")
    Image.open(names[2]).save(photos / "day" / "2" / "c.jpg")
    (photos / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert main(["predict", str(photos), "-o", str(out), "--json", str(tmp_path / "r.json")]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["a_labels.png", "a_overlay.png"]
    assert main(["predict", str(photos), "--recursive", "-o", str(out), "--json", str(tmp_path / "r.json")]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*_overlay.png")) == [
        "a_overlay.png", "day/2/c_overlay.png", "day/b_overlay.png"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["model"], report["backend"]) == ("deeplabv3_mnv2_dm05_voc", "litert")
    assert len(report["files"]) == 3 and abs(sum(report["files"][0]["shares"].values()) - 1) < 1e-3
    capsys.readouterr()
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty")]) == 2
    assert "no images or videos in it" in capsys.readouterr().err


def test_an_image_on_standard_input(tmp_path, capsys, monkeypatch):
    import io

    image = sorted(CAMVID.glob("0016E5_*.jpg"))[0]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(image.read_bytes())))
    assert main(["predict", "-", "-o", str(tmp_path)]) == 0
    assert "-: background" in capsys.readouterr().out and (tmp_path / "stdin_overlay.png").is_file()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"garbage")))
    assert main(["predict", "-", "-o", str(tmp_path / "x")]) == 2
    assert "standard input: cannot read image (7 bytes, no known image format)" in capsys.readouterr().err


# Reliability, round 3 ----------------------------------------------------------------------------------

def _write_timed_clip(path: Path, frames: list[np.ndarray], times_ms: list[int], end_ms: int) -> None:
    """A variable-frame-rate clip: frame i shown from times_ms[i] until the next one, the last until end_ms."""
    ends = [*times_ms[1:], end_ms]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.options = {"preset": "ultrafast"}
        stream.codec_context.time_base = Fraction(1, 1000)
        durations = {}
        for pixels, at, end in zip(frames, times_ms, ends):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, durations[at] = at, end - at
            for packet in stream.encode(frame):
                packet.duration = durations[packet.pts]
                container.mux(packet)
        for packet in stream.encode():
            packet.duration = durations[packet.pts]
            container.mux(packet)


def _timing(path: Path) -> tuple[float, list[float]]:
    """(duration in seconds, each frame's presentation time) as a player reads them."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = [float(frame.time) for frame in container.decode(stream)]
        return float(stream.duration * stream.time_base), times


@pytest.mark.parametrize("every, kept", [(1, [0, 1, 2, 3, 4, 5, 6, 7]), (3, [0, 3, 6])])
def test_variable_frame_rate_keeps_each_frames_time(every, kept, camvid_frames, tmp_path, capsys):
    # A 2.12 s clip of uneven frame times came out as 0.625 s at a constant 24 fps: now every overlay frame is
    # shown when its source frame was, and the overlay lasts as long as the source (with --every too).
    times_ms = [0, 40, 100, 400, 420, 1000, 1500, 2000]
    clip = tmp_path / "vfr.mp4"
    _write_timed_clip(clip, [f[::3, ::3] for f in camvid_frames[:8]], times_ms, 2120)
    source_duration, source_times = _timing(clip)
    assert abs(source_duration - 2.12) < 0.002 and source_times == pytest.approx([t / 1000 for t in times_ms])
    assert main(["predict", str(clip), "-o", str(tmp_path / "out"), "--no-progress", "--every", str(every)]) == 0
    duration, times = _timing(tmp_path / "out" / "vfr_overlay.mp4")
    assert times == pytest.approx([source_times[i] for i in kept], abs=0.002)
    assert duration == pytest.approx(source_duration, abs=0.002)


def _split_clip(path: Path, degrees: float, hflip: bool = False) -> None:
    """Two 96x64 frames, dark on the left, bright on the right, a red mark in the top-left corner, written
    with a display matrix (PyAV: `degrees` counter-clockwise, then the mirror)."""
    pixels = np.full((64, 96, 3), 40, np.uint8)
    pixels[:, 48:] = 220
    pixels[:8, :8] = (255, 0, 0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.set_display_rotation(degrees, hflip=hflip)
        for _ in range(2):
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# (display rotation, mirror) -> the overlay's shape, where the dark half goes, where the red mark goes
ROTATIONS = [(-90, False, (96, 64), "top", "top right"),  # "rotate 90" (clockwise), as phones write it
             (90, False, (96, 64), "bottom", "bottom left"), (180, False, (64, 96), "right", "bottom right"),
             (0, True, (64, 96), "right", "top right")]


@pytest.mark.parametrize("degrees, hflip, shape, dark, red", ROTATIONS)
def test_display_rotation_is_applied(degrees, hflip, shape, dark, red, tmp_path, capsys):
    # Phones store portrait video as landscape frames plus a display matrix: the overlay was sideways.
    clip = tmp_path / "phone.mp4"
    _split_clip(clip, degrees, hflip)
    out = tmp_path / "out"
    assert main(["predict", str(clip), "-o", str(out), "--no-progress", "--frame-labels"]) == 0
    frames, _ = _read(out / "phone_overlay.mp4")
    frame = frames[0].astype(int)
    assert frame.shape == (*shape, 3)
    assert np.asarray(Image.open(out / "phone_labels" / "000000.png")).shape == shape
    grey, (h, w) = frame.mean(axis=2), shape
    halves = {"top": grey[: h // 2], "bottom": grey[h // 2:], "left": grey[:, : w // 2], "right": grey[:, w // 2:]}
    other = {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}[dark]
    assert halves[dark].mean() < 100 < halves[other].mean()  # dark stays dark where the display puts it
    rows, cols = np.nonzero((frame[..., 0] > 150) & (frame[..., 1] < 100))
    assert {"top": rows.mean() < h / 4, "bottom": rows.mean() > 3 * h / 4}[red.split()[0]]
    assert {"left": cols.mean() < w / 4, "right": cols.mean() > 3 * w / 4}[red.split()[1]]
    from edgeseg.io.video import open_video

    with open_video(clip) as video:
        assert (video.height, video.width) == shape  # the size reported is the one shown


@pytest.mark.parametrize("gap", [0.01, 0.05, 0.1])
def test_a_second_ctrl_c_still_leaves_a_playable_video_and_the_report(gap, camvid_frames, tmp_path):
    # Two Ctrl-C 0.05 s apart left an unplayable .part.mp4 and label maps without their video, and no JSON.
    import json
    import signal
    import subprocess
    import time

    clip = tmp_path / "long.mp4"
    _write_clip(clip, [f[::2, ::2] for f in camvid_frames] * 5)  # 60 frames: seconds of work
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-m", "edgeseg.cli", "predict", str(clip), "-o", str(out),
                              "--threads", "2", "--frame-labels", "--no-progress", "--json", str(out / "r.json")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(list((out / "long_labels").glob("*.png"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        child.send_signal(signal.SIGINT)
        time.sleep(gap)
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130 and "Traceback" not in stderr and stderr.endswith("edgeseg: interrupted\n"), stderr
    frames, _ = _read(out / "long_overlay.mp4")
    report = json.loads((out / "r.json").read_text())["files"][0]
    assert report["interrupted"] and report["frames"] == len(frames) and 3 <= len(frames) < 60
    assert "interrupted: " in stdout and _no_leftovers(out)
