"""The cache stage library: decode → resize/crop → Zarr frame store, failures, resume, ranks."""

import importlib.util
import io
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers_video import FPS, decoded_index, make_broken, make_truncated_faststart, make_video, psnr, sample, write_corpus_file
from lfvila_cli.config import from_dict
from lfvila_cli.data import cache as cache_mod
from lfvila_cli.data import framestore
from lfvila_cli.data.cache import CacheConfig, cache_frames
from lfvila_cli.data.framestore import PENDING, FrameStore
from lfvila_cli.data.video import BoundedVideoDecoder, VideoDecoder, VideoError, decode_span, frame_indices, resize_frames, span_times
from lfvila_cli.errors import ConfigError, DataError

TESTS = Path(__file__).parent
H, W, K = 36, 44, 4  # 64x96 sources cover at 36x54: decord resizes, then a 5-pixel crop each side


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    for i in range(3):
        make_video(root / f"v{i}.mp4", seed=i)
    make_video(root / "clip0.mp4", num_frames=12, seed=5)
    make_video(root / "clip1.mp4", num_frames=16, seed=6)
    make_broken(root, root / "v0.mp4")
    return root


def good_records(videos: Path) -> list[dict]:
    return [
        sample("a", str(videos / "v0.mp4"), [(0, 1), (1, 2), (2, 3)]),
        sample("b", str(videos / "v1.mp4"), [(0, 1.5), (1.5, 3)]),
        sample("c", str(videos / "v0.mp4"), [(0.5, 2.5)], split="val"),  # shares v0 with "a"
        # HD-VILA clip layout: each segment is its own file, frames spread over all of it
        {
            "id": "d",
            "video": str(videos / "v2.mp4"),
            "duration": None,
            "split": "train",
            "segments": [
                {"start": 10.0, "end": 11.5, "text": "one", "video": str(videos / "clip0.mp4")},
                {"start": 11.5, "end": 13.5, "text": "two", "video": str(videos / "clip1.mp4")},
            ],
        },
    ]


def expected_span(video: Path | str, start, end) -> tuple[np.ndarray, np.ndarray]:
    return decode_span(str(video), start, end, K, H, W)


def assert_matches_direct_decode(store: FrameStore, videos: Path, min_psnr: float | None = None) -> None:
    """Parity: every cached segment of ``good_records`` equals a direct decode of its span
    (exactly, or for a lossy codec within ``min_psnr`` dB, showing the same source frames)."""
    spans = {
        "a": [(videos / "v0.mp4", 0, 1), (videos / "v0.mp4", 1, 2), (videos / "v0.mp4", 2, 3)],
        "b": [(videos / "v1.mp4", 0, 1.5), (videos / "v1.mp4", 1.5, 3)],
        "c": [(videos / "v0.mp4", 0.5, 2.5)],
        "d": [(videos / "clip0.mp4", None, None), (videos / "clip1.mp4", None, None)],
    }
    assert store.sample_ids == list(spans)
    for sample_id, expected in spans.items():
        frames, times = store.sample(sample_id)
        assert frames.shape == (len(expected), K, H, W, 3) and times.shape == (len(expected), K)
        for m, (video, start, end) in enumerate(expected):
            ref_frames, ref_times = expected_span(video, start, end)
            if min_psnr is None:
                np.testing.assert_array_equal(frames[m], ref_frames)
            else:
                assert psnr(frames[m], ref_frames) >= min_psnr, (sample_id, m, psnr(frames[m], ref_frames))
                assert decoded_index(frames[m]).tolist() == decoded_index(ref_frames).tolist()
            np.testing.assert_array_equal(times[m], ref_times)


def cfg(**kw) -> CacheConfig:
    """Raw frames unless a test names a codec: most tests compare frames with a direct decode exactly."""
    return CacheConfig(**{"frames_per_segment": K, "height": H, "width": W, "codec": "raw", **kw})


# --- decoding -----------------------------------------------------------------------------------


def test_span_sampling_picks_the_frame_on_screen_at_each_sub_interval_centre():
    starts = np.arange(24) / FPS
    assert np.allclose(span_times(0.0, 1.0, 4), [0.125, 0.375, 0.625, 0.875])
    assert frame_indices(starts, span_times(0.0, 1.0, 4)).tolist() == [1, 3, 5, 7]
    # 8 frames over a 1 s clip at 8 fps: every frame of the clip, none of the next
    assert frame_indices(starts, span_times(1.0, 2.0, 8)).tolist() == list(range(8, 16))
    # spans past the end clamp to the last frame, before the start to the first
    assert frame_indices(starts, np.array([-1.0, 99.0])).tolist() == [0, 23]


def test_decoder_returns_the_right_frames_resized_and_cropped(videos):
    with VideoDecoder(str(videos / "v1.mp4"), H, W) as decoder:
        assert (decoder.info.num_frames, decoder.info.fps) == (24, 8.0)
        assert decoder.info.duration == pytest.approx(3.0)
        frames, times = decoder.span(1.0, 2.0, K)
    assert frames.shape == (K, H, W, 3) and frames.dtype == np.uint8 and frames.flags.c_contiguous
    assert times.dtype == np.float32 and np.allclose(times, [1.125, 1.375, 1.625, 1.875])
    assert decoded_index(frames).tolist() == [9, 11, 13, 15]


def test_fast_resize_matches_the_float_reference_and_crops_the_centre(videos):
    """Fast path (torch uint8 channels-last kernel) against the slow reference (float32, rounded):
    within one grey level; and the crop window is the centre of the cover-size frame."""
    native = np.stack([decode_native(videos / "v2.mp4", i) for i in (0, 7, 13, 23)])  # (4, 64, 96, 3)
    fast = resize_frames(native, H, W)
    reference = resize_frames(native, H, W, reference=True)
    assert fast.shape == (4, H, W, 3) and fast.dtype == np.uint8 and fast.flags.c_contiguous
    assert np.abs(fast.astype(int) - reference.astype(int)).max() <= 1
    # 64x96 covers 36x44 at 36x54: the centre crop starts at column 5
    cover = torch_resize(native, 36, 54)
    errors = [np.abs(reference.astype(int) - cover[:, :, left : left + W].astype(int)).mean() for left in range(2, 9)]
    assert int(np.argmin(errors)) + 2 == 5 and min(errors) == 0, errors
    # taller than the source's aspect: crop rows instead (64x96 covers 60x60 at 60x90)
    tall = resize_frames(native, 60, 60, reference=True)
    np.testing.assert_array_equal(tall, torch_resize(native, 60, 90)[:, :, 15:75])


def decode_native(video: Path, index: int) -> np.ndarray:
    import decord

    return decord.VideoReader(str(video), num_threads=1)[index].asnumpy()


def torch_resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("size", [(32, 48), (80, 100), (64, 96)])
def test_decoder_handles_any_output_size(videos, size):
    # 48 wide is one of the widths at which decord's own resizing fails; 80x100 upscales;
    # 64x96 is the native size (no resize at all)
    with VideoDecoder(str(videos / "v1.mp4"), *size) as decoder:
        frames, times = decoder.span(0.0, 1.0, K)
    assert frames.shape == (K, *size, 3)
    assert decoded_index(frames).tolist() == [1, 3, 5, 7]
    assert np.allclose(times, [0.125, 0.375, 0.625, 0.875])


# --- happy path ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["local", "memory", "file"])
def test_cache_fills_every_row_and_matches_direct_decode(videos, tmp_path, kind):
    corpus = write_corpus_file(tmp_path / "corpus", good_records(videos))
    url = {
        "local": str(tmp_path / "frames.zarr"),
        "memory": f"memory://lfvila-test-{os.getpid()}-{tmp_path.name}/frames.zarr",
        "file": f"file://{tmp_path}/deep/er/frames.zarr",
    }[kind]
    summary = cache_frames(corpus, cfg(), url, progress=False)

    assert summary["rows"] == summary["ok"] == 8 and summary["failed"] == 0 and summary["failures"] == []
    assert summary["written"] == 8 and summary["skipped"] == 0 and summary["frames"] == 8 * K
    assert summary["frames_per_second"] > 0
    store = FrameStore(url)
    assert store.sample_ids == ["a", "b", "c", "d"] and len(store) == 4
    assert store.status_counts() == {"pending": 0, "ok": 8, "failed": 0}
    assert_matches_direct_decode(store, videos)
    frames, times = store.sample("a")
    assert decoded_index(frames).tolist() == [[1, 3, 5, 7], [9, 11, 13, 15], [17, 19, 21, 23]]
    # own-file segments spread over the whole clip (12 frames = 1.5 s)
    assert np.allclose(store.sample("d")[1][0], [0.125, 0.5, 0.875, 1.25])


def test_zstd_codec_stores_the_same_frames_in_fewer_bytes(videos, tmp_path):
    corpus = write_corpus_file(tmp_path / "corpus", good_records(videos))
    plain, packed = str(tmp_path / "plain.zarr"), str(tmp_path / "packed.zarr")
    cache_frames(corpus, cfg(), plain, progress=False)
    cache_frames(corpus, cfg(codec="zstd"), packed, progress=False)
    for sample_id in FrameStore(plain).sample_ids:
        for a, b in zip(FrameStore(plain).sample(sample_id), FrameStore(packed).sample(sample_id)):
            np.testing.assert_array_equal(a, b)

    def size(url):
        return sum(f.stat().st_size for f in (Path(url) / "frames").rglob("*") if f.is_file())

    assert size(packed) < size(plain)
    with pytest.raises(DataError, match="codec"):  # a store is resumed only with its own codec
        cache_frames(corpus, cfg(codec="zstd"), plain, progress=False)


def test_videos_can_be_fsspec_urls(videos, tmp_path):
    import fsspec

    url = f"memory://lfvila-videos-{tmp_path.name}/v1.mp4"
    with fsspec.open(url, "wb") as fh:
        fh.write((videos / "v1.mp4").read_bytes())
    corpus = write_corpus_file(tmp_path, [sample("remote", url, [(0, 1), (1, 2)])])
    summary = cache_frames(corpus, cfg(), str(tmp_path / "frames.zarr"), progress=False)
    assert summary["ok"] == 2
    frames, _ = FrameStore(tmp_path / "frames.zarr").sample("remote")
    np.testing.assert_array_equal(frames[1], expected_span(videos / "v1.mp4", 1, 2)[0])


def test_unreadable_video_urls_fail_their_rows_and_the_run_goes_on(videos, tmp_path):
    """A missing object, an unknown protocol or a filesystem without its package (http:// here,
    or a refused connection where aiohttp is installed) fails that video's rows, with the reason."""
    records = good_records(videos) + [
        sample("gone", f"memory://lfvila-videos-{tmp_path.name}/gone.mp4", [(0, 1), (1, 2)]),
        sample("weird", "weird://host/v.mp4", [(0, 1)]),
        sample("http", "http://127.0.0.1:9/v.mp4", [(0, 1)]),
    ]
    corpus = write_corpus_file(tmp_path, records)
    summary = cache_frames(corpus, cfg(max_failure_rate=1.0), str(tmp_path / "frames.zarr"), progress=False)
    assert (summary["ok"], summary["failed"], summary["pending"]) == (8, 4, 0)
    reasons = {(f["sample"], f["segment"]): f["reason"] for f in summary["failures"]}
    assert reasons[("gone", 0)] == reasons[("gone", 1)] == "cannot read: file not found"
    assert reasons[("weird", 0)] == "cannot read: Protocol not known: weird"
    assert reasons[("http", 0)].startswith("cannot read: ")
    assert_matches_direct_decode_of_good_rows(FrameStore(tmp_path / "frames.zarr"), videos)


def assert_matches_direct_decode_of_good_rows(store: FrameStore, videos: Path) -> None:
    frames, times = store.sample("b")
    for m, (start, end) in enumerate([(0, 1.5), (1.5, 3)]):
        ref_frames, ref_times = expected_span(videos / "v1.mp4", start, end)
        np.testing.assert_array_equal(frames[m], ref_frames)
        np.testing.assert_array_equal(times[m], ref_times)


def test_segments_past_the_end_are_cut_at_the_end_or_fail(videos, tmp_path):
    with VideoDecoder(str(videos / "v1.mp4"), H, W) as decoder:  # 24 frames, 3 s
        # partly past the end: the frames are spread over [2, 3], the part that exists
        frames, times = decoder.span(2.0, 5.0, K)
        assert np.allclose(times, [2.125, 2.375, 2.625, 2.875])
        assert decoded_index(frames).tolist() == [17, 19, 21, 23]
        for start, end in [(3.0, 4.0), (4.5, 6.0)]:
            with pytest.raises(VideoError, match=rf"segment {start:.1f}–{end:.1f} s is outside the video \(3\.0 s\)"):
                decoder.span(start, end, K)
        whole_frames, whole_times = decoder.span(None, None, K)  # the whole file is unaffected
        assert np.allclose(whole_times, [0.375, 1.125, 1.875, 2.625])

    corpus = write_corpus_file(tmp_path, [sample("long", str(videos / "v1.mp4"), [(0, 2), (2, 5), (5, 7)], duration=7.0)])
    summary = cache_frames(corpus, cfg(max_failure_rate=1.0), str(tmp_path / "frames.zarr"), progress=False)
    assert (summary["ok"], summary["failed"]) == (2, 1)
    assert summary["failures"] == [
        {"sample": "long", "segment": 2, "video": str(videos / "v1.mp4"), "reason": "segment 5.0–7.0 s is outside the video (3.0 s)"}
    ]
    store = FrameStore(tmp_path / "frames.zarr")
    frames, times = store.sample("long", slice(1, 2))
    assert np.allclose(times[0], [2.125, 2.375, 2.625, 2.875]) and decoded_index(frames[0]).tolist() == [17, 19, 21, 23]


@pytest.mark.parametrize("decode_timeout_s", [0, 30])  # in this process; in a child process, bounded
def test_each_video_is_opened_once_for_all_its_segments(videos, tmp_path, monkeypatch, decode_timeout_s):
    opened = []
    decoder_class = BoundedVideoDecoder if decode_timeout_s else VideoDecoder
    original = decoder_class.__init__

    def counting(self, source, *args, **kwargs):
        opened.append(source)
        original(self, source, *args, **kwargs)

    monkeypatch.setattr(decoder_class, "__init__", counting)
    corpus = write_corpus_file(tmp_path, good_records(videos))
    cache_frames(corpus, cfg(decode_timeout_s=decode_timeout_s), str(tmp_path / "frames.zarr"), progress=False)
    assert sorted(opened) == sorted(str(videos / f) for f in ["v0.mp4", "v1.mp4", "clip0.mp4", "clip1.mp4"])


def test_splits_filter_samples(videos, tmp_path):
    corpus = write_corpus_file(tmp_path, good_records(videos))
    summary = cache_frames(corpus, cfg(splits=["val"]), str(tmp_path / "frames.zarr"), progress=False)
    assert summary["rows"] == 1 and FrameStore(tmp_path / "frames.zarr").sample_ids == ["c"]
    with pytest.raises(DataError, match="no segments to cache in splits"):
        cache_frames(corpus, cfg(splits=["test"]), str(tmp_path / "other.zarr"), progress=False)


def test_chunk_mode_cuts_each_video_into_equal_chunks(videos, tmp_path):
    records = [
        sample("known", str(videos / "v0.mp4"), [(0.2, 0.4)], duration=3.0),
        sample("unknown", str(videos / "v1.mp4"), [(0.2, 0.4)], duration=None),  # duration from the file
    ]
    corpus = write_corpus_file(tmp_path, records)
    summary = cache_frames(corpus, cfg(segment_mode="chunks", num_chunks=3), str(tmp_path / "frames.zarr"), progress=False)
    assert summary["rows"] == summary["ok"] == 6
    store = FrameStore(tmp_path / "frames.zarr")
    assert store.attrs["segment_mode"] == "chunks" and store.attrs["num_chunks"] == 3
    for sample_id in ("known", "unknown"):
        frames, times = store.sample(sample_id)
        assert frames.shape == (3, K, H, W, 3)
        # chunk i covers [i, i+1) s: centres i+0.125, +0.375, ... -> frames 8i+1, 8i+3, ...
        assert np.allclose(times, np.arange(3)[:, None] + [0.125, 0.375, 0.625, 0.875])
        assert decoded_index(frames).tolist() == [[8 * i + 1, 8 * i + 3, 8 * i + 5, 8 * i + 7] for i in range(3)]


def test_samples_with_the_same_spans_of_a_video_share_rows(videos, tmp_path):
    """Questions about one video (a chunks cache of the whole video) are decoded and stored once;
    each sample still reads its own frames, and failures name the first sample of a row."""
    records = [
        sample("q1", str(videos / "v0.mp4"), [(0.2, 0.4)], duration=3.0),
        sample("other", str(videos / "v1.mp4"), [(0.2, 0.4)], duration=3.0),
        sample("q2", str(videos / "v0.mp4"), [(1.0, 2.0)], duration=3.0),  # same video, same chunks
        sample("m1", str(videos / "missing.mp4"), [(0, 1)], duration=2.0),
        sample("m2", str(videos / "missing.mp4"), [(0, 1)], duration=2.0),
    ]
    corpus = write_corpus_file(tmp_path, records)
    summary = cache_frames(corpus, cfg(segment_mode="chunks", num_chunks=3, max_failure_rate=1.0), str(tmp_path / "frames.zarr"), progress=False)
    assert summary["rows"] == 9 and summary["ok"] == 6 and summary["failed"] == 3  # not 15 rows
    store = FrameStore(tmp_path / "frames.zarr")
    assert store.rows("q1") == store.rows("q2") != store.rows("other")
    np.testing.assert_array_equal(store.sample("q1")[0], store.sample("q2")[0])
    assert decoded_index(store.sample("q2")[0]).tolist() == [[8 * i + 1, 8 * i + 3, 8 * i + 5, 8 * i + 7] for i in range(3)]
    assert [(f["sample"], f["segment"]) for f in store.failures()] == [("m1", 0), ("m1", 1), ("m1", 2)]
    assert [(f["sample"], f["segment"]) for f in summary["failures"]] == [("m1", 0), ("m1", 1), ("m1", 2)]
    # the same spans in clips mode share too; different spans of one video do not
    records = [sample("a", str(videos / "v0.mp4"), [(0, 1), (1, 2)]), sample("b", str(videos / "v0.mp4"), [(0, 1), (1, 2)]),
               sample("c", str(videos / "v0.mp4"), [(0, 1)])]
    summary = cache_frames(write_corpus_file(tmp_path / "clips", records), cfg(), str(tmp_path / "clips.zarr"), progress=False)
    store = FrameStore(tmp_path / "clips.zarr")
    assert summary["rows"] == 3 and store.rows("a") == store.rows("b") and store.rows("c") == range(2, 3)


# --- failures ------------------------------------------------------------------------------------


def broken_records(videos: Path) -> list[dict]:
    return good_records(videos) + [
        sample("missing", str(videos / "missing.mp4"), [(0, 1), (1, 2)]),
        sample("text", str(videos / "text.mp4"), [(0, 1)]),
        sample("truncated", str(videos / "truncated.mp4"), [(0, 1)]),
        sample("garbage", str(videos / "garbage.mp4"), [(0, 1), (1, 2), (2, 3)]),
    ]


def test_broken_videos_are_recorded_as_failed_and_the_run_goes_on(videos, tmp_path):
    corpus = write_corpus_file(tmp_path, broken_records(videos))
    summary = cache_frames(corpus, cfg(max_failure_rate=1.0), str(tmp_path / "frames.zarr"), progress=False)

    assert summary["rows"] == 15 and summary["pending"] == 0
    assert summary["ok"] + summary["failed"] == 15
    by_sample = {}
    for failure in summary["failures"]:
        by_sample.setdefault(failure["sample"], []).append(failure)
    assert [f["reason"] for f in by_sample["missing"]] == ["file not found"] * 2
    assert by_sample["missing"][0]["video"].endswith("missing.mp4") and by_sample["missing"][1]["segment"] == 1
    assert by_sample["text"][0]["reason"].startswith("cannot open: Invalid data")
    assert by_sample["truncated"][0]["reason"].startswith("cannot open: Invalid data")
    assert not {"a", "b", "c", "d"} & set(by_sample)  # the good videos are unaffected
    # garbage in the middle: each row is either decoded or failed with a decode reason
    for failure in by_sample.get("garbage", []):
        assert failure["reason"].startswith("decode failed at frames")
    assert summary["failed"] == 4 + len(by_sample.get("garbage", []))
    assert summary["failure_rate"] == pytest.approx(summary["failed"] / 15, abs=1e-6)

    store = FrameStore(tmp_path / "frames.zarr")
    table = store.failures()
    assert [(f["sample"], f["segment"]) for f in table] == [(f["sample"], f["segment"]) for f in summary["failures"]]
    assert [f["reason"] for f in table] == [f["reason"] for f in summary["failures"]]
    np.testing.assert_array_equal(store.sample("a")[0][0], expected_span(videos / "v0.mp4", 0, 1)[0])


def test_failure_rate_above_threshold_raises_one_line_naming_videos(videos, tmp_path):
    records = good_records(videos) + [
        sample("missing", str(videos / "missing.mp4"), [(0, 1)]),
        sample("text", str(videos / "text.mp4"), [(0, 1)]),
    ]
    corpus = write_corpus_file(tmp_path, records)
    url = str(tmp_path / "frames.zarr")
    with pytest.raises(DataError) as err:
        cache_frames(corpus, cfg(max_failure_rate=0.1), url, progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert "2 of 10 segments failed (20.0% > max_failure_rate 10.0%)" in message
    assert "missing.mp4 (file not found)" in message and "text.mp4 (cannot open" in message
    assert "failures()" in message and "--max-failure-rate" in message
    assert err.value.summary["failed"] == 2
    # the work is kept: a rerun with a looser threshold finishes without decoding again
    summary = cache_frames(corpus, cfg(max_failure_rate=0.25), url, progress=False)
    assert summary["written"] == 0 and summary["skipped"] == 10 and summary["failed"] == 2
    assert {f["reason"] for f in summary["failures"]} == {"file not found", "cannot open: Invalid data found when processing input"}


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("[05:03:38] /ws/src/video/video_reader.cc:486: Error: av_read_frame failed with 1094995529",
         "reading the file failed: invalid data in the stream"),
        ("[05:03:38] /ws/src/video/video_reader.cc:486: Error: av_read_frame failed with -541478725",
         "reading the file failed: unexpected end of file"),
        ("[1] /ws/threaded_decoder.cc:292: [1] /ws/threaded_decoder.cc:218: Check failed: "
         "avcodec_send_packet(dec_ctx_.get(), pkt.get()) >= 0 (-1094995529 vs. 0) Thread worker: Error sending packet.",
         "invalid data in the stream (Thread worker: Error sending packet.)"),
        ("Error: avcodec_receive_frame failed with 22", "decoding failed: invalid argument"),
        ("Error: av_read_frame failed with 12345678", "reading the file failed: unknown FFmpeg error (code -12345678)"),
        ("[/data/v.webm]Unable to handle EOF because the video might have corrupted framesand "
         "`DECORD_REWIND_RETRY_MAX=16`. You may override the limit by `export DECORD_REWIND_RETRY_MAX=32` for example",
         "cannot decode up to the end of the video (corrupt frames near the end?)"),
    ],
)
def test_ffmpeg_error_codes_are_reported_in_words(raw, reason):
    from lfvila_cli.data.video import _short_reason

    assert _short_reason(RuntimeError(raw)) == reason


def test_a_video_ffmpeg_cannot_read_fails_with_words_not_a_code(videos, tmp_path):
    """A truncated mp4 with its index in front opens, then FFmpeg's packet reader fails: decord
    says "av_read_frame failed with 1094995529"; the store says what that means."""
    cut = make_truncated_faststart(tmp_path / "cut.mp4")
    corpus = write_corpus_file(tmp_path, good_records(videos) + [sample("cut", str(cut), [(0, 1), (1, 2)])])
    summary = cache_frames(corpus, cfg(max_failure_rate=1.0), str(tmp_path / "frames.zarr"), progress=False)
    assert (summary["ok"], summary["failed"]) == (8, 2)
    reasons = [f["reason"] for f in FrameStore(tmp_path / "frames.zarr").failures()]
    assert reasons == ["cannot open: reading the file failed: invalid data in the stream"] * 2
    assert not any(re.search(r"\d{5,}", r) for r in reasons)


def test_a_symlink_loop_is_reported_as_such_not_as_a_missing_file(videos, tmp_path):
    loop_a, loop_b, dangling = tmp_path / "loop_a.mp4", tmp_path / "loop_b.mp4", tmp_path / "dangling.mp4"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    dangling.symlink_to(tmp_path / "nowhere.mp4")
    records = good_records(videos) + [
        sample("loop", str(loop_a), [(0, 1)]),
        sample("dangling", str(dangling), [(0, 1)]),
        sample("missing", str(tmp_path / "missing.mp4"), [(0, 1)]),
    ]
    corpus = write_corpus_file(tmp_path / "corpus", records)
    summary = cache_frames(corpus, cfg(max_failure_rate=1.0), str(tmp_path / "frames.zarr"), progress=False)
    reasons = {f["sample"]: f["reason"] for f in summary["failures"]}
    assert reasons == {
        "loop": "symlink loop (too many levels of symbolic links)",
        "dangling": "broken symlink: its target does not exist",
        "missing": "file not found",
    }
    assert summary["ok"] == 8


def test_a_url_whose_filesystem_package_is_missing_names_the_package(monkeypatch):
    """fsspec's HTTP filesystem needs aiohttp; any protocol whose implementation cannot be
    imported fails the video with the package to install (checked here with a stand-in)."""
    registry = importlib.import_module("fsspec.registry")  # ``fsspec.registry`` is the registry's mapping
    monkeypatch.setitem(registry.known_implementations, "lfvilatest", {
        "class": "lfvila_no_such_package.FileSystem", "err": "install lfvila_no_such_package to read lfvilatest:// URLs"
    })
    with pytest.raises(VideoError) as err:
        VideoDecoder("lfvilatest://host/v.mp4", H, W)
    assert str(err.value) == (
        "cannot read: lfvilatest:// URLs need the package 'lfvila_no_such_package', which is not installed "
        "(pip install lfvila_no_such_package)"
    )


@pytest.mark.skipif(importlib.util.find_spec("aiohttp") is not None, reason="aiohttp is installed: http:// works")
def test_http_videos_without_aiohttp_fail_their_rows_with_one_clear_line(videos, tmp_path):
    records = good_records(videos) + [sample("http", "http://127.0.0.1:9/v.mp4", [(0, 1), (1, 2)])]
    corpus = write_corpus_file(tmp_path, records)
    summary = cache_frames(corpus, cfg(max_failure_rate=1.0), str(tmp_path / "frames.zarr"), progress=False)
    assert (summary["ok"], summary["failed"], summary["pending"]) == (8, 2, 0)
    assert {f["reason"] for f in summary["failures"]} == {
        "cannot read: http:// URLs need the package 'aiohttp', which is not installed (pip install aiohttp)"
    }


def test_failures_are_logged_at_a_limited_rate(videos, tmp_path, caplog):
    records = [sample(f"m{i}", str(videos / f"missing{i}.mp4"), [(0, 1)]) for i in range(25)]
    corpus = write_corpus_file(tmp_path, records + good_records(videos))
    with caplog.at_level(logging.WARNING, logger="lfvila_cli.data.cache"):
        summary = cache_frames(corpus, cfg(max_failure_rate=1.0), str(tmp_path / "frames.zarr"), progress=False)
    assert summary["failed"] == 25
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert cache_mod.LOGGED_FAILURES < len(warnings) <= cache_mod.LOGGED_FAILURES + 2
    assert "more video(s) with failed segments (25 in all so far)" in warnings[-1]


# --- resume --------------------------------------------------------------------------------------


def test_rerun_on_a_finished_store_creates_and_decodes_nothing(videos, tmp_path, monkeypatch):
    corpus = write_corpus_file(tmp_path, good_records(videos))
    url = str(tmp_path / "frames.zarr")
    cache_frames(corpus, cfg(), url, progress=False)
    before = FrameStore(url).sample("b")

    def forbidden(*args, **kwargs):
        raise AssertionError("must not be called on a finished store")

    monkeypatch.setattr(framestore, "create_layout", forbidden)
    monkeypatch.setattr(cache_mod, "VideoDecoder", forbidden)
    monkeypatch.setattr(cache_mod, "BoundedVideoDecoder", forbidden)
    summary = cache_frames(corpus, cfg(), url, progress=False)
    assert (summary["written"], summary["skipped"], summary["ok"]) == (0, 8, 8)
    after = FrameStore(url).sample("b")
    np.testing.assert_array_equal(before[0], after[0])


class SimulatedCrash(Exception):
    pass


class CrashOnWrite:
    """Stands in for a Zarr array: the n-th write raises before it lands (the process "dies")."""

    def __init__(self, array, crash_at: int, log: list):
        self.array, self.crash_at, self.log = array, crash_at, log
        self.async_array = self  # the cache writes rows through ``array.async_array.setitem``

    async def setitem(self, key, value):
        self._count(key)
        await self.array.async_array.setitem(key, value)

    def __setitem__(self, key, value):
        self._count(key)
        self.array[key] = value

    def _count(self, key):
        self.log.append(key)
        if len(self.log) == self.crash_at:
            raise SimulatedCrash

    def __getattr__(self, name):
        return getattr(self.array, name)


@pytest.mark.parametrize("crash_in", ["frames", "times"])
def test_interrupted_run_leaves_no_torn_row_and_resumes(videos, tmp_path, monkeypatch, crash_in):
    """The process dies in the middle of a row: that row stays pending (never ok), rows before
    it are complete, and a rerun decodes exactly the rest."""
    corpus = write_corpus_file(tmp_path, good_records(videos))
    url = str(tmp_path / "frames.zarr")
    writes: list = []
    real_arrays = cache_mod.row_arrays

    def arrays_that_crash(group, **kwargs):
        arrays = real_arrays(group, **kwargs)
        setattr(arrays, crash_in, CrashOnWrite(getattr(arrays, crash_in), 4, writes))
        return arrays

    monkeypatch.setattr(cache_mod, "row_arrays", arrays_that_crash)
    with pytest.raises(SimulatedCrash):
        cache_frames(corpus, cfg(workers=1), url, progress=False)
    store = FrameStore(url)
    counts = store.status_counts()  # the task already queued behind the crashed one may finish
    assert counts["ok"] >= 3 and counts["pending"] >= 1 and counts["failed"] == 0, counts
    torn = writes[3]
    assert store.status()[torn] == PENDING
    torn_sample = next(s for s in store.sample_ids if torn in store.rows(s))
    with pytest.raises(DataError, match="still pending"):
        store.sample(torn_sample)

    monkeypatch.setattr(cache_mod, "row_arrays", real_arrays)
    summary = cache_frames(corpus, cfg(), url, progress=False)
    assert (summary["skipped"], summary["written"], summary["ok"]) == (counts["ok"], counts["pending"], 8)
    fresh = tmp_path / "fresh.zarr"
    cache_frames(corpus, cfg(), str(fresh), progress=False)
    resumed = FrameStore(url)
    for sample_id in resumed.sample_ids:
        for a, b in zip(resumed.sample(sample_id), FrameStore(fresh).sample(sample_id)):
            np.testing.assert_array_equal(a, b)


KILLED_RUN = """
import sys, time
from pathlib import Path
from lfvila_cli.data import cache
from lfvila_cli.data.video import BoundedVideoDecoder

span = BoundedVideoDecoder.span_stored  # what the cache calls (decoding and encoding in a child process)
def slow_span(self, *args, **kwargs):
    time.sleep(0.15)  # slow enough for the parent to kill the run in the middle
    return span(self, *args, **kwargs)
BoundedVideoDecoder.span_stored = slow_span
cfg = cache.CacheConfig(frames_per_segment=4, height=36, width=44, workers=1, codec="jpeg")
cache.cache_frames(Path(sys.argv[1]), cfg, sys.argv[2], progress=False)
"""


@pytest.mark.slow
def test_sigkilled_run_resumes_to_a_complete_store(videos, tmp_path):
    corpus = write_corpus_file(tmp_path, good_records(videos))
    url = str(tmp_path / "frames.zarr")
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(corpus), url], env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if FrameStore(url).status_counts()["ok"] >= 3:
                    break
            except DataError:
                pass  # not created yet
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed = FrameStore(url)
    counts = killed.status_counts()
    assert counts["ok"] >= 3 and counts["pending"] >= 1, counts
    # No torn row: every row the killed run marked ok decodes to whole frames.
    ok_rows = np.flatnonzero(killed.status() == framestore.OK)
    samples, segments = killed.row_sample(ok_rows)
    for s, g in zip(samples, segments):
        frames, _ = killed.sample(killed.sample_ids[s], slice(g, g + 1))
        assert frames.shape == (1, K, H, W, 3) and frames.any()

    summary = cache_frames(corpus, cfg(codec="jpeg"), url, progress=False)
    assert summary["ok"] == 8 and summary["skipped"] == counts["ok"] and summary["written"] == 8 - counts["ok"]
    assert_matches_direct_decode(FrameStore(url), videos, min_psnr=35.0)


def test_a_store_made_with_another_config_or_corpus_is_refused(videos, tmp_path):
    corpus = write_corpus_file(tmp_path / "one", good_records(videos))
    url = str(tmp_path / "frames.zarr")
    cache_frames(corpus, cfg(), url, progress=False)
    with pytest.raises(DataError, match=r"frames\.zarr: existing frame store does not match: frames_per_segment is 4 in the store, 2"):
        cache_frames(corpus, cfg(frames_per_segment=2), url, progress=False)
    with pytest.raises(DataError, match="width is 44 in the store, 40"):
        cache_frames(corpus, cfg(width=40), url, progress=False)
    other = write_corpus_file(tmp_path / "two", [dict(r, id=r["id"] + "x") for r in good_records(videos)])
    with pytest.raises(DataError, match="plan_digest is the corpus segments differ"):
        cache_frames(other, cfg(), url, progress=False)
    # policy fields are not part of the layout
    assert cache_frames(corpus, cfg(workers=1, max_failure_rate=0.0), url, progress=False)["skipped"] == 8


def test_retry_failed_decodes_failed_rows_again(videos, tmp_path):
    late = tmp_path / "late.mp4"
    corpus = write_corpus_file(tmp_path / "corpus", good_records(videos) + [sample("late", str(late), [(0, 1), (1, 2)])])
    url = str(tmp_path / "frames.zarr")
    first = cache_frames(corpus, cfg(max_failure_rate=1.0), url, progress=False)
    assert (first["ok"], first["failed"], first["retried"]) == (8, 2, 0)
    make_video(late, seed=1)  # the video turns up

    again = cache_frames(corpus, cfg(max_failure_rate=1.0), url, progress=False)
    assert (again["ok"], again["failed"], again["written"], again["retried"]) == (8, 2, 0, 0)
    assert [f["reason"] for f in again["failures"]] == ["file not found"] * 2

    retried = cache_frames(corpus, cfg(retry_failed=True), url, progress=False)
    assert (retried["ok"], retried["failed"], retried["written"], retried["skipped"], retried["retried"]) == (10, 0, 2, 8, 2)
    store = FrameStore(url)
    assert store.failures() == [] and store.status_counts()["ok"] == 10
    frames, times = store.sample("late")
    np.testing.assert_array_equal(frames[1], expected_span(late, 1, 2)[0])
    np.testing.assert_array_equal(times[1], expected_span(late, 1, 2)[1])
    # retry_failed touches failed rows only: ok rows are not decoded again
    late.write_text("not a video any more\n")
    relapse = cache_frames(corpus, cfg(retry_failed=True, max_failure_rate=1.0), url, progress=False)
    assert (relapse["retried"], relapse["written"], relapse["ok"]) == (0, 0, 10)


def test_retry_failed_clears_the_old_reason(videos, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video\n")
    corpus = write_corpus_file(tmp_path / "corpus", [sample("bad", str(bad), [(0, 1)])])
    url = str(tmp_path / "frames.zarr")
    first = cache_frames(corpus, cfg(max_failure_rate=1.0), url, progress=False)
    assert first["failures"][0]["reason"].startswith("cannot open: Invalid data")
    bad.unlink()
    second = cache_frames(corpus, cfg(max_failure_rate=1.0, retry_failed=True), url, progress=False)
    assert second["retried"] == 1 and [f["reason"] for f in FrameStore(url).failures()] == ["file not found"]


@pytest.mark.filterwarnings("ignore:Object at stray.txt is not recognized")
def test_a_location_that_is_not_a_frame_store_is_left_alone(videos, tmp_path):
    import zarr

    corpus = write_corpus_file(tmp_path / "corpus", good_records(videos))
    data = tmp_path / "data"
    (data / "frames").mkdir(parents=True)
    (data / "frames" / "keep.txt").write_text("precious")
    (data / "notes.txt").write_text("precious")
    with pytest.raises(DataError, match=r"data: not a frame store and not empty \(holds notes\.txt\)"):
        cache_frames(corpus, cfg(), str(data), progress=False)
    assert sorted(p.name for p in data.rglob("*")) == ["frames", "keep.txt", "notes.txt"]  # nothing written

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(DataError, match="is a file"):
        cache_frames(corpus, cfg(), str(a_file), progress=False)
    with pytest.raises(DataError, match="cannot open as a frame store"):
        cache_frames(corpus, cfg(), str(a_file / "frames.zarr"), progress=False)
    assert a_file.read_text() == "x"

    other = zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    other.attrs["tool"] = "someone else"
    with pytest.raises(DataError, match="a Zarr group that is not a frame store"):
        cache_frames(corpus, cfg(), str(tmp_path / "other.zarr"), progress=False)
    assert sorted(p.name for p in (tmp_path / "other.zarr").iterdir()) == ["zarr.json"]
    # an empty directory is fine, and so are stray files in a finished store (resumed as is)
    (tmp_path / "empty").mkdir()
    assert cache_frames(corpus, cfg(), str(tmp_path / "empty"), progress=False)["ok"] == 8
    (tmp_path / "empty" / "stray.txt").write_text("x")
    assert cache_frames(corpus, cfg(), str(tmp_path / "empty"), progress=False)["skipped"] == 8


def test_a_refused_store_is_left_as_it_was(videos, tmp_path):
    corpus = write_corpus_file(tmp_path / "corpus", good_records(videos) + [sample("missing", str(videos / "missing.mp4"), [(0, 1)])])
    url = str(tmp_path / "frames.zarr")
    cache_frames(corpus, cfg(max_failure_rate=1.0), url, progress=False)

    def snapshot():
        return {p.relative_to(url): p.read_bytes() for p in Path(url).rglob("*") if p.is_file()}

    before = snapshot()
    with pytest.raises(DataError, match="does not match"):  # even with retry_failed: checked first
        cache_frames(corpus, cfg(width=40, retry_failed=True), url, progress=False)
    assert snapshot() == before
    assert FrameStore(url).status_counts() == {"pending": 0, "ok": 8, "failed": 1}


# --- ranks ---------------------------------------------------------------------------------------

RANK_RUN = """
import json, sys
from pathlib import Path
from lfvila_cli.data import cache
cfg = cache.CacheConfig(frames_per_segment=4, height=36, width=44, workers=1)
rank = int(sys.argv[3])
summary = cache.cache_frames(Path(sys.argv[1]), cfg, sys.argv[2], rank=rank, world_size=2, progress=False, poll_s=0.05)
print(json.dumps(summary))
"""


@pytest.mark.distributed
def test_two_ranks_fill_disjoint_rows_of_one_store(videos, tmp_path):
    import json

    corpus = write_corpus_file(tmp_path, good_records(videos))
    url = str(tmp_path / "frames.zarr")
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    procs = [
        subprocess.Popen([sys.executable, "-c", RANK_RUN, str(corpus), url, str(rank)], env=env, stdout=subprocess.PIPE, text=True)
        for rank in (1, 0)  # rank 1 first: it must wait for rank 0 to create the arrays
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    rank1, rank0 = (json.loads(out.strip().splitlines()[-1]) for out in outs)
    assert rank0["rows"] == rank0["ok"] == 8 and rank0["pending"] == 0
    # round-robin by video: rank 0 gets v0 (4 rows) and clip0, rank 1 gets v1 (2 rows) and clip1
    assert (rank0["written"], rank1["written"]) == (5, 3) and rank1["rows"] == 3

    single = tmp_path / "single.zarr"  # JPEG (the default) encodes the same frames to the same bytes
    cache_frames(corpus, cfg(codec="jpeg"), str(single), progress=False)
    two, one = FrameStore(url), FrameStore(single)
    for sample_id in one.sample_ids:
        for a, b in zip(two.sample(sample_id), one.sample(sample_id)):
            np.testing.assert_array_equal(a, b)


def test_other_ranks_wait_for_the_layout_with_a_timeout(videos, tmp_path):
    corpus = write_corpus_file(tmp_path, good_records(videos))
    with pytest.raises(DataError, match="rank 1 waited 0s for rank 0 to create the frame store"):
        cache_frames(corpus, cfg(), str(tmp_path / "frames.zarr"), rank=1, world_size=2, layout_timeout_s=0.2, poll_s=0.05)


def test_rank_zero_reports_rows_left_pending_by_a_stopped_rank(videos, tmp_path):
    corpus = write_corpus_file(tmp_path, good_records(videos))
    with pytest.raises(DataError, match="3 segment.* of other ranks still pending .* Run the same command again"):
        cache_frames(corpus, cfg(), str(tmp_path / "frames.zarr"), rank=0, world_size=2, wait_timeout_s=0.3, poll_s=0.05)
    with pytest.raises(DataError, match="rank 2 is not in a world of size 2"):
        cache_frames(corpus, cfg(), str(tmp_path / "frames.zarr"), rank=2, world_size=2)


# --- progress and config ------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    "rank, progress, tty, shown",
    [(0, True, True, True), (0, True, False, False), (0, False, True, False), (1, True, True, False)],
)
def test_progress_bar_only_on_rank_zero_on_a_terminal(videos, tmp_path, monkeypatch, rank, progress, tty, shown):
    stream = FakeTerminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    bar = cache_mod._progress_bar(8, progress and rank == 0)
    bar.update(8)
    bar.set_postfix_str("123 frames/s")
    bar.close()
    assert ("frames/s" in stream.getvalue()) == shown


def test_cache_shows_frames_per_second_on_a_terminal(videos, tmp_path, monkeypatch):
    stream = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", stream)
    corpus = write_corpus_file(tmp_path, good_records(videos))
    cache_frames(corpus, cfg(), str(tmp_path / "frames.zarr"), progress=True)
    assert "8/8" in stream.getvalue() and "frames/s" in stream.getvalue()


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"frames_per_segment": 0}, "frames_per_segment"),
        ({"height": 0}, "height"),
        ({"width": -1}, "width"),
        ({"num_chunks": 0}, "num_chunks"),
        ({"splits": ["training"]}, "splits"),
        ({"splits": ["val", "val"]}, "splits"),
        ({"max_failure_rate": 1.5}, "max_failure_rate"),
        ({"workers": 0}, "workers"),
        ({"decode_timeout_s": -1}, "decode_timeout_s"),
        ({"decode_timeout_s": float("inf")}, "decode_timeout_s"),
        ({"segment_mode": "frames"}, "segment_mode"),
    ],
)
def test_config_validation_names_the_key(changes, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        from_dict(CacheConfig, changes)


def test_config_defaults_and_policy_fields():
    config = from_dict(CacheConfig, {"splits": ["train"], "workers": 4})
    assert (config.frames_per_segment, config.height, config.width, config.segment_mode) == (8, 192, 320, "clips")
    assert set(cache_mod.POLICY_FIELDS) == {"max_failure_rate", "workers", "retry_failed", "decode_timeout_s"}
    assert config.decode_timeout_s == 60.0
    assert config.retry_failed is False
    assert not set(cache_mod.POLICY_FIELDS) & set(config.layout())


def test_progress_shows_as_log_lines_without_a_terminal(videos, tmp_path, monkeypatch, caplog):
    """Off a terminal (a scheduler's log, ranks other than 0) progress is a log line per interval
    on the ``lfvila_cli.progress`` logger, which the CLI shows without --verbose."""
    corpus = write_corpus_file(tmp_path, good_records(videos) + [sample("gone", str(tmp_path / "gone.mp4"), [(0, 1)])])
    monkeypatch.setenv("LFVILA_PROGRESS_S", "0")
    with caplog.at_level(logging.INFO, logger="lfvila_cli.progress"):
        cache_frames(corpus, cfg(max_failure_rate=1.0, workers=1), str(tmp_path / "frames.zarr"), progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "lfvila_cli.progress"]
    assert len(lines) == 5, lines  # one per video task
    assert re.fullmatch(
        r"cache: rank 0/1: 9/9 segments \(100%\), 1 failed, 0 linked, [\d.]+ segments/s, \d+ frames/s, about 0m00s left", lines[-1]
    ), lines[-1]
    assert all(line.startswith("cache: rank 0/1: ") for line in lines)
