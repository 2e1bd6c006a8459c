"""Video files: writing H.264 mp4 with PyAV (example data, tests) and decoding with decord.

Decoding turns a span of a video into ``K`` evenly spaced frames, resized to cover ``H × W``
(aspect kept) and centre-cropped, uint8 RGB, with the timestamp of every frame
(``VideoDecoder``). ``BoundedVideoDecoder`` does the same in a child process that is killed
when a request overruns its time: decord can spin forever in C on some videos. decord and
PyAV are imported inside the functions so the CLI starts fast.
"""

from __future__ import annotations

import atexit
import errno
import io
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import LfvilaError
from .codecs import encode, is_image_codec


def write_video(path: str | Path, frames: np.ndarray, fps: float, crf: int = 23, gop: int = 8) -> None:
    """Write ``frames`` (T, H, W, 3) uint8 RGB as an H.264 mp4 (even H and W required by yuv420p).

    A short keyframe interval (``gop``) keeps random access cheap for the frame sampler, as
    docs/engineering.md §4 recommends for training data.
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 yuv420p needs even sizes, got {h}x{w}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # One encoder thread: multi-threaded x264 output can vary with scheduling, and the
        # bundled example must come out byte-identical from the same seed. PyAV sets the
        # context's own thread count (0 = auto, slice threads), which wins over an option.
        stream.codec_context.thread_count = 1
        stream.options = {"crf": str(crf), "preset": "veryfast", "g": str(gop), "bf": "0", "threads": "1"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# --- decoding -------------------------------------------------------------------------------
#
# Strategy, measured by benchmarks/bench_cache.py (360p H.264, GOP 12, 8 frames per 3 s clip,
# 2 threads on 2 cores; frames/s relative to decord decoding the same frames at native size,
# range over several runs of a noisy shared machine):
#
#   decord native + torch uint8 antialiased bilinear (channels-last) + crop   0.86-1.07  <- used
#   decord resizing in the decoder (swscale bicubic) at the cover size + crop  0.79-1.06
#   decord native + torch float32 antialiased bilinear + crop                  0.44-0.64
#
# torch's uint8 channels-last kernel resizes a 640x360 frame in ~0.3 ms on one core, cheaper
# than swscale's scaling path inside decord, and matches the float32 reference within one grey
# level. decord's own resize has a trap as well: some output widths (8, 12, 16, 24, 48, 72
# among those tried) fail with "DECORDArrayCopyFromTo: The size must exactly match" (a padded
# row stride). At native size, the aspect ratio is read from the frames decord returns (its
# filter graph already turns videos with rotation metadata upright).
#
# Frame-index rule: the K sample times are the centres of K equal sub-intervals of the span,
# and each picks the frame *on screen* at that time (the last frame whose timestamp is <= t).
# For a span of at least K frames this keeps all K frames inside the span; rounding to the
# nearest timestamp can step onto the first frame of the next clip.

# Words for FFmpeg's error codes (``AVERROR``). decord logs some of them negated ("av_read_frame
# failed with 1094995529"), so either sign is looked up; codes not listed here are asked of
# FFmpeg itself (``av_strerror`` through PyAV).
_AVERROR = {-1094995529: "invalid data in the stream", -541478725: "unexpected end of file", -5: "I/O error"}
_FFMPEG_CALLS = {  # what decord was doing when an FFmpeg call failed, in words
    "av_read_frame": "reading the file",
    "avcodec_send_packet": "decoding",
    "avcodec_receive_frame": "decoding",
    "avformat_open_input": "opening the file",
    "avformat_find_stream_info": "reading the stream information",
}
_REASON_CHARS = 200


class VideoError(Exception):
    """One video (or one span of it) could not be opened or decoded; ``str()`` is the reason."""


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    duration: float  # seconds covered by the frames (end of the last frame)


def ffmpeg_error_words(code: int) -> str:
    """An FFmpeg error code of either sign in words: ``1094995529`` -> "invalid data in the stream"."""
    code = -abs(int(code))
    if code in _AVERROR:
        return _AVERROR[code]
    words = None
    try:
        import av.error

        av.error.err_check(code)
    except ImportError:
        pass
    except Exception as exc:  # noqa: BLE001 - err_check raises the FFmpegError (or OSError) subclass of the code
        if type(exc).__name__ != "UndefinedError":
            words = getattr(exc, "strerror", None)
    if not words:
        return f"unknown FFmpeg error (code {code})"
    return words[0].lower() + words[1:] if words[1:2].islower() else words


def _short_reason(exc: BaseException) -> str:
    """One line from a decord/FFmpeg error: drop the ``[time] file.cc:N:`` prefix and stack trace,
    and put FFmpeg's numeric error codes into words."""
    text = str(exc).strip() or type(exc).__name__
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), text)
    line = re.sub(r"^(\[[\d:]+\]\s*\S+:\d+:\s*)+", "", line)
    line = re.sub(r"^\[Errno -?\d+\]\s*", "", line)
    line = re.sub(r": '[^']*'$", "", line)  # PyAV appends the path; the failures table lists it
    line = re.sub(r"^\[[^\]]*[/.][^\]]*\]\s*", "", line)  # decord starts some with "[<path>]"
    if line.startswith("Unable to handle EOF"):  # decord's rewind limit, with advice on an env variable
        line = "cannot decode up to the end of the video (corrupt frames near the end?)"
    check = re.match(r"Check failed: .*\((-?\d+) vs\. 0\)\s*(.*)$", line)
    if check:  # decord's "Check failed: avcodec_send_packet(...) >= 0 (-1094995529 vs. 0) Thread worker: ..."
        line = f"{ffmpeg_error_words(int(check.group(1)))} ({check.group(2).strip() or 'decoder'})"
    call = re.match(r"(?:Error:\s*)?(\w+) failed with (-?\d+)\s*$", line)
    if call:  # decord's "Error: av_read_frame failed with 1094995529"
        doing = _FFMPEG_CALLS.get(call.group(1), call.group(1))
        line = f"{doing} failed: {ffmpeg_error_words(int(call.group(2)))}"
    return line[:_REASON_CHARS]


def _decode_errors() -> tuple[type[BaseException], ...]:
    import decord

    # DECORDError is not a RuntimeError; AssertionError is what decord raises for 0 frames.
    return (decord.DECORDError, RuntimeError, OSError, ValueError, AssertionError, IndexError)


def cover_size(height: int, width: int, out_height: int, out_width: int) -> tuple[int, int]:
    """The smallest size with the source aspect ratio that covers ``out_height × out_width``."""
    scale = max(out_height / height, out_width / width)
    return max(out_height, round(height * scale)), max(out_width, round(width * scale))


def center_crop(frames: np.ndarray, out_height: int, out_width: int) -> np.ndarray:
    """Central ``out_height × out_width`` window of ``(..., H, W, C)`` frames (a view)."""
    h, w = frames.shape[-3], frames.shape[-2]
    top, left = (h - out_height) // 2, (w - out_width) // 2
    return frames[..., top : top + out_height, left : left + out_width, :]


def resize_frames(frames: np.ndarray, out_height: int, out_width: int, reference: bool = False) -> np.ndarray:
    """``(N, h, w, 3)`` uint8 → resized to cover ``out_height × out_width`` (antialiased
    bilinear, aspect kept) → centre crop → ``(N, out_height, out_width, 3)`` uint8.

    The fast path runs torch's uint8 channels-last kernel; ``reference=True`` computes in
    float32 and rounds (the slow reference: the two agree within one grey level).
    """
    import torch
    import torch.nn.functional as F

    n, h, w, _ = frames.shape
    cover_h, cover_w = cover_size(h, w, out_height, out_width)
    if (cover_h, cover_w) != (h, w):
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # (N, 3, h, w), channels-last
        if reference:
            x = x.float()
        x = F.interpolate(x, size=(cover_h, cover_w), mode="bilinear", antialias=True, align_corners=False)
        if reference:
            x = x.round_().clamp_(0, 255).to(torch.uint8)
        frames = x.permute(0, 2, 3, 1).numpy()  # (N, cover_h, cover_w, 3)
    return np.ascontiguousarray(center_crop(frames, out_height, out_width))


def span_times(start: float, end: float, num_frames: int) -> np.ndarray:
    """Centres of ``num_frames`` equal sub-intervals of ``[start, end]`` (seconds, float64)."""
    return start + (np.arange(num_frames) + 0.5) * ((end - start) / num_frames)


def frame_indices(frame_starts: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the frame on screen at each time (clamped to the video) given each frame's start."""
    idx = np.searchsorted(frame_starts, times, side="right") - 1
    return np.clip(idx, 0, len(frame_starts) - 1).astype(np.int64)


def _to_numpy(batch) -> np.ndarray:
    # decord's output type follows a (thread-local) bridge another module may have set to torch.
    return batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)


def _quiet_ffmpeg() -> None:
    """Silence the FFmpeg bundled in decord: a broken video is reported once, with its reason."""
    global _FFMPEG_QUIET
    if not _FFMPEG_QUIET and not os.environ.get("LFVILA_DEBUG"):
        import decord

        decord.logging.set_level(decord.logging.QUIET)
        _FFMPEG_QUIET = True


_FFMPEG_QUIET = False


def _open_source(source: str):
    """What decord and PyAV can open: a local path as is, a URL read into memory with fsspec."""
    if _is_remote(source):
        import fsspec

        # A missing object, an unknown protocol ("Protocol not known") or a filesystem whose
        # package is not installed (ImportError) fails this video, not the whole run.
        try:
            with fsspec.open(source, "rb") as fh:
                return io.BytesIO(fh.read())
        except FileNotFoundError:
            raise VideoError("cannot read: file not found") from None
        except ImportError as exc:
            raise VideoError(f"cannot read: {_missing_package(exc, source)}") from None
        except (OSError, ValueError) as exc:
            raise VideoError(f"cannot read: {_short_reason(exc)}") from None
    path = source[len("file://") :] if source.startswith("file://") else source
    try:
        st = os.stat(path)
    except OSError as exc:
        raise VideoError(_path_problem(exc, path)) from None
    if stat.S_ISDIR(st.st_mode):
        raise VideoError("is a directory, not a video file")
    if not stat.S_ISREG(st.st_mode):
        raise VideoError("not a regular file")  # a FIFO or a device: decord would block or misread
    if not os.access(path, os.R_OK):
        raise VideoError("permission denied")
    return path


def _path_problem(exc: OSError, path: str) -> str:
    """Why ``os.stat`` failed, in words: a symlink loop or a dangling link is not "file not found"."""
    if exc.errno == errno.ELOOP:
        return "symlink loop (too many levels of symbolic links)"
    if exc.errno == errno.ENOENT:
        return "broken symlink: its target does not exist" if os.path.islink(path) else "file not found"
    if exc.errno == errno.ENOTDIR:
        return "file not found (a component of the path is not a directory)"
    if exc.errno == errno.EACCES:
        return "permission denied"
    return (exc.strerror or type(exc).__name__).lower()


def _missing_package(exc: ImportError, source: str) -> str:
    """"http:// URLs need the package 'aiohttp' (pip install aiohttp)" from fsspec's ImportError."""
    protocol = source.split("://", 1)[0]
    cause = exc if isinstance(exc, ModuleNotFoundError) else exc.__cause__ or exc.__context__
    name = getattr(cause, "name", None) if isinstance(cause, ModuleNotFoundError) else None
    if name:
        return f"{protocol}:// URLs need the package '{name}', which is not installed (pip install {name})"
    return f"{protocol}:// URLs need a package that is not installed: {_short_reason(exc)}"


def _probe(data) -> None:
    """Read the container header with PyAV (~1.5 ms): a file that is no video fails here with
    FFmpeg's reason ("Invalid data found when processing input"), where decord would only say
    "Error reading <file>" and log a line of its own to stderr."""
    import av

    try:
        with av.open(data, metadata_errors="ignore") as container:
            if not container.streams.video:
                raise VideoError("cannot open: no video stream")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(f"cannot open: {_short_reason(exc)}") from None
    finally:
        if isinstance(data, io.BytesIO):
            data.seek(0)


class VideoDecoder:
    """One opened video that serves any number of spans: ``(K, H, W, 3)`` uint8 + times.

    Open each video once and ask for all its segments: decord indexes the file on open, and
    its seek state carries over between nearby spans.
    """

    def __init__(self, source: str, height: int, width: int, num_threads: int = 1, *, data=None) -> None:
        """``data``: what ``_open_source(source)`` returned, when the caller has read it already."""
        import decord

        self.source, self.height, self.width = source, height, width
        self._errors = _decode_errors()
        _quiet_ffmpeg()
        data = _open_source(source) if data is None else data
        _probe(data)
        try:
            self._reader = decord.VideoReader(data, num_threads=num_threads)
            num = len(self._reader)
            fps = float(self._reader.get_avg_fps())
            stamps = np.asarray(self._reader.get_frame_timestamp(np.arange(num)), dtype=np.float64)
        except self._errors as exc:
            raise VideoError(f"cannot open: {_short_reason(exc)}") from None
        if not np.isfinite(fps) or fps <= 0:
            raise VideoError(f"invalid frame rate {fps}")
        starts = stamps[:, 0]
        if num > 1 and not (np.all(np.isfinite(starts)) and np.all(np.diff(starts) > 0)):
            starts = np.arange(num) / fps  # unusable timestamps: assume a constant frame rate
        self.frame_starts = starts
        last_end = stamps[-1, 1]
        end = float(last_end) if np.isfinite(last_end) and last_end > starts[-1] else starts[-1] + 1 / fps
        self.info = VideoInfo(num, fps, end)

    def frames_at(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frames on screen at ``times`` (seconds): ``(N, H, W, 3)`` uint8 and their timestamps (float32)."""
        idx = frame_indices(self.frame_starts, np.asarray(times, dtype=np.float64))
        try:
            native = _to_numpy(self._reader.get_batch(idx))
        except self._errors as exc:
            raise VideoError(f"decode failed at frames {idx.min()}-{idx.max()}: {_short_reason(exc)}") from None
        return resize_frames(native, self.height, self.width), self.frame_starts[idx].astype(np.float32)

    def span(self, start: float | None, end: float | None, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """``num_frames`` evenly spaced frames of ``[start, end]``; ``None`` means the whole file.

        A span that runs past the end of the video is cut at its end, so the frames are spread
        over the part that exists (ActivityNet videos are often a few seconds shorter than
        their annotations); the returned times tell where they came from. A span that starts
        at or after the end is a ``VideoError``: it has no frames of its own (clamping would
        give ``num_frames`` copies of the last frame).
        """
        duration = self.info.duration
        start = float(self.frame_starts[0]) if start is None else float(start)
        end = duration if end is None else float(end)
        if start >= duration - 1e-6:
            raise VideoError(f"segment {start:.1f}–{end:.1f} s is outside the video ({duration:.1f} s)")
        end = min(end, duration)
        return self.frames_at(span_times(start, end, num_frames))

    def span_stored(
        self, start: float | None, end: float | None, num_frames: int, codec: str, quality: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``span``, with the frames as the frame store keeps them (``codecs.encode``)."""
        frames, times = self.span(start, end, num_frames)
        return encode(frames, codec, quality), times

    def close(self) -> None:
        self._reader = None

    def __enter__(self) -> "VideoDecoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def chunk_span(duration: float, i: int, n: int) -> tuple[float, float]:
    """Chunk ``i`` of ``n`` equal chunks of ``[0, duration]`` (the cache's ``segment_mode=chunks``)."""
    return i * duration / n, (i + 1) * duration / n


def decode_chunks(source: str, chunks: int, frames_per_chunk: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A whole video as a ``chunks`` cache stores it: ``frames_per_chunk`` evenly spaced frames
    of each of ``chunks`` equal chunks -> ``(chunks, K, H, W, 3)`` uint8 and times ``(chunks, K)``."""
    with VideoDecoder(source, height, width) as decoder:
        parts = [decoder.span(*chunk_span(decoder.info.duration, i, chunks), frames_per_chunk) for i in range(chunks)]
    return np.stack([frames for frames, _ in parts]), np.stack([times for _, times in parts])


def decode_span(
    source: str, start: float | None, end: float | None, num_frames: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Direct decode of one span (opens the video for this call only): the reference for the cache."""
    with VideoDecoder(source, height, width) as decoder:
        return decoder.span(start, end, num_frames)


# --- bounded decoding: each decode thread drives a child process -----------------------------------
#
# decord can spin forever inside its C++ code: on a video whose packets all carry pts = dts = 0
# its accurate seek never reaches frames near the end (no error, no timeout). A thread stuck in
# C cannot be interrupted, so the cache decodes in child processes it can kill: each decode
# thread borrows one ``DecodeProcess`` (started once, reused across videos and across runs in
# the same process, killed and replaced when a request overruns its time) and talks to it
# through ``BoundedVideoDecoder``, which has ``VideoDecoder``'s interface. The child runs
# ``VideoDecoder`` itself, resize included, so frames and times are the same bytes as an
# in-process decode, which stays the reference path (``decode_timeout_s = 0`` in the cache).
#
# Costs, measured on 2 cores: a child starts in ~1.5 s of CPU (torch's import), paid once per
# decode thread per process; a decoded 8x192x320 row crosses the socket in ~2 ms.

STARTUP_TIMEOUT_S = 120.0  # a child imports torch, decord and PyAV before it says it is ready
URL_READ_TIMEOUT_S = 600.0  # reading a remote video into memory is I/O, bounded apart from decoding
IDLE_EXIT_S = 60.0  # a child nobody asks anything for this long exits on its own
_IDLE_REUSE_S = 45.0  # ... so the parent lends out only children idle for less (a safe margin)
_PARENT_POLL_S = 0.5
_PROCESS_LOCAL = ("memory://",)  # fsspec filesystems that live in one process: the parent reads those


class DecodeProcessError(LfvilaError):
    """A decode child process could not be started (not a property of any one video)."""


class _NoReply(Exception):
    """A request to a decode child got no answer: ``timed_out`` (it was killed) or it died."""

    def __init__(self, timed_out: bool, detail: str = "") -> None:
        super().__init__(detail)
        self.timed_out, self.detail = timed_out, detail


def _is_remote(source: str) -> bool:
    return "://" in source and not source.startswith("file://")


class DecodeProcess:
    """A child process that opens one video at a time and decodes spans of it on request.

    Requests and replies are pickled tuples on a socket pair; the frames of a ``("frames",
    shape, times)`` reply follow as one raw byte message. A reply that does not come within its
    time kills the child (``_NoReply(timed_out=True)``); the next request starts a fresh one.
    The child exits when the socket closes, when its parent is gone, or after ``IDLE_EXIT_S``
    without a request and with no video open. One thread uses it at a time
    (``decode_process()`` lends them out).
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._conn = None
        self.opened_by: object | None = None  # the BoundedVideoDecoder whose video the child holds
        self.idle_since = time.monotonic()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> None:
        from multiprocessing.connection import Connection

        parent_end, child_end = socket.socketpair()
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        code = f"from lfvila_cli.data.video import _decode_server; _decode_server({child_end.fileno()}, {os.getpid()})"
        try:
            # A session of its own: Ctrl-C in a terminal reaches the parent, which decides; a
            # child that got it too would die mid-request and fail a row that was fine.
            self._proc = subprocess.Popen(
                [sys.executable, "-c", code],
                pass_fds=(child_end.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            parent_end.close()
            raise DecodeProcessError(f"cannot start a decode process: {exc}; decode_timeout_s=0 decodes in this process") from None
        finally:
            child_end.close()
        self._conn = Connection(parent_end.detach())
        _register(self)
        try:
            self._next(STARTUP_TIMEOUT_S)
        except _NoReply as exc:
            self.kill()
            why = f"not ready after {STARTUP_TIMEOUT_S:.0f} s" if exc.timed_out else exc.detail
            raise DecodeProcessError(
                f"the decode process did not start ({why}; its error is above); decode_timeout_s=0 decodes in this process"
            ) from None

    def _next(self, timeout_s: float) -> tuple:
        try:
            if not self._conn.poll(timeout_s):
                raise _NoReply(timed_out=True)
            reply = self._conn.recv()
            if reply[0] == "frames":  # the bytes are on their way already: no bound of their own
                _, shape, times = reply
                frames = np.frombuffer(self._conn.recv_bytes(), dtype=np.uint8).reshape(shape)
                return ("frames", frames, times)
            if reply[0] == "encoded":  # one encoded image per frame (``codecs.encode``)
                _, images, times = reply
                encoded = np.empty(len(images), dtype=object)
                encoded[:] = images
                return ("frames", encoded, times)
            return reply
        except (EOFError, OSError):
            raise _NoReply(timed_out=False, detail=self._exit_status()) from None

    def _exit_status(self) -> str:
        try:
            code = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "it closed its connection"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def request(self, message: tuple, timeout_s: float) -> tuple:
        """Send ``message`` and return the reply (``"frames"`` replies carry the array).

        Raises ``_NoReply`` when no reply comes within ``timeout_s`` (the child is killed) or
        the child dies; ``DecodeProcessError`` when no child can be started.
        """
        if not self.alive:
            self.kill()
            self._start()
        try:
            self._conn.send(message)
        except OSError:
            detail = self._exit_status()
            self.kill()
            raise _NoReply(timed_out=False, detail=detail) from None
        return self.receive(timeout_s)

    def receive(self, timeout_s: float) -> tuple:
        """The next reply (a request may have several), within ``timeout_s``: as ``request``."""
        try:
            return self._next(timeout_s)
        except _NoReply:
            self.kill()
            raise

    def tell(self, message: tuple) -> None:
        """Send a request that has no reply (``("close",)``); a dead child is left for the next request."""
        if self.alive:
            try:
                self._conn.send(message)
            except OSError:
                pass

    def kill(self) -> None:
        """Stop the child now (SIGKILL: it may be spinning in C) and reap it."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None
        self.opened_by = None


def _decode_server(fd: int, parent_pid: int) -> None:
    """The child's side of ``DecodeProcess``: serve ``open``/``span``/``close`` requests."""
    import traceback
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True, name="lfvila-parent-watch").start()
    import av  # noqa: F401 - loaded before "ready", so a request's time is its own work
    import decord  # noqa: F401
    import imagecodecs  # noqa: F401 - the image codecs encode here
    import torch  # noqa: F401

    _quiet_ffmpeg()
    conn.send(("ready",))
    decoder = None
    # Idle exit only between videos: a thread that holds this child with a video open may
    # pause for long (its rows wait for a slow store) and must find it there.
    while conn.poll(IDLE_EXIT_S if decoder is None else None):
        try:
            request = conn.recv()
        except EOFError:
            break
        kind = request[0]
        if kind == "close":
            decoder = None
            continue
        try:
            if kind == "open":
                decoder = None
                source, height, width, data = request[1:]
                if data is None:
                    data = _open_source(source)
                else:  # read by the parent (a process-local filesystem)
                    data = io.BytesIO(data)
                if isinstance(data, io.BytesIO):
                    conn.send(("read",))  # a URL is in memory: what follows is decoding, bounded apart
                decoder = VideoDecoder(source, height, width, num_threads=1, data=data)
                info = decoder.info
                conn.send(("info", int(info.num_frames), float(info.fps), float(info.duration)))
            elif kind == "span":
                start, end, num_frames, codec, quality = request[1:]
                frames, times = decoder.span(start, end, num_frames)
                if is_image_codec(codec):  # encoded here: 8-10x fewer bytes through the pipe, work off the parent
                    conn.send(("encoded", list(encode(frames, codec, quality)), times))
                else:
                    conn.send(("frames", frames.shape, times))
                    conn.send_bytes(memoryview(np.ascontiguousarray(frames)).cast("B"))
            else:
                raise ValueError(f"unknown request {kind!r}")
        except VideoError as exc:
            conn.send(("error", str(exc)))
        except Exception:  # noqa: BLE001 - a bug, not a bad video: the parent raises it
            conn.send(("bug", traceback.format_exc()))
    conn.close()


def _exit_with_parent(parent_pid: int) -> None:
    """In the child: exit as soon as the parent is gone (killed, crashed), even mid-decode."""
    while True:
        time.sleep(_PARENT_POLL_S)
        if os.getppid() != parent_pid:
            os._exit(1)


class BoundedVideoDecoder:
    """``VideoDecoder``'s interface (``info``, ``span``, ``close``), decoding in ``process``:
    opening the video and each span return or fail within ``timeout_s`` seconds.

    A span that overruns fails with "decode timed out after N s" and its child is killed; the
    next span starts a fresh child and opens the video again, so a stuck span costs only
    itself. Frames and times are those of ``VideoDecoder``, which the child runs. Reading a
    remote video into memory is bounded apart, by ``max(timeout_s, URL_READ_TIMEOUT_S)``.
    """

    def __init__(self, source: str, height: int, width: int, process: DecodeProcess, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.source, self.height, self.width = source, height, width
        self.timeout_s = timeout_s
        self._process = process
        self.info = self._open(reopening=False)

    def _reply(self, call, reopening_or_span: bool) -> tuple:
        try:
            reply = call()
        except _NoReply as exc:
            if exc.timed_out:
                what = "decode" if reopening_or_span else "cannot open:"
                raise VideoError(f"{what} timed out after {self.timeout_s:g} s") from None
            what = "decode failed:" if reopening_or_span else "cannot open:"
            raise VideoError(f"{what} the decode process died ({exc.detail})") from None
        if reply[0] == "error":
            raise VideoError(reply[1])
        if reply[0] == "bug":
            raise RuntimeError(f"decode process, on {self.source}:\n{reply[1]}")
        return reply

    def _open(self, reopening: bool) -> VideoInfo:
        process, source = self._process, self.source
        process.opened_by = None
        data = None
        if source.startswith(_PROCESS_LOCAL):  # the child would not see it: read it here, send the bytes
            data = _open_source(source).getvalue()
        read_s = max(self.timeout_s, URL_READ_TIMEOUT_S) if _is_remote(source) else self.timeout_s
        reply = self._reply(lambda: process.request(("open", source, self.height, self.width, data), read_s), reopening)
        if reply[0] == "read":  # a URL read into memory: from here on, decoding time
            reply = self._reply(lambda: process.receive(self.timeout_s), reopening)
        process.opened_by = self
        return VideoInfo(reply[1], reply[2], reply[3])

    def span(self, start: float | None, end: float | None, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """As ``VideoDecoder.span``; also a ``VideoError`` when the decode overruns its time."""
        return self.span_stored(start, end, num_frames, "raw", None)

    def span_stored(
        self, start: float | None, end: float | None, num_frames: int, codec: str, quality: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """As ``VideoDecoder.span_stored``: the child encodes the frames (in the time bound)."""
        if self._process.opened_by is not self:  # its child was replaced after a timeout
            self._open(reopening=True)
        request = ("span", start, end, num_frames, codec, quality)
        _, frames, times = self._reply(lambda: self._process.request(request, self.timeout_s), True)
        return frames, times

    def close(self) -> None:
        if self._process.opened_by is self:
            self._process.tell(("close",))
            self._process.opened_by = None

    def __enter__(self) -> "BoundedVideoDecoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Idle children, kept for the next task or run of this process (they start in ~1.5 s of CPU).
_POOL_LOCK = threading.Lock()
_IDLE: list[DecodeProcess] = []
_STARTED: "weakref.WeakSet[DecodeProcess]" = weakref.WeakSet()
_POOL_PID = os.getpid()


def _own_pool() -> None:
    """After a fork, the children belong to the parent: forget them (call with the lock held)."""
    global _IDLE, _STARTED, _POOL_PID
    if os.getpid() != _POOL_PID:
        _IDLE, _STARTED, _POOL_PID = [], weakref.WeakSet(), os.getpid()


def _register(process: DecodeProcess) -> None:
    with _POOL_LOCK:
        _own_pool()
        _STARTED.add(process)


@contextmanager
def decode_process():
    """Lend a ``DecodeProcess`` to the calling thread (an idle one when there is one): the
    thread uses it alone and gives it back for the next task; one that failed is stopped."""
    process = None
    with _POOL_LOCK:
        _own_pool()
        while _IDLE and process is None:
            candidate = _IDLE.pop()
            if candidate.alive and time.monotonic() - candidate.idle_since < _IDLE_REUSE_S:
                process = candidate
            else:
                candidate.kill()  # exited (or about to) on its own
    process = process or DecodeProcess()
    try:
        yield process
    except BaseException:
        process.kill()
        raise
    if process.alive:
        process.idle_since = time.monotonic()
        with _POOL_LOCK:
            _own_pool()
            _IDLE.append(process)


def stop_decode_processes() -> None:
    """Stop every decode child of this process (at exit; tests)."""
    with _POOL_LOCK:
        if os.getpid() != _POOL_PID:
            return
        processes = list(_STARTED)
        _IDLE.clear()
    for process in processes:
        process.kill()


atexit.register(stop_decode_processes)
