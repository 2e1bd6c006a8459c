"""Frame codecs of the frame store: round trips, the store with every codec, old stores, damage."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from helpers_video import make_video, psnr, sample, write_corpus_file
from lfvila_cli.data import codecs
from lfvila_cli.data.cache import CacheConfig, cache_frames
from lfvila_cli.data.framestore import FrameStore
from lfvila_cli.errors import DataError

K, H, W = 4, 48, 64
# PSNR floors at quality 90 on these small synthetic frames (harder than real footage, where the
# benchmark measures ~42 dB for jpeg and ~40 dB for jpegxl): measured 40.1 and 37.4 dB.
MIN_PSNR = {"jpeg": 38.0, "jpegxl": 35.0}


def textured_frames(n: int = K, seed: int = 0) -> np.ndarray:
    """Smooth gradients with a band of fine noise: natural-image-like enough for lossy codecs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    out = np.empty((n, H, W, 3), np.uint8)
    for i in range(n):
        base = np.stack([128 + 90 * np.sin(x / 9 + i), 100 + 80 * np.cos(y / 7), 60 + x + y], axis=-1)
        base[H // 3 : H // 2] += rng.normal(0, 6, (H // 2 - H // 3, W, 3))
        out[i] = np.clip(base, 0, 255).astype(np.uint8)
    return out


@pytest.mark.parametrize("codec", codecs.CODECS)
def test_each_codec_round_trips_within_its_tolerance(codec):
    frames = textured_frames()
    stored = codecs.encode(frames, codec, 90)
    back = codecs.decode(stored, codec, frames.shape)
    assert back.dtype == np.uint8 and back.shape == frames.shape
    if codec in ("raw", "zstd"):  # pixels, compressed (or not) by Zarr: bit-exact
        np.testing.assert_array_equal(back, frames)
    else:
        assert stored.shape == (K,) and all(isinstance(b, bytes) for b in stored)
        assert sum(map(len, stored)) < frames.nbytes / 3
        assert psnr(back, frames) >= MIN_PSNR[codec], psnr(back, frames)
    if codecs.is_image_codec(codec):  # deterministic: two ranks (or runs) store the same bytes
        assert list(codecs.encode(frames, codec, 90)) == list(stored)


def test_higher_jpeg_quality_costs_bytes_and_gains_fidelity():
    frames = textured_frames()
    low, high = (codecs.encode(frames, "jpeg", q) for q in (60, 95))
    assert sum(map(len, low)) < sum(map(len, high))
    assert psnr(codecs.decode(low, "jpeg", frames.shape), frames) < psnr(codecs.decode(high, "jpeg", frames.shape), frames)


def test_damaged_or_missing_images_are_one_line_errors():
    frames = textured_frames()
    stored = codecs.encode(frames, "jpeg", 90)
    broken = stored.copy()
    broken[1] = b"\xff\xd8not a jpeg"
    with pytest.raises(DataError, match="a stored jpeg frame does not decode"):
        codecs.decode(broken, "jpeg", frames.shape)
    broken[1] = b""
    with pytest.raises(DataError, match="empty"):
        codecs.decode(broken, "jpeg", frames.shape)
    with pytest.raises(DataError, match="is \\(48, 64, 3\\), the store's frames are \\(40, 64, 3\\)"):
        codecs.decode(stored, "jpeg", (K, 40, W, 3))


# --- the store with each codec -----------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("codec-videos")
    make_video(root / "v0.mp4", seed=0)
    make_video(root / "v1.mp4", seed=1)
    records = [
        sample("a", str(root / "v0.mp4"), [(0, 1), (1, 2), (2, 3)]),
        sample("b", str(root / "v1.mp4"), [(0, 1.5), (1.5, 3)]),
    ]
    return write_corpus_file(root, records)


def cfg(**kw) -> CacheConfig:
    return CacheConfig(**{"frames_per_segment": K, "height": 36, "width": 44, **kw})


def frame_bytes(url: str) -> int:
    return sum(f.stat().st_size for f in (Path(url) / "frames").rglob("*") if f.is_file())


def test_the_store_reads_every_codec_back_and_jpeg_is_the_default(corpus, tmp_path):
    assert CacheConfig().codec == "jpeg" and CacheConfig().quality == codecs.DEFAULT_QUALITY == 94
    stores = {}
    for codec in codecs.CODECS:
        url = str(tmp_path / f"{codec}.zarr")
        cache_frames(corpus, cfg(codec=codec), url, progress=False)
        stores[codec] = FrameStore(url)
    raw = stores["raw"]
    for codec, store in stores.items():
        attrs = json.loads((Path(store.url) / "zarr.json").read_text())["attributes"]
        assert attrs["codec"] == codec and attrs["frames_codec"] == codecs.codec_tag(codec, 94)
        assert attrs["quality"] == (94 if codecs.is_image_codec(codec) else None)
        for sample_id in raw.sample_ids:
            frames, times = store.sample(sample_id)
            ref_frames, ref_times = raw.sample(sample_id)
            np.testing.assert_array_equal(times, ref_times)
            if codec in ("raw", "zstd"):
                np.testing.assert_array_equal(frames, ref_frames)
            else:
                assert frames.shape == ref_frames.shape and psnr(frames, ref_frames) >= MIN_PSNR[codec]
    assert frame_bytes(stores["jpeg"].url) < frame_bytes(stores["raw"].url) / 3
    # the frames of an image codec: one encoded image per frame, (rows, K) variable-length bytes
    meta = json.loads((Path(stores["jpeg"].url) / "frames" / "zarr.json").read_text())
    assert meta["data_type"] == "variable_length_bytes" and meta["shape"] == [5, K]
    assert [c["name"] for c in meta["codecs"]] == ["vlen-bytes"]


def read_chunk_without_zarr(path: Path) -> list[bytes]:
    """The vlen-bytes chunk layout docs/data-formats.md §13 documents: a little-endian uint32
    count, then each element as a uint32 length and its bytes."""
    data = path.read_bytes()
    count = int.from_bytes(data[:4], "little")
    out, pos = [], 4
    for _ in range(count):
        n = int.from_bytes(data[pos : pos + 4], "little")
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    assert pos == len(data)
    return out


def test_another_tool_reads_a_jpeg_row_as_documented(corpus, tmp_path):
    import imagecodecs

    url = str(tmp_path / "frames.zarr")
    cache_frames(corpus, cfg(), url, progress=False)
    images = read_chunk_without_zarr(Path(url) / "frames" / "c" / "1" / "0")
    assert len(images) == K and all(img[:2] == b"\xff\xd8" for img in images)  # JPEG files
    decoded = np.stack([imagecodecs.jpeg8_decode(img) for img in images])
    np.testing.assert_array_equal(decoded, FrameStore(url).sample("a", slice(1, 2))[0][0])


def test_a_damaged_chunk_is_an_error_naming_the_store_and_sample(corpus, tmp_path):
    url = str(tmp_path / "frames.zarr")
    cache_frames(corpus, cfg(), url, progress=False)
    chunk = Path(url) / "frames" / "c" / "3" / "0"  # sample b, segment 0
    images = read_chunk_without_zarr(chunk)
    images[2] = images[2][:40]  # a truncated image
    payload = len(images).to_bytes(4, "little") + b"".join(len(i).to_bytes(4, "little") + i for i in images)
    chunk.write_bytes(payload)
    with pytest.raises(DataError, match=r"frames\.zarr: sample 'b' rows 3-4: a stored jpeg frame does not decode"):
        FrameStore(url).sample("b")
    FrameStore(url).sample("a")  # the other rows still read


def test_stores_of_layout_version_1_still_read_and_are_not_resumed(corpus, tmp_path):
    """A store written before codecs (layout 1: raw or zstd pixels, ``compression``) reads as it
    did; the cache resumes only stores of the current layout and says how to rebuild."""
    url = str(tmp_path / "old.zarr")
    cache_frames(corpus, cfg(codec="zstd"), url, progress=False)
    expected = {i: FrameStore(url).sample(i) for i in ("a", "b")}
    meta_path = Path(url) / "zarr.json"
    meta = json.loads(meta_path.read_text())
    attrs = meta["attributes"]
    old = {}
    for name, value in attrs.items():  # version 1 named the codec ``compression`` (none | zstd)
        if name == "codec":
            old["compression"] = "zstd"
        elif name != "quality":
            old[name] = value
    old["layout_version"] = 1
    meta["attributes"] = old
    meta_path.write_text(json.dumps(meta))
    store = FrameStore(url)
    assert store.codec == "zstd"
    for sample_id, (frames, times) in expected.items():
        got = store.sample(sample_id)
        np.testing.assert_array_equal(got[0], frames)
        np.testing.assert_array_equal(got[1], times)
    with pytest.raises(DataError, match="layout_version is 1 in the store, 2 in this run.*--force"):
        cache_frames(corpus, cfg(codec="zstd"), url, progress=False)
    assert os.path.exists(meta_path)
