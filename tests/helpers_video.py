"""Synthetic videos for the cache tests: good ones whose frames say their own index, broken ones.

Every frame's red channel is one flat level, ``index_level(i)``, so a decoded (resized,
cropped) frame tells which source frame it is; green is a horizontal ramp and blue a vertical
ramp with a moving square, so a misplaced crop or a wrong resize shows as well.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lfvila_cli.data.video import write_video

FPS = 8
LEVEL_STEP = 8


def index_level(i: int | np.ndarray) -> np.ndarray:
    return 16 + LEVEL_STEP * np.asarray(i)


def decoded_index(frames: np.ndarray) -> np.ndarray:
    """Source frame index of each decoded frame ``(..., H, W, 3)`` read from its red channel."""
    red = frames[..., frames.shape[-3] // 4 : -frames.shape[-3] // 4, :, 0].astype(np.float64)
    return np.rint((red.mean(axis=(-2, -1)) - 16) / LEVEL_STEP).astype(int)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of uint8 frames ``a`` against ``b`` (dB; inf when equal)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def synthetic_frames(num_frames: int = 24, height: int = 64, width: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    ramp_x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    ramp_y = np.linspace(0, 200, height)[:, None].repeat(width, 1)
    y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
    for i in range(num_frames):
        frames[i, ..., 0] = index_level(i)
        frames[i, ..., 1] = ramp_x
        blue = ramp_y.copy()
        y, x = (y0 + 2 * i) % (height - 8), (x0 + 3 * i) % (width - 8)
        blue[y : y + 8, x : x + 8] = 255
        frames[i, ..., 2] = blue
    return frames


def make_video(path: Path, num_frames: int = 24, height: int = 64, width: int = 96, seed: int = 0, gop: int = 4) -> Path:
    write_video(path, synthetic_frames(num_frames, height, width, seed), fps=FPS, gop=gop)
    return path


def make_broken(directory: Path, good: Path) -> dict[str, Path]:
    """Broken videos next to a good one: missing, a text file, truncated, garbage in the middle.

    What decord/PyAV make of them (checked here): missing -> "file not found"; text and
    truncated (the mp4 index sits at the end of the file) -> "cannot open: Invalid data found
    when processing input"; garbage in the middle opens fine and then fails while decoding
    some spans ("Error sending packet") — which spans depends on decord's read-ahead thread,
    so a test may only require each of its rows to be ok or failed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    text = directory / "text.mp4"
    text.write_text("this is not a video\n")
    truncated = directory / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = bytearray(data)
    mid = len(garbage) // 2
    garbage[mid : mid + 200] = np.random.default_rng(1).integers(0, 256, 200, dtype=np.uint8).tobytes()
    corrupt = directory / "garbage.mp4"
    corrupt.write_bytes(bytes(garbage))
    return {"missing": directory / "missing.mp4", "text": text, "truncated": truncated, "garbage": corrupt}


def _encode_with_pyav(path: Path, frames: np.ndarray, codec: str, container_options: dict | None = None, zero_timestamps: bool = False) -> Path:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.thread_count = 1
        if codec == "libx264":
            stream.options = {"g": "30", "bf": "0", "preset": "veryfast", "threads": "1"}
        packets = [p for f in frames for p in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24"))]
        for packet in packets + list(stream.encode()):
            if zero_timestamps:
                packet.pts = packet.dts = 0
            container.mux(packet)
    return path


def make_zero_timestamp_video(path: Path, num_frames: int = 240, codec: str = "libx264", seed: int = 0) -> Path:
    """A video whose packets all carry pts = dts = 0 (H.264 in .mp4 or VP9 in .webm, 30 s at 8 fps).

    decord opens it and decodes its first seconds, but its accurate seek spins forever (no
    error, no timeout) on frames near the end: checked here, spans from ~21 s on in the mp4,
    the last frame in the webm (120 frames did not hang). The mp4 hangs every time; the webm
    only now and then (it depends on decord's read-ahead thread). It encodes in well under a second.
    """
    import sys

    if codec != "libx264" and "decord" in sys.modules:
        # decord's bundled FFmpeg, once loaded, makes PyAV's libvpx refuse to open
        # ("avcodec_open2 returned 22"): encode in a fresh process.
        import subprocess

        code = (
            "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
            "from helpers_video import make_zero_timestamp_video as make;"
            "make(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))"
        )
        subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(path), str(num_frames), codec, str(seed)], check=True)
        return path
    return _encode_with_pyav(path, synthetic_frames(num_frames, seed=seed), codec, zero_timestamps=True)


def make_truncated_faststart(path: Path, num_frames: int = 48) -> Path:
    """An mp4 with its index at the front (``movflags=faststart``) cut at 60%: it opens, then
    FFmpeg's packet reader fails, which decord reports as "av_read_frame failed with 1094995529"."""
    full = _encode_with_pyav(path.with_suffix(".full.mp4"), synthetic_frames(num_frames), "libx264", {"movflags": "faststart"})
    data = full.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    full.unlink()
    return path


def sample(sample_id: str, video: str, bounds: list[tuple[float, float]], duration: float | None = 3.0, **extra) -> dict:
    segments = [{"start": a, "end": b, "text": f"segment {i}"} for i, (a, b) in enumerate(bounds)]
    return {"id": sample_id, "video": video, "duration": duration, "split": extra.pop("split", "train"), "segments": segments, **extra}


def write_corpus_file(directory: Path, records: list[dict]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
