"""Benchmark of ``lfvila cache`` and of reading training samples from its frame store.

Makes a few synthetic long-form mp4s (textured scenes that pan, a moving object, a scene cut
every 10 s; H.264, short GOP), then measures in one run:

(a) cache throughput — decode + resize + Zarr write through ``cache_frames`` — against raw
    decord decoding of the same frame indices at native size (both with ``--workers``
    threads, one video per task). Target: ratio >= 0.8. Also the two decode+resize
    strategies on their own (decord resizing at the cover size, as the cache does, vs native
    decode + torch antialiased resize).
(b) reading training samples (4 consecutive clips x 8 frames) from ``FrameStore`` against
    decoding the same frames from the videos (open, decode, resize: the on-the-fly path).
    Target: >= 10x faster.

Frames are stored raw (``codec=raw``, the lossless reference) and with ``codec=zstd``;
``benchmarks/bench_codecs.py`` compares every codec (jpeg, the default, included) on real videos.

    python benchmarks/bench_cache.py                      # 4 videos x 30 s, 360p, 30 fps
    python benchmarks/bench_cache.py --videos 4 --seconds 60 --workers 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lfvila_cli.data.cache import CacheConfig, cache_frames  # noqa: E402
from lfvila_cli.data.framestore import FrameStore  # noqa: E402
from lfvila_cli.data.video import (  # noqa: E402
    VideoDecoder,
    center_crop,
    cover_size,
    frame_indices,
    resize_frames,
    span_times,
    write_video,
)


def textured_scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A scene twice the frame size (so it can pan): a smooth backdrop with a band of detailed
    texture, so frames compress about as (poorly) as real footage does losslessly."""
    import torch
    import torch.nn.functional as F

    def field(cells_h: int, cells_w: int, amplitude: float) -> torch.Tensor:
        noise = torch.from_numpy(rng.normal(0, amplitude, (1, 3, cells_h, cells_w)).astype(np.float32))
        return F.interpolate(noise, size=(2 * height, 2 * width), mode="bicubic", align_corners=False)

    base = torch.from_numpy(rng.uniform(60, 190, (1, 3, 1, 1)).astype(np.float32))
    img = base + field(4, 6, 50) + field(16, 28, 12)
    detail = field(60, 110, 30)
    rows = torch.arange(2 * height, dtype=torch.float32)[:, None]
    band = ((rows % height) > 0.55 * height).float()  # textured ground, smooth sky
    img = img + detail * band
    return img.clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()


def natural_video(path: Path, seconds: float, fps: int, height: int, width: int, gop: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    num = int(seconds * fps)
    frames = np.empty((num, height, width, 3), np.uint8)
    scene = None
    for i in range(num):
        if i % (10 * fps) == 0:  # a cut every 10 s
            scene = textured_scene(rng, height, width)
            vy, vx = rng.integers(-2, 3), rng.integers(1, 4)
        y, x = (i * vy) % height, (i * vx) % width
        frame = frames[i]
        frame[:] = scene[y : y + height, x : x + width]
        cy = int(height / 2 + height / 3 * np.sin(i / (0.5 * fps)))
        cx = int(width / 2 + width / 3 * np.cos(i / (0.7 * fps)))
        frame[max(cy - 25, 0) : cy + 25, max(cx - 35, 0) : cx + 35] = (230, 70 + (i % 60) * 2, 40)
    write_video(path, frames, fps=fps, gop=gop)
    return num


def make_dataset(root: Path, args) -> tuple[Path, list[dict]]:
    """Videos + a corpus: one long-form sample per video, cut into clips of --clip-seconds."""
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for v in range(args.videos):
        path = root / f"video{v:02d}.mp4"
        if not path.exists():
            natural_video(path, args.seconds, args.fps, args.src_height, args.src_width, args.gop, seed=v)
        clips = int(args.seconds // args.clip_seconds)
        segments = [
            {"start": c * args.clip_seconds, "end": (c + 1) * args.clip_seconds, "text": f"clip {c}"} for c in range(clips)
        ]
        records.append({"id": f"s{v:02d}", "video": path.name, "duration": args.seconds, "split": "train", "segments": segments})
    corpus = root / "samples.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
    return corpus, records


def segment_indices(starts: np.ndarray, records_segments: list[dict], k: int) -> list[np.ndarray]:
    return [frame_indices(starts, span_times(s["start"], s["end"], k)) for s in records_segments]


def over_videos(fn, items, workers: int) -> int:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(fn, items))


def bench_decode(root: Path, records: list[dict], args, mode: str) -> tuple[int, float]:
    """Decode every segment's frame indices, one task per video: the baselines of (a).

    raw: decord at native size, nothing else. decord-resize: decord scales to the cover size
    (swscale), numpy crops. torch-float: native + float32 antialiased resize. decoder: the
    cache's own path (``VideoDecoder``: native + torch uint8 channels-last resize), no store.
    """
    import decord

    def one(record: dict) -> int:
        path = str(root / record["video"])
        if mode == "decoder":
            with VideoDecoder(path, args.height, args.width) as decoder:
                return sum(len(decoder.span(s["start"], s["end"], args.frames)[0]) for s in record["segments"])
        kwargs = {}
        if mode == "decord-resize":
            kwargs = dict(zip(("height", "width"), cover_size(args.src_height, args.src_width, args.height, args.width)))
        reader = decord.VideoReader(path, num_threads=1, **kwargs)
        starts = np.asarray(reader.get_frame_timestamp(np.arange(len(reader))))[:, 0]
        n = 0
        for idx in segment_indices(starts, record["segments"], args.frames):
            frames = reader.get_batch(idx).asnumpy()
            if mode == "decord-resize":
                frames = np.ascontiguousarray(center_crop(frames, args.height, args.width))
            elif mode == "torch-float":
                frames = resize_frames(frames, args.height, args.width, reference=True)
            n += len(frames)
        return n

    start = time.perf_counter()
    frames = over_videos(one, records, args.workers)
    return frames, time.perf_counter() - start


def bench_cache(corpus: Path, store: Path, args, codec: str = "raw", quality: int | None = None, pool: Path | None = None) -> tuple[int, float, dict]:
    """``cache_frames`` into a fresh store with frames codec ``codec`` (``quality``: the image
    codecs', None = the default): frames cached, seconds, the cache's summary. ``pool``: a frame
    pool, emptied first (every video hashed, every row put, none taken: its overhead alone)."""
    shutil.rmtree(store, ignore_errors=True)
    if pool is not None:
        shutil.rmtree(pool, ignore_errors=True)
    extra = {} if quality is None else {"quality": quality}
    cfg = CacheConfig(frames_per_segment=args.frames, height=args.height, width=args.width, workers=args.workers, codec=codec, **extra)
    start = time.perf_counter()
    summary = cache_frames(corpus, cfg, str(store), progress=False, pool_dir=pool)
    return summary["frames"], time.perf_counter() - start, summary


def training_windows(records: list[dict], count: int, clips: int, seed: int = 0) -> list[tuple[dict, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        record = records[rng.integers(len(records))]
        out.append((record, int(rng.integers(len(record["segments"]) - clips + 1))))
    return out


def time_store_reads(store_path: Path, windows: list[tuple[dict, int]], args) -> float:
    """Seconds per training sample read (and decoded) with ``FrameStore.sample``."""
    store = FrameStore(store_path)
    store.sample(windows[0][0]["id"], segments=slice(0, args.clips))  # warm: first zarr call
    start = time.perf_counter()
    for record, first in windows:
        frames, _ = store.sample(record["id"], segments=slice(first, first + args.clips))
        assert frames.shape == (args.clips, args.frames, args.height, args.width, 3)
    return (time.perf_counter() - start) / len(windows)


def time_video_reads(root: Path, windows: list[tuple[dict, int]], args, same_as: Path | None = None) -> float:
    """Seconds per training sample decoded from its video (open, decode, resize: the on-the-fly
    path). ``same_as``: a lossless store whose frames these must equal (checked untimed)."""
    store = FrameStore(same_as) if same_as is not None else None
    seconds = 0.0
    for record, first in windows:
        start = time.perf_counter()
        with VideoDecoder(str(root / record["video"]), args.height, args.width) as decoder:
            clips = [decoder.span(s["start"], s["end"], args.frames)[0] for s in record["segments"][first : first + args.clips]]
        seconds += time.perf_counter() - start
        if store is not None:  # the on-the-fly path must give what the store holds
            cached, _ = store.sample(record["id"], segments=slice(first, first + args.clips))
            np.testing.assert_array_equal(np.stack(clips), cached)
    return seconds / len(windows)


def bench_read(root: Path, store_path: Path, records: list[dict], args) -> dict:
    """(b): training samples from a lossless store against decoding them from the videos."""
    windows = training_windows(records, args.samples, args.clips)
    store_s = time_store_reads(store_path, windows, args)
    decode_windows = windows[: max(2, len(windows) // 8)]  # decoding is slow: fewer samples
    decode_s = time_video_reads(root, decode_windows, args, same_as=store_path)
    return {"store_ms": store_s * 1e3, "decode_ms": decode_s * 1e3, "speedup": decode_s / store_s}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each video")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--gop", type=int, default=12, help="keyframe interval of the synthetic videos")
    parser.add_argument("--src-height", type=int, default=360)
    parser.add_argument("--src-width", type=int, default=640)
    parser.add_argument("--clip-seconds", type=float, default=3.0)
    parser.add_argument("--frames", type=int, default=8, help="frames per clip (K)")
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clips", type=int, default=4, help="clips per training sample")
    parser.add_argument("--samples", type=int, default=64, help="training samples read from the store")
    parser.add_argument("--repeats", type=int, default=3, help="best of N for the throughput runs")
    parser.add_argument("--dir", type=Path, default=None, help="keep videos and store here (reused)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    tmp = None
    if args.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="lfvila-bench-cache-")
        args.dir = Path(tmp.name)
    try:
        t = time.perf_counter()
        videos = args.dir / "videos"
        corpus, records = make_dataset(videos, args)
        print(f"dataset: {args.videos} videos x {args.seconds:g} s, {args.src_width}x{args.src_height} @ {args.fps} fps, "
              f"GOP {args.gop}, clips of {args.clip_seconds:g} s, K={args.frames} -> {args.height}x{args.width} "
              f"({time.perf_counter() - t:.1f} s to make); workers={args.workers}")

        # Interleaved repeats, best of each: the machine's load drifts between runs.
        methods = {
            "raw decord decode, native size (baseline)": lambda: bench_decode(videos, records, args, "raw"),
            "decode+resize: decord swscale at cover + crop": lambda: bench_decode(videos, records, args, "decord-resize"),
            "decode+resize: native + torch float32": lambda: bench_decode(videos, records, args, "torch-float"),
            "decode+resize: native + torch uint8 (cache's)": lambda: bench_decode(videos, records, args, "decoder"),
            "cache_frames, codec=zstd": lambda: bench_cache(corpus, args.dir / "frames-zstd.zarr", args, "zstd")[:2],
            "cache_frames: decode + resize + Zarr write": lambda: bench_cache(corpus, args.dir / "frames.zarr", args, "raw")[:2],
        }
        timings: dict[str, tuple[int, float]] = {}
        for _ in range(args.repeats):
            for name, run in methods.items():
                frames, seconds = run()
                if name not in timings or seconds < timings[name][1]:
                    timings[name] = (frames, seconds)
        read = bench_read(videos, args.dir / "frames.zarr", records, args)
        frames_dir = args.dir / "frames-zstd.zarr" / "frames"
        stored = sum(f.stat().st_size for f in frames_dir.rglob("*") if f.is_file() and f.name != "zarr.json")
        read_zstd = bench_read(videos, args.dir / "frames-zstd.zarr", records, args)
        raw_bytes = timings["cache_frames: decode + resize + Zarr write"][0] * args.height * args.width * 3
    finally:
        if tmp is not None:
            tmp.cleanup()

    rows = list(timings.items())
    raw = timings["raw decord decode, native size (baseline)"]
    cache = timings["cache_frames: decode + resize + Zarr write"]
    raw_fps = raw[0] / raw[1]
    print(f"\n{'(a) throughput':46s} {'frames':>7s} {'seconds':>8s} {'frames/s':>9s} {'vs raw':>7s}")
    for name, (frames, seconds) in rows:
        fps = frames / seconds
        print(f"{name:46s} {frames:7d} {seconds:8.2f} {fps:9.1f} {fps / raw_fps:6.2f}x")
    ratio = (cache[0] / cache[1]) / raw_fps
    at_size = timings["decode+resize: decord swscale at cover + crop"]
    print(f"cache / raw decode = {ratio:.2f} (target >= 0.8); "
          f"cache / decord decoding to the same size = {(cache[0] / cache[1]) / (at_size[0] / at_size[1]):.2f}; "
          f"codec=zstd stores frames at {raw_bytes / stored:.2f}x compression")
    print(f"\n(b) one training sample ({args.clips} clips x {args.frames} frames, {args.height}x{args.width})")
    print(f"FrameStore.sample                              {read['store_ms']:8.2f} ms")
    print(f"decode from the video (open + decode + resize) {read['decode_ms']:8.2f} ms")
    print(f"store / decode speed-up = {read['speedup']:.1f}x (target >= 10x)")
    print(f"(with codec=zstd: {read_zstd['store_ms']:.2f} ms per sample, {read_zstd['speedup']:.1f}x)")

    results = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "throughput_fps": {name: frames / seconds for name, (frames, seconds) in rows},
        "cache_vs_raw": ratio,
        "frames_compression": raw_bytes / stored,
        "read": read,
        "read_zstd": read_zstd,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
