"""Video files and cameras (the `video` extra: PyAV), segmented as a pipeline.

Three stages overlap: a decoder thread reads frames into a bounded queue, the calling thread runs the
model, and an encoder thread blends and encodes the overlays. Queues are FIFO and there is one worker per
stage, so frame order is kept; no frame is dropped unless `every` asks. The output is written to a temp
name beside the target and renamed when complete: an error leaves nothing, Ctrl-C leaves a playable file
with the frames encoded so far.
"""

from __future__ import annotations

import os
import queue
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from edgeseg.errors import EdgesegError

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".wmv",
                            ".flv", ".3gp", ".ogv"})
STAGES = ("decode", "preprocess", "invoke", "postprocess", "overlay", "encode")
_DONE = object()  # end-of-stream marker in the queues


def require_av():
    """Returns the `av` module, or raises a one-line error naming the extra that installs it."""
    try:
        import av
    except ImportError:
        raise EdgesegError("video needs PyAV: pip install 'edgeseg[video]'") from None
    return av


def is_video(path: str | os.PathLike) -> bool:
    """True if the file name has a video suffix (.mp4, .mov, .avi, .mkv, .webm, ...)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def camera_device(camera: str | int) -> str:
    """Returns the device for a camera index ("0" -> /dev/video0), or the path / URL unchanged."""
    text = str(camera)
    return f"/dev/video{text}" if text.isdigit() else text


def _first_line(exc: BaseException) -> str:
    """The reason without FFmpeg's errno and file name: "Invalid data found when processing input"."""
    reason = getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return reason[0].lower() + reason[1:] if reason[:2].istitle() else reason


class VideoInput:
    """An opened video file, camera or stream. Use as a context manager; iterate with `frames()`."""

    def __init__(self, source: str | os.PathLike | int, *, camera: bool = False) -> None:
        av = require_av()
        self.camera = camera or isinstance(source, int) or str(source).startswith("/dev/video")
        self.source = camera_device(source) if self.camera else str(source)
        options: dict = {}
        if self.camera and self.source.startswith("/dev/"):
            if not Path(self.source).exists():
                raise EdgesegError(f"camera {self.source} not found (no such device)")
            options["format"] = "v4l2"
        elif "://" not in self.source:
            path = Path(self.source)
            if not path.exists():
                raise EdgesegError(f"{path}: no such file")
            if path.is_dir():
                raise EdgesegError(f"{path}: a folder, not a video")
        try:
            self.container = av.open(self.source, **options, timeout=10.0)
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            what = "camera" if self.camera else "video"
            raise EdgesegError(f"{self.source}: cannot open {what} ({_first_line(exc)})") from None
        if not self.container.streams.video:
            self.container.close()
            raise EdgesegError(f"{self.source}: no video stream in this file")
        self.stream = self.container.streams.video[0]  # FFmpeg's default threading: frame threads cost CPU
        context = self.stream.codec_context
        self.width, self.height = int(context.width), int(context.height)
        if self.width < 1 or self.height < 1:
            self.container.close()
            raise EdgesegError(f"{self.source}: cannot read the video's frame size (unsupported codec?)")
        rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
        self.fps = Fraction(rate) if rate else Fraction(30)
        self.frame_count = int(self.stream.frames or 0)  # 0 when the container does not say
        self.decode_ms: list[float] = []

    def __enter__(self) -> VideoInput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the file or device."""
        self.container.close()

    def expected_frames(self, every: int = 1, max_frames: int | None = None) -> int | None:
        """Returns how many frames `frames(every, max_frames)` will yield, if the container says."""
        total = -(-self.frame_count // every) if self.frame_count else None
        if max_frames is not None:
            total = max_frames if total is None else min(total, max_frames)
        return total

    def frames(self, every: int = 1, max_frames: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yields (frame index in the source, uint8 RGB (H, W, 3)): every `every`-th frame, at most
        `max_frames` of them. Decoding runs in a background thread, a few frames ahead."""
        if every < 1:
            raise EdgesegError(f"every must be at least 1, got {every}")
        frames: queue.Queue = queue.Queue(maxsize=4)
        stop = threading.Event()
        worker = threading.Thread(target=self._decode, args=(frames, stop, every, max_frames), daemon=True)
        worker.start()
        try:
            while True:
                item = frames.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while worker.is_alive():  # unblock a decoder waiting on a full queue
                try:
                    frames.get(timeout=0.05)
                except queue.Empty:
                    pass
            worker.join()

    def _decode(self, frames: queue.Queue, stop: threading.Event, every: int, max_frames: int | None) -> None:
        av = require_av()
        kept = 0
        try:
            start = time.perf_counter()
            for index, frame in enumerate(self.container.decode(self.stream)):
                if stop.is_set() or (max_frames is not None and kept >= max_frames):
                    break
                if index % every:
                    continue
                pixels = frame.to_ndarray(format="rgb24")
                self.decode_ms.append((time.perf_counter() - start) * 1000)
                if pixels.shape[:2] != (self.height, self.width):
                    raise EdgesegError(f"{self.source}: frame {index} changes size to "
                                       f"{pixels.shape[1]}x{pixels.shape[0]}; expected {self.width}x{self.height}")
                kept += 1
                _put(frames, (index, pixels), stop)
                start = time.perf_counter()
            if kept == 0 and not stop.is_set():
                raise EdgesegError(f"{self.source}: no frame could be decoded")
        except EdgesegError as exc:
            _put(frames, exc, stop)
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            _put(frames, EdgesegError(f"{self.source}: cannot decode video ({_first_line(exc)})"), stop)
        except BaseException as exc:  # anything else still reaches the caller, not a silent thread death
            _put(frames, exc, stop)
        _put(frames, _DONE, stop)


def _put(target: queue.Queue, item: object, stop: threading.Event) -> None:
    """Puts into a bounded queue, giving up when `stop` is set (the consumer has gone)."""
    while not stop.is_set():
        try:
            target.put(item, timeout=0.05)
            return
        except queue.Full:
            continue


def open_video(source: str | os.PathLike | int, *, camera: bool = False) -> VideoInput:
    """Opens a video file, a camera (an index such as 0, or a device path with camera=True) or a URL."""
    return VideoInput(source, camera=camera)


class VideoWriter:
    """Writes RGB frames to an H.264 .mp4 (yuv420p, playable anywhere) under a temp name.

    `commit()` renames it to the target; `abort()` deletes it. Odd frame sizes are padded by one pixel
    (H.264 4:2:0 needs even sides).
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: Fraction) -> None:
        from edgeseg.files import check_output_file

        av = require_av()
        self.path = check_output_file(path)
        try:
            # the writer's pid in the name: files.remove_stale_parts removes it if this process is killed
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.stem}.{os.getpid()}.",
                                       suffix=".part.mp4")
        except OSError as exc:
            raise EdgesegError(f"cannot write in {self.path.parent} ({exc.strerror})") from None
        os.close(fd)
        self.tmp = Path(tmp)
        self.frames_written = 0
        self.pad = (height % 2, width % 2)
        try:
            self.container = av.open(str(self.tmp), mode="w", format="mp4")
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            self.stream = self.container.add_stream(codec, rate=fps)
            self.stream.width, self.stream.height = width + self.pad[1], height + self.pad[0]
            self.stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                # Fast and light on CPU: the model, not the encoder, should use the cores.
                self.stream.options = {"preset": "ultrafast", "crf": "23", "threads": "1"}
            else:
                self.stream.codec_context.thread_count = 1
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            self.abort()
            raise EdgesegError(f"cannot write video {self.path} ({_first_line(exc)})") from None

    def write(self, pixels: np.ndarray | Image.Image) -> None:
        """Encodes one RGB frame: a uint8 array (H, W, 3) or a PIL RGB image."""
        av = require_av()
        if isinstance(pixels, Image.Image):
            pixels = np.asarray(pixels)
        if any(self.pad):
            pixels = np.pad(pixels, ((0, self.pad[0]), (0, self.pad[1]), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
        frame.pts = self.frames_written
        try:
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
        except (av.error.FFmpegError, OSError) as exc:
            raise EdgesegError(f"cannot write video {self.path} ({_first_line(exc)})") from None
        self.frames_written += 1

    def commit(self) -> Path:
        """Flushes the encoder, closes the file and renames it to the target path."""
        av = require_av()
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()
            os.chmod(self.tmp, 0o666 & ~_umask())
            os.replace(self.tmp, self.path)
        except (av.error.FFmpegError, OSError) as exc:
            self.abort()
            raise EdgesegError(f"cannot write video {self.path} ({_first_line(exc)})") from None
        from edgeseg.files import remove_stale_parts

        remove_stale_parts(self.path.parent, force=True)
        return self.path

    def abort(self) -> None:
        """Closes and deletes the temp file; the target is left as it was."""
        try:
            container = getattr(self, "container", None)
            if container is not None:
                container.close()
        except Exception:  # noqa: BLE001 - closing a broken file must not hide the original error
            pass
        self.tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@dataclass
class VideoStats:
    """What a processed video reports: frames, wall time, and per-stage times (ms per frame)."""

    source: str
    output: Path | None
    frames: int
    seconds: float
    stage_ms: dict[str, list[float]] = field(default_factory=dict)
    shares: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def medians(self) -> dict[str, float]:
        """Returns the median ms of each stage that ran."""
        return {stage: float(np.median(ms)) for stage, ms in self.stage_ms.items() if ms}

    def summary(self) -> str:
        """One line: frames, fps and the median of each stage."""
        stages = ", ".join(f"{stage} {ms:.1f}" for stage, ms in self.medians().items())
        return f"{self.frames} frames in {self.seconds:.2f} s, {self.fps:.1f} fps; median ms per frame: {stages}"


def output_name(source: str, camera: bool) -> str:
    """Returns the output stem for a video or camera: drive.mp4 -> drive, /dev/video0 -> camera0."""
    if camera:
        match = re.search(r"(\d+)$", source)
        return f"camera{match.group(1)}" if match else "camera"
    return Path(source).stem


def segment_video(
    video: VideoInput, runtime, output: str | os.PathLike, class_names: tuple[str, ...], *, every: int = 1,
    max_frames: int | None = None, progress: bool = True, on_frame: Callable[[int, np.ndarray], None] | None = None,
) -> VideoStats:
    """Segments a video or camera stream and writes its overlay video to `output`, pipelined.

    On KeyboardInterrupt the frames already segmented are encoded and the file is committed (playable),
    and stats.interrupted is set. Any error removes the partial file and raises EdgesegError.
    """
    from tqdm import tqdm

    from edgeseg.api import blend_image
    from edgeseg.pipeline import fit_for, restore_size

    out_fps = video.fps / every
    writer = VideoWriter(output, video.width, video.height, out_fps)
    stats = VideoStats(video.source, writer.path, 0, 0.0, {stage: [] for stage in STAGES})
    counts = np.zeros(256, dtype=np.int64)
    results: queue.Queue = queue.Queue(maxsize=4)
    failure: list[BaseException] = []

    def encode() -> None:
        while True:
            item = results.get()
            if item is _DONE:
                return
            if failure:
                continue  # keep draining so the producer never blocks
            pixels, labels = item
            try:
                start = time.perf_counter()
                blended = blend_image(pixels, labels, class_names=class_names)
                mid = time.perf_counter()
                writer.write(blended)
                stats.stage_ms["overlay"].append((mid - start) * 1000)
                stats.stage_ms["encode"].append((time.perf_counter() - mid) * 1000)
                bar.update(1)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                failure.append(exc)

    bar = tqdm(total=video.expected_frames(every, max_frames), unit="frame", disable=not progress,
               desc=Path(video.source).name, leave=False)
    encoder = threading.Thread(target=encode, daemon=True)
    encoder.start()
    began = time.perf_counter()
    has_steps = all(hasattr(runtime, name) for name in ("set_input", "invoke", "get_labels", "lock"))
    frames = video.frames(every=every, max_frames=max_frames)
    try:
        for index, pixels in frames:
            if failure:
                break
            t0 = time.perf_counter()
            fitted = fit_for(pixels, runtime)
            if has_steps:  # LiteRT: time each step, holding the runtime against other threads' calls
                with runtime.lock:
                    runtime.set_input(fitted)
                    t1 = time.perf_counter()
                    runtime.invoke()
                    t2 = time.perf_counter()
                    labels = runtime.get_labels(*fitted.shape[:2])
            else:
                t1 = time.perf_counter()
                labels = runtime.predict(fitted)
                t2 = time.perf_counter()
            labels = restore_size(labels, video.height, video.width)
            t3 = time.perf_counter()
            stats.stage_ms["preprocess"].append((t1 - t0) * 1000)
            stats.stage_ms["invoke"].append((t2 - t1) * 1000)
            stats.stage_ms["postprocess"].append((t3 - t2) * 1000)
            counts += np.bincount(labels.reshape(-1), minlength=256)[:256]
            if on_frame is not None:
                on_frame(index, labels)
            results.put((pixels, labels))
            stats.frames += 1
    except KeyboardInterrupt:
        stats.interrupted = True
    except BaseException:
        results.put(_DONE)
        encoder.join()
        bar.close()
        writer.abort()
        raise
    finally:
        frames.close()  # stops the decoder thread
    results.put(_DONE)
    try:
        encoder.join()
    except KeyboardInterrupt:  # a second Ctrl-C while the last frames are encoded
        stats.interrupted = True
        encoder.join()
    bar.close()
    stats.seconds = time.perf_counter() - began
    if failure:
        writer.abort()
        error = failure[0]
        raise error if isinstance(error, EdgesegError) else EdgesegError(f"encoding failed ({_first_line(error)})")
    stats.frames = writer.frames_written
    if stats.frames == 0:
        writer.abort()
        if stats.interrupted:
            raise KeyboardInterrupt
        raise EdgesegError(f"{video.source}: no frame was segmented")
    writer.commit()
    stats.stage_ms["decode"] = list(video.decode_ms)
    total = counts.sum()
    names = list(class_names) + [f"class_{i}" for i in range(len(class_names), 256)]
    stats.shares = {names[i]: round(float(counts[i] / total), 6)
                    for i in np.argsort(-counts, kind="stable") if counts[i] > 0}
    return stats
