"""Video files and cameras (the `video` extra: PyAV), segmented as a pipeline.

Three stages overlap: a decoder thread reads frames into a bounded queue, the calling thread runs the
model, and an encoder thread blends and encodes the overlays. Queues are FIFO and there is one worker per
stage, so frame order is kept; no frame is dropped unless `every` asks. Frames are turned upright as the
container's display matrix says (a phone's "rotate 90"), and each keeps its presentation time: the overlay
has the source's timing, variable frame rates included. The output is written to a temp name beside the
target and renamed when complete: an error leaves nothing, Ctrl-C leaves a playable file with the frames
encoded so far.
"""

from __future__ import annotations

import math
import os
import queue
import re
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from numbers import Integral
from pathlib import Path

import numpy as np
from PIL import Image

from edgeseg.errors import EdgesegError

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".wmv",
                            ".flv", ".3gp", ".ogv"})
STAGES = ("decode", "preprocess", "invoke", "postprocess", "overlay", "encode")
_DONE = object()  # end-of-stream marker in the queues
MAX_TIME_BASE = 1_000_000  # finer source time bases are written at 1/90000 s (mp4 holds 32-bit frame durations)


@dataclass(frozen=True)
class _End:
    """The decoder's last item before _DONE: where the last kept frame ends (seconds from the first frame)."""

    at: Fraction | None


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
    if not text.strip():  # "" would be the current folder
        raise EdgesegError("the camera name is empty: give an index (0 = /dev/video0), a device path or a "
                           "stream URL")
    return f"/dev/video{text}" if text.isdigit() else text


def check_frame_options(every: object, max_frames: object) -> None:
    """Raises one line unless `every` is a whole number >= 1 and `max_frames` is None or one."""
    for name, value in (("every", every), ("max_frames", max_frames)):
        if value is None and name == "max_frames":
            continue
        if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
            raise EdgesegError(f"{name} must be a whole number of at least 1, got {value!r}")


def display_orientation(matrix: tuple[int, ...] | None) -> str:
    """Returns how to turn a decoded frame upright for its display matrix (9 int32, 16.16 fixed point), as
    FFmpeg's autorotate does: "", "clock", "cclock", "clock_flip", "cclock_flip", "hflip", "vflip" or
    "hflip,vflip". Angles that are not a multiple of 90 degrees are left as decoded."""
    if matrix is None:
        return ""
    scale = (math.hypot(matrix[0], matrix[3]), math.hypot(matrix[1], matrix[4]))
    if not all(scale):
        return ""
    rotation = -math.degrees(math.atan2(matrix[1] / scale[1], matrix[0] / scale[0]))  # av_display_rotation_get
    theta = -round(rotation)
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        return "cclock_flip" if matrix[3] > 0 else "clock"
    if abs(theta - 180) < 1:
        return ",".join(name for name, flip in (("hflip", matrix[0] < 0), ("vflip", matrix[4] < 0)) if flip)
    if abs(theta - 270) < 1:
        return "clock_flip" if matrix[3] < 0 else "cclock"
    return "vflip" if abs(theta) < 1 and matrix[4] < 0 else ""


def turn_upright(pixels: np.ndarray, orientation: str) -> np.ndarray:
    """Applies a `display_orientation` to (H, W, C) pixels."""
    if orientation == "clock":
        return np.ascontiguousarray(np.rot90(pixels, -1))
    if orientation == "cclock":
        return np.ascontiguousarray(np.rot90(pixels, 1))
    if orientation == "cclock_flip":  # FFmpeg's transpose=cclock_flip: the transpose proper
        return np.ascontiguousarray(pixels.transpose(1, 0, 2))
    if orientation == "clock_flip":
        return np.ascontiguousarray(np.rot90(pixels, -1)[::-1])
    if "hflip" in orientation:
        pixels = pixels[:, ::-1]
    if "vflip" in orientation:
        pixels = pixels[::-1]
    return np.ascontiguousarray(pixels)


def _display_matrix(frame) -> tuple[int, ...] | None:
    data = frame.side_data.get("DISPLAYMATRIX")
    return struct.unpack("<9i", bytes(data)[:36]) if data is not None and len(bytes(data)) >= 36 else None


def _first_line(exc: BaseException) -> str:
    """The reason without FFmpeg's errno and file name: "Invalid data found when processing input"."""
    reason = getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return reason[0].lower() + reason[1:] if reason[:2].istitle() else reason


class VideoInput:
    """An opened video file, camera or stream. Use as a context manager; iterate with `frames()`."""

    def __init__(self, source: str | os.PathLike | int, *, camera: bool = False) -> None:
        av = require_av()
        self.camera = camera or isinstance(source, int) or str(source).startswith("/dev/video")
        if not self.camera and not str(source).strip():  # "" would be the current folder
            raise EdgesegError("the video path is empty")
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
        self.time_base: Fraction | None = self.stream.time_base
        self.frame_count = int(self.stream.frames or 0)  # 0 when the container does not say
        self.decode_ms: list[float] = []
        self.end_time: Fraction | None = None  # set when frames() has yielded the last frame it will
        self._decoded = self.container.decode(self.stream)
        self._first = self._peek()
        # The first frame's display matrix says how the video is shown (a phone's "rotate 90"): frames are
        # turned that way, and width and height are those shown.
        self.orientation = display_orientation(_display_matrix(self._first))
        if self.orientation in ("clock", "cclock", "clock_flip", "cclock_flip"):
            self.width, self.height = self.height, self.width
        self._start = self._time(self._first, None)

    def _peek(self):
        """Decodes the first frame (kept for frames()); a file with none is one line."""
        av = require_av()
        start = time.perf_counter()
        try:
            frame = next(self._decoded)
        except StopIteration:
            self.container.close()
            raise EdgesegError(f"{self.source}: no frame could be decoded") from None
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            self.container.close()
            raise EdgesegError(f"{self.source}: cannot decode video ({_first_line(exc)})") from None
        except BaseException:
            self.container.close()
            raise
        self._first_ms = (time.perf_counter() - start) * 1000
        return frame

    def _time(self, frame, previous: Fraction | None) -> Fraction:
        """The frame's presentation time in seconds (from its pts), or one nominal frame after `previous`."""
        if frame.pts is not None and frame.time_base:
            return frame.pts * Fraction(frame.time_base)
        return Fraction(0) if previous is None else previous + 1 / self.fps

    def _span(self, frame) -> Fraction:
        """How long the frame is shown: its own duration, else one nominal frame."""
        if frame.duration and frame.time_base:
            return frame.duration * Fraction(frame.time_base)
        return 1 / self.fps

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
        """Yields (frame index in the source, uint8 RGB (H, W, 3), upright): every `every`-th frame, at most
        `max_frames` of them. Decoding runs in a background thread, a few frames ahead."""
        timed = self.timed_frames(every, max_frames)
        try:
            for index, _, pixels in timed:
                yield index, pixels
        finally:
            timed.close()  # stops the decoder thread now, not when the generator is collected

    def timed_frames(self, every: int = 1, max_frames: int | None = None, until: threading.Event | None = None,
                     ) -> Iterator[tuple[int, Fraction, np.ndarray]]:
        """As `frames`, with each frame's presentation time in seconds from the first frame:
        (index, time, pixels). Once the last frame is yielded, `end_time` says when it ends: at the
        next frame `every` would keep, or at the end of the stream. Setting `until` ends the iteration
        even while a camera sends nothing."""
        check_frame_options(every, max_frames)
        self.end_time = None
        frames: queue.Queue = queue.Queue(maxsize=4)
        stop = threading.Event()
        worker = threading.Thread(target=self._decode, args=(frames, stop, every, max_frames), daemon=True)
        worker.start()
        try:
            while True:
                try:
                    item = frames.get(timeout=0.1)
                except queue.Empty:
                    if until is not None and until.is_set():
                        return
                    continue
                if item is _DONE:
                    return
                if isinstance(item, _End):
                    self.end_time = item.at
                    continue
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

    def _frames(self) -> Iterator:
        """The decoded frames: the one peeked at when the video was opened, then the rest."""
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        yield from self._decoded

    def _decode(self, frames: queue.Queue, stop: threading.Event, every: int, max_frames: int | None) -> None:
        av = require_av()
        kept, at, end = 0, None, None
        try:
            start = time.perf_counter()
            for index, frame in enumerate(self._frames()):
                if stop.is_set():
                    break
                at = self._time(frame, at)
                end = at + self._span(frame)  # at the end of the stream, the last kept frame lasts until here
                if index % every:
                    continue
                pixels = turn_upright(frame.to_ndarray(format="rgb24"), self.orientation)
                elapsed = (time.perf_counter() - start) * 1000
                self.decode_ms.append(elapsed + (self._first_ms if index == 0 else 0.0))
                if pixels.shape[:2] != (self.height, self.width):
                    raise EdgesegError(f"{self.source}: frame {index} changes size to "
                                       f"{pixels.shape[1]}x{pixels.shape[0]}; expected {self.width}x{self.height}")
                kept += 1
                _put(frames, (index, at - self._start, pixels), stop)
                if max_frames is not None and kept >= max_frames:
                    end = at + self._span(frame) * every  # where the next kept frame would start
                    break
                start = time.perf_counter()
            if kept == 0 and not stop.is_set():
                raise EdgesegError(f"{self.source}: no frame could be decoded")
            if not stop.is_set():
                _put(frames, _End(None if end is None else end - self._start), stop)
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

    Each frame is shown at the time given to `write` (seconds; by default one 1/fps after the last), until
    the next frame's, the last one until the `end` given to `commit`: a variable frame rate is kept.
    `commit()` renames the file to the target; `abort()` deletes it. Odd frame sizes are padded by one pixel
    (H.264 4:2:0 needs even sides). `time_base` is the unit of the written times (default: 1/fps).
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: Fraction,
                 time_base: Fraction | None = None) -> None:
        from edgeseg.io.files import check_output_file

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
        self.fps = Fraction(fps)
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        limit = MAX_TIME_BASE if codec == "libx264" else 65535  # MPEG-4 part 2 allows no finer unit
        time_base = Fraction(time_base) if time_base else 1 / self.fps
        self.time_base = time_base if time_base.denominator <= limit else Fraction(1, min(90000, limit))
        self._pending = None  # the last frame: encoded when the next one (or commit) says how long it lasts
        self._durations: dict[int, int] = {}  # pts -> duration, for the packets the encoder gives back
        self._last_duration: int | None = None
        try:
            self.container = av.open(str(self.tmp), mode="w", format="mp4")
            # The rate is a hint for the encoder; each frame's own pts, in time_base, says when it is shown.
            self.stream = self.container.add_stream(codec, rate=max(self.fps, Fraction(1, 1000)))
            self.stream.codec_context.time_base = self.time_base
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

    def write(self, pixels: np.ndarray | Image.Image, at: Fraction | float | None = None) -> None:
        """Adds one RGB frame (a uint8 array (H, W, 3) or a PIL RGB image) shown from `at` seconds."""
        av = require_av()
        if isinstance(pixels, Image.Image):
            pixels = np.asarray(pixels)
        if any(self.pad):
            pixels = np.pad(pixels, ((0, self.pad[0]), (0, self.pad[1]), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
        if at is None:
            at = self.frames_written / self.fps
        frame.pts = round(Fraction(at) / self.time_base)
        if self._pending is not None:
            frame.pts = max(frame.pts, self._pending.pts + 1)  # strictly increasing, whatever the source says
            self._encode(self._pending, frame.pts - self._pending.pts)
        self._pending = frame
        self.frames_written += 1

    def _encode(self, frame, duration: int) -> None:
        """Encodes a frame (None: flushes) and muxes the packets, each with its frame's duration (the last
        frame's is the only one the mp4 cannot derive from the next frame's time)."""
        av = require_av()
        if frame is not None:
            self._durations[frame.pts] = self._last_duration = duration
        try:
            for packet in self.stream.encode(frame):
                if packet.pts is not None:
                    packet.duration = self._durations.pop(packet.pts, packet.duration)
                self.container.mux(packet)
        except (av.error.FFmpegError, OSError) as exc:
            raise EdgesegError(f"cannot write video {self.path} ({_first_line(exc)})") from None

    def commit(self, end: Fraction | float | None = None) -> Path:
        """Encodes the last frame, shown until `end` seconds (default: as long as the frame before it, or
        1/fps), flushes the encoder, closes the file and renames it to the target path."""
        av = require_av()
        try:
            if self._pending is not None:
                last, self._pending = self._pending, None
                stop = round(Fraction(end) / self.time_base) if end is not None else None
                if stop is None or stop <= last.pts:
                    nominal = max(1, round(min(1 / self.fps, Fraction(1)) / self.time_base))
                    stop = last.pts + (self._last_duration or nominal)
                self._encode(last, stop - last.pts)
            self._encode(None, 0)
            self.container.close()
            os.chmod(self.tmp, 0o666 & ~_umask())
            os.replace(self.tmp, self.path)
        except EdgesegError:
            self.abort()
            raise
        except (av.error.FFmpegError, OSError) as exc:
            self.abort()
            raise EdgesegError(f"cannot write video {self.path} ({_first_line(exc)})") from None
        from edgeseg.io.files import remove_stale_parts

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
    """Segments a video or camera stream and writes its overlay video to `output`, pipelined. Each overlay
    frame keeps its source frame's presentation time, so the overlay lasts as long as the source (with
    `every`, the kept frames keep theirs).

    On KeyboardInterrupt the frames already segmented are encoded and the file is committed (playable),
    and stats.interrupted is set; further Ctrl-C wait until that is done. Any error removes the partial
    file and raises EdgesegError.
    """
    from edgeseg.io.files import interrupts_held_after_first

    check_frame_options(every, max_frames)
    with interrupts_held_after_first():
        writer = VideoWriter(output, video.width, video.height, video.fps / every, video.time_base)
        try:
            return _segment(video, runtime, writer, class_names, every, max_frames, progress, on_frame)
        except BaseException:
            writer.abort()  # nothing half-written (a no-op once committed)
            raise


class _Encoder:
    """The encoding thread: blends each segmented frame with its labels and writes it; a failure is kept for the
    main thread, and the queue still drained, so the producer never blocks."""

    def __init__(self, writer: VideoWriter, class_names: tuple[str, ...], stats: VideoStats, bar) -> None:
        self.writer, self.class_names, self.stats, self.bar = writer, class_names, stats, bar
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.failure: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from edgeseg.visualize import blend_image

        while True:
            item = self.queue.get()
            if item is _DONE:
                return
            if self.failure:
                continue
            pixels, labels, at = item
            try:
                start = time.perf_counter()
                blended = blend_image(pixels, labels, class_names=self.class_names)
                mid = time.perf_counter()
                self.writer.write(blended, at)
                self.stats.stage_ms["overlay"].append((mid - start) * 1000)
                self.stats.stage_ms["encode"].append((time.perf_counter() - mid) * 1000)
                self.bar.update(1)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self.failure.append(exc)

    def finish(self) -> None:
        """Encodes what is queued, then ends the thread (a second Ctrl-C waits: interrupts_held_after_first)."""
        self.queue.put(_DONE)
        self.thread.join()


def _segment_frame(runtime, pixels: np.ndarray, video: VideoInput, stats: VideoStats) -> np.ndarray:
    """Labels of one frame at its own size, each stage timed into `stats`."""
    from edgeseg.pipeline import fit_for, restore_size

    t0 = time.perf_counter()
    fitted = fit_for(pixels, runtime)
    if all(hasattr(runtime, name) for name in ("set_input", "invoke", "get_labels", "lock")):
        with runtime.lock:  # LiteRT: time each step, holding the runtime against other threads' calls
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
    stats.stage_ms["preprocess"].append((t1 - t0) * 1000)
    stats.stage_ms["invoke"].append((t2 - t1) * 1000)
    stats.stage_ms["postprocess"].append((time.perf_counter() - t2) * 1000)
    return labels


def _segment(video: VideoInput, runtime, writer: VideoWriter, class_names: tuple[str, ...], every: int,
             max_frames: int | None, progress: bool, on_frame: Callable[[int, np.ndarray], None] | None,
             ) -> VideoStats:
    from tqdm import tqdm

    from edgeseg.io.files import interrupts_as_requests

    stats = VideoStats(video.source, writer.path, 0, 0.0, {stage: [] for stage in STAGES})
    counts = np.zeros(256, dtype=np.int64)
    bar = tqdm(total=video.expected_frames(every, max_frames), unit="frame", disable=not progress,
               desc=Path(video.source).name, leave=False)
    encoder = _Encoder(writer, class_names, stats, bar)
    began = time.perf_counter()
    stop = threading.Event()
    frames = video.timed_frames(every=every, max_frames=max_frames, until=stop)
    times: list[Fraction] = []  # of the frames segmented: the one after the last encoded ends it
    try:
        with interrupts_as_requests(stop):  # Ctrl-C ends the loop between frames, never inside a queue call
            for index, at, pixels in frames:
                times.append(at)
                if encoder.failure or stop.is_set():
                    break
                labels = _segment_frame(runtime, pixels, video, stats)
                counts += np.bincount(labels.reshape(-1), minlength=256)[:256]
                if on_frame is not None:
                    on_frame(index, labels)
                encoder.queue.put((pixels, labels, at))
                stats.frames += 1
        stats.interrupted = stop.is_set()
    except KeyboardInterrupt:  # where Ctrl-C could not be made a request (not the main thread)
        stats.interrupted = True
    except BaseException:
        encoder.finish()
        bar.close()
        writer.abort()
        raise
    finally:
        frames.close()  # stops the decoder thread
    encoder.finish()
    bar.close()
    stats.seconds = time.perf_counter() - began
    _commit(video, writer, stats, encoder.failure, times)
    stats.shares = _shares(counts, class_names)
    return stats


def _commit(video: VideoInput, writer: VideoWriter, stats: VideoStats, failure: list[BaseException],
            times: list[Fraction]) -> None:
    """Commits the playable video of the frames encoded, or removes it and raises."""
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
    # The last frame lasts until the next one decoded, or the end of the stream (or of its `every` frames).
    writer.commit(times[stats.frames] if len(times) > stats.frames else video.end_time)
    stats.stage_ms["decode"] = list(video.decode_ms)


def _shares(counts: np.ndarray, class_names: tuple[str, ...]) -> dict[str, float]:
    total = counts.sum()
    names = list(class_names) + [f"class_{i}" for i in range(len(class_names), 256)]
    return {names[i]: round(float(counts[i] / total), 6) for i in np.argsort(-counts, kind="stable") if counts[i] > 0}
